//! What every client connection of one configuration shares: the settings, the capture
//! queue (when capture is on), the counters, the samplers, the TLS key log. A reload
//! makes a new one; connections already open keep theirs.

use std::sync::Arc;

use crate::capture::Recorder;
use crate::config::Settings;
use crate::proxy::policy::Samplers;
use crate::proxy::tls::KeyLogFile;
use crate::proxy::traffic::Traffic;

/// What every connection shares.
pub struct ProxyContext {
    /// The settings connections run with.
    pub settings: Arc<Settings>,
    /// Where taps send events; `None` when capture is off.
    pub capture: Option<Recorder>,
    /// The proxy's counters and its list of live sessions.
    pub traffic: Arc<Traffic>,
    /// Which sessions of each route are sampled.
    pub(crate) samplers: Samplers,
    /// Where every TLS connection's keys are appended (`capture.tls_keylog`).
    pub(crate) keylog: Option<Arc<KeyLogFile>>,
}

impl ProxyContext {
    /// The context of connections run with `settings`.
    pub fn new(
        settings: Arc<Settings>,
        capture: Option<Recorder>,
        traffic: Arc<Traffic>,
        keylog: Option<Arc<KeyLogFile>>,
    ) -> ProxyContext {
        let samplers = Samplers::new(settings.routes.len(), settings.capture.sample_seed);
        ProxyContext { settings, capture, traffic, samplers, keylog }
    }
}
