//! A client connection's capture, as the proxy drives it: the taps under each leg's
//! socket (made with the socket, probing until a route says what to record), where each
//! exchange would start, and the routes' decisions (record this session, record this
//! whole connection, or nothing on this connection ever), told to the taps through
//! capture's small API ([`Tap::mark`], [`Tap::begin`], [`Tap::forgo`],
//! [`Tap::set_close_reason`]), with a [`Heading`] that says what each leg's capture is.

use std::net::SocketAddr;
use std::sync::Arc;

use wstap_wire::{Leg, PerLeg};

use crate::capture::{ConnId, Ending, Heading, Layer, Mark, Opening, Scope, Start, Tap, TlsHeld, TlsLeg};
use crate::config::route::Route;
use crate::config::TlsCapture;
use crate::proxy::context::ProxyContext;
use crate::proxy::tls::{KeepKeys, Keys};
use crate::proxy::traffic::SessionCapture;

/// Bytes of recent traffic an upstream connection's tap keeps while it waits to learn
/// whether a session starts (the Upgrade request and the `101` with any early frames).
const UPSTREAM_PROBE: usize = 256 * 1024;

/// A tap for a new connection leg, if any route records that leg: it probes (keeps what
/// may start a session) until a request's route says what to record. Under TLS
/// (`Layer::Tls`) it keeps the connection's first bytes instead.
pub(crate) fn tap(
    ctx: &ProxyContext,
    leg: Leg,
    conn: ConnId,
    local: SocketAddr,
    remote: SocketAddr,
    layer: Layer,
) -> Option<Arc<Tap>> {
    let rec = ctx.capture.as_ref()?;
    if !ctx.settings.capture.legs.has(leg) {
        return None;
    }
    let probe = match leg {
        Leg::Client => ctx.settings.limits.max_header_size + 64 * 1024,
        Leg::Upstream => UPSTREAM_PROBE,
    };
    let opening = Opening { conn, ..Opening::new(leg, local, remote, String::new()) };
    Some(Tap::probing(rec.clone(), opening, probe, layer))
}

/// For a new TLS connection on `leg`: a tap under its TLS, if its records are captured
/// (`capture.tls = "encrypted"` and some route records the leg), and what collects its
/// keys, if they are kept or logged.
pub(crate) fn tls_tap(
    ctx: &ProxyContext,
    leg: Leg,
    conn: ConnId,
    local: SocketAddr,
    remote: SocketAddr,
) -> (Option<Arc<Tap>>, Option<Arc<Keys>>) {
    let encrypted = ctx.settings.capture.tls == TlsCapture::Encrypted;
    let tap = encrypted.then(|| tap(ctx, leg, conn, local, remote, Layer::Tls)).flatten();
    let keep = if tap.is_some() { KeepKeys::ForCapture } else { KeepKeys::No };
    let keys = Keys::new(keep, ctx.keylog.clone());
    (tap, keys)
}

/// A leg's tap, and the keys of its TLS when the tap is under it.
#[derive(Default)]
pub(crate) struct LegTap {
    pub(crate) tap: Option<Arc<Tap>>,
    /// The keys the capture keeps (only with a tap under the TLS).
    pub(crate) keys: Option<Arc<Keys>>,
    /// The TLS the leg runs over, as the session's heading describes it.
    pub(crate) tls: Option<TlsLeg>,
}

impl LegTap {
    /// A leg whose TLS handshake is done: `under` (from [`tls_tap`]) records its records
    /// with its keys; without it, the leg is captured decrypted, by a tap over the TLS
    /// ([`LegTap::tap_over`]). `agreed`: what the handshake agreed, described.
    pub(crate) fn over_tls(under: Option<Arc<Tap>>, keys: Option<Arc<Keys>>, agreed: String) -> LegTap {
        let held = if under.is_some() { TlsHeld::Records } else { TlsHeld::Decrypted };
        let keys = keys.filter(|_| under.is_some());
        LegTap { tap: under, keys, tls: Some(TlsLeg { agreed, held }) }
    }

    /// The tap for the stream hyper reads (plain, or over the TLS): `make`'s, and the leg's
    /// from now on, unless a tap under the TLS records the leg already.
    pub(crate) fn tap_over(&mut self, make: impl FnOnce() -> Option<Arc<Tap>>) -> Option<Arc<Tap>> {
        if self.tap.is_some() {
            return None;
        }
        self.tap = make();
        self.tap.clone()
    }

    fn is_recording(&self) -> bool {
        self.tap.as_ref().is_some_and(|t| t.is_recording())
    }
}

/// One exchange on a connection, where its capture would start.
pub(crate) struct Exchange<'a> {
    /// The request's first line up to `HTTP/1.` (`GET /chat HTTP/1.`).
    pub(crate) request_line: &'a str,
    /// The upstream leg it goes over.
    pub(crate) upstream: &'a LegTap,
    /// Where it began on each leg that has a tap.
    pub(crate) marks: PerLeg<Option<Mark>>,
    /// Its route, and the route's place in the config.
    pub(crate) route: &'a Route,
    pub(crate) index: usize,
}

/// What the client connection's capture knows of itself.
pub(crate) struct Recording<'a> {
    pub(crate) ctx: &'a ProxyContext,
    pub(crate) conn: ConnId,
    pub(crate) client: SocketAddr,
    pub(crate) client_leg: &'a LegTap,
}

impl Recording<'_> {
    /// A session starts at `ex` (its upstream answered `101`), and the route records it
    /// (sampled), or its connection is recorded whole: each leg the route records begins
    /// where the Upgrade exchange began.
    pub(crate) fn session(&self, ex: &Exchange<'_>) -> SessionCapture {
        let policy = ex.route.policy;
        // A connection recorded from its first byte (`all`) records its sessions anyway.
        let recording = self.client_leg.is_recording() || ex.upstream.is_recording();
        let sampled = || policy.records() && self.ctx.samplers.pick(ex.index, policy.sample);
        if !(recording || sampled()) {
            self.forgo(ex);
            return SessionCapture::NotCaptured;
        }
        let heading = Heading::Session {
            conn: self.conn,
            request: ex.request_line.trim_end_matches(" HTTP/1.").to_owned(),
            client: self.client,
            route: ex.route.path_prefix.clone(),
            upstream: ex.route.upstream.to_string(),
            tls: PerLeg::new(self.client_leg.tls.clone(), ex.upstream.tls.clone()),
        };
        if self.begin(ex, Scope::Session, heading) {
            return SessionCapture::Captured;
        }
        self.forgo(ex);
        SessionCapture::NotCaptured
    }

    /// The route records whole connections (`all`): each leg it records is captured from
    /// this request on (the connection's first byte, for its first request), unless it
    /// already is or the connection is not sampled.
    pub(crate) fn connection(&self, ex: &Exchange<'_>) {
        let client_probing = self.client_leg.tap.as_ref().is_some_and(|t| !t.is_recording());
        if client_probing && self.ctx.samplers.pick(ex.index, ex.route.policy.sample) {
            self.begin(ex, Scope::Connection, Heading::Connection { conn: self.conn, client: self.client });
        }
    }

    /// Begins (or, on a leg already recorded, marks) the capture of the legs the route
    /// records. Returns whether any leg is recorded.
    fn begin(&self, ex: &Exchange<'_>, scope: Scope, heading: Heading) -> bool {
        let policy = ex.route.policy;
        // Per-session file names: client address and route.
        let label = format!("{}-{}_{}", self.client.ip(), self.client.port(), ex.route.path_prefix);
        let start = |heading, keys: &Option<Arc<Keys>>| Start {
            heading,
            label: label.clone(),
            request_line: ex.request_line.into(),
            snap: policy.snap,
            tls_secrets: keys.as_deref().and_then(Keys::kept),
        };
        let legs = PerLeg::new(self.client_leg, ex.upstream);
        let mut recorded = false;
        for leg in Leg::BOTH.into_iter().filter(|&l| policy.legs.has(l)) {
            let (Some(tap), Some(mark)) = (&legs[leg].tap, ex.marks[leg]) else { continue };
            // A connection recorded whole: its upstream leg is a connection of its own.
            let heading = match (&heading, leg) {
                (Heading::Connection { conn, .. }, Leg::Upstream) => {
                    Heading::UpstreamConnection { conn: *conn, upstream: ex.route.upstream.to_string() }
                }
                _ => heading.clone(),
            };
            recorded |= tap.begin(scope, mark, start(heading.to_string(), &legs[leg].keys));
        }
        recorded
    }

    /// The connection is this session's until it ends, and the session is not recorded:
    /// nothing more to probe for.
    fn forgo(&self, ex: &Exchange<'_>) {
        for tap in [&self.client_leg.tap, &ex.upstream.tap].into_iter().flatten() {
            tap.forgo();
        }
    }
}

/// Says why a session's legs close, before their sockets do: it goes on each leg's last
/// captured packet.
pub(crate) fn closing(taps: PerLeg<Option<&Arc<Tap>>>, reason: &Ending) {
    for (_, tap) in taps.iter() {
        let Some(tap) = tap else { continue };
        tap.set_close_reason(reason.clone());
    }
}
