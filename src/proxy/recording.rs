//! A client connection's capture, as the proxy drives it: the taps under each leg's
//! socket (made with the socket, probing until a route says what to record), where each
//! exchange would start, and each request's route's say, decided per request and held
//! per connection ([`Verdict`]: record the connection from this request on, a session if
//! it switches, or nothing of this request and what follows), told to the taps through
//! capture's small API ([`Tap::mark`], [`Tap::decide`], [`Tap::begin`], [`Tap::forgo`],
//! [`Tap::set_close_reason`]), with a [`Heading`] that says what each leg's capture is.

use std::net::SocketAddr;
use std::sync::Arc;

use wstap_wire::{Leg, PerLeg};

use crate::capture::{ConnId, Decision, Ending, Heading, Layer, Mark, Opening, Scope, Start, Tap, TlsHeld, TlsLeg};
use crate::config::route::Route;
use crate::config::CaptureMode;
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
    /// What really carried the leg, when it is written as something else (an HTTP/2
    /// stream written as an HTTP/1.1 connection), as the heading says it.
    pub(crate) carried: Option<String>,
}

impl LegTap {
    /// A leg whose TLS handshake is done: `under` (from [`tls_tap`]) records its records
    /// with its keys; without it, the leg is captured decrypted, by a tap over the TLS
    /// ([`LegTap::tap_over`]). `agreed`: what the handshake agreed, described.
    pub(crate) fn over_tls(under: Option<Arc<Tap>>, keys: Option<Arc<Keys>>, agreed: String) -> LegTap {
        let held = if under.is_some() { TlsHeld::Records } else { TlsHeld::Decrypted };
        let keys = keys.filter(|_| under.is_some());
        LegTap { tap: under, keys, tls: Some(TlsLeg { agreed, held }), carried: None }
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

    /// Whether the leg is being written.
    pub(crate) fn is_recording(&self) -> bool {
        self.tap.as_ref().is_some_and(|t| t.is_recording())
    }
}

/// What one request's route says of its connection's capture, decided when it is routed
/// (before a byte of it goes upstream) and told to each leg's tap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// `capture = "all"`, and the connection is (or, picked now, starts being) recorded
    /// whole from this request on.
    Connection,
    /// `capture = "websocket"` (or `all` not picked): a session if it switches, recorded
    /// if `picked` (drawn now, on a connection recorded whole), or drawn at its answer.
    Session {
        /// The sampler's draw, if already made.
        picked: Option<bool>,
    },
    /// Nothing of it, or of what follows it, is recorded (`capture = "off"`, or a request
    /// on a connection recorded whole that its route records no part of).
    Off,
}

/// One exchange on a connection, where its capture would start.
pub(crate) struct Exchange<'a> {
    /// The request's first line up to `HTTP/1.` (`GET /chat HTTP/1.`).
    pub(crate) request_line: &'a str,
    /// Its method, as hyper parsed it.
    pub(crate) method: &'a str,
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
    /// What `ex`'s route says of the connection's capture (`upgrade`: the request asks
    /// to switch to WebSocket). Sampled here when it starts a connection's capture, or
    /// when it may start a session on a connection already recorded whole.
    /// `whole`: a leg of the connection is recorded whole so far.
    pub(crate) fn verdict(&self, ex: &Exchange<'_>, upgrade: bool, whole: bool) -> Verdict {
        let policy = ex.route.policy;
        let pick = || self.ctx.samplers.pick(ex.index, policy.sample);
        match policy.mode {
            CaptureMode::Off => Verdict::Off,
            CaptureMode::All if whole || pick() => Verdict::Connection,
            _ if !whole => Verdict::Session { picked: None },
            _ if upgrade => Verdict::Session { picked: Some(policy.records() && pick()) },
            // A plain request of a route recording sessions: not recorded (but a leg of
            // TLS records, which cannot be cut, goes on whole).
            _ => Verdict::Session { picked: Some(false) },
        }
    }

    /// A request no route took: the client leg goes on as it is.
    pub(crate) fn unrouted(&self, method: &str) {
        if let Some(tap) = &self.client_leg.tap {
            tap.decide(method, tap.mark(), Decision::AsIs);
        }
    }

    /// Tells `leg`'s tap (`legs`: the client's or the upstream's) what `verdict` says of
    /// the request `ex`.
    pub(crate) fn decide(&self, leg: Leg, legs: &LegTap, ex: &Exchange<'_>, verdict: Verdict) {
        let (Some(tap), Some(mark)) = (&legs.tap, ex.marks[leg]) else { return };
        let recorded_leg = ex.route.policy.legs.has(leg);
        // TLS records cannot be cut between requests: a connection recorded whole as
        // records goes on whole (a route that records nothing is refused with it).
        let records = legs.tls.as_ref().is_some_and(|t| t.held == TlsHeld::Records);
        let decision = match verdict {
            Verdict::Off => Decision::Skip,
            _ if !recorded_leg => Decision::Skip,
            Verdict::Connection => {
                let heading = match leg {
                    Leg::Client => {
                        Heading::Connection { conn: self.conn, client: self.client, carried: legs.carried.clone() }
                    }
                    Leg::Upstream => {
                        Heading::UpstreamConnection { conn: self.conn, upstream: ex.route.upstream.to_string() }
                    }
                };
                Decision::Record(self.start(ex, heading.to_string(), &legs.keys))
            }
            Verdict::Session { .. } if records || !tap.is_recording() => Decision::AsIs,
            Verdict::Session { picked: Some(true) } => Decision::AsIs,
            Verdict::Session { .. } => Decision::Skip,
        };
        tap.decide(ex.method, mark, decision);
    }

    /// A session starts at `ex` (its upstream answered `101`): recorded if its route's
    /// verdict said so (sampled now, if it was not), or if its connection is recorded
    /// whole; each leg the route records begins where the Upgrade exchange began.
    pub(crate) fn session(&self, ex: &Exchange<'_>, upstream: &LegTap, verdict: Verdict) -> SessionCapture {
        let policy = ex.route.policy;
        let recording = self.client_leg.is_recording() || upstream.is_recording();
        let record = match verdict {
            Verdict::Off => false,
            Verdict::Session { picked: Some(picked) } => picked || recording,
            Verdict::Connection | Verdict::Session { picked: None } => {
                recording || (policy.records() && self.ctx.samplers.pick(ex.index, policy.sample))
            }
        };
        if !record {
            self.forgo(upstream);
            return SessionCapture::NotCaptured;
        }
        let heading = Heading::Session {
            conn: self.conn,
            request: ex.request_line.trim_end_matches(" HTTP/1.").to_owned(),
            client: self.client,
            route: ex.route.path_prefix.clone(),
            upstream: ex.route.upstream.to_string(),
            tls: PerLeg::new(self.client_leg.tls.clone(), upstream.tls.clone()),
            carried: self.client_leg.carried.clone(),
        };
        if self.begin(ex, upstream, heading) {
            return SessionCapture::Captured;
        }
        self.forgo(upstream);
        SessionCapture::NotCaptured
    }

    /// How a leg's capture of `ex` starts.
    fn start(&self, ex: &Exchange<'_>, heading: String, keys: &Option<Arc<Keys>>) -> Start {
        Start {
            heading,
            // Per-session file names: client address and route.
            label: format!("{}-{}_{}", self.client.ip(), self.client.port(), ex.route.path_prefix),
            request_line: ex.request_line.into(),
            snap: ex.route.policy.snap,
            tls_secrets: keys.as_deref().and_then(Keys::kept),
        }
    }

    /// Begins (or, on a leg already recorded, marks) the session's capture on the legs
    /// the route records. Returns whether any leg is recorded.
    fn begin(&self, ex: &Exchange<'_>, upstream: &LegTap, heading: Heading) -> bool {
        let legs = PerLeg::new(self.client_leg, upstream);
        let mut recorded = false;
        for leg in Leg::BOTH.into_iter().filter(|&l| ex.route.policy.legs.has(l)) {
            let (Some(tap), Some(mark)) = (&legs[leg].tap, ex.marks[leg]) else { continue };
            recorded |= tap.begin(Scope::Session, mark, self.start(ex, heading.to_string(), &legs[leg].keys));
        }
        recorded
    }

    /// The connection is this session's until it ends, and the session is not recorded:
    /// nothing more to probe for.
    fn forgo(&self, upstream: &LegTap) {
        for tap in [&self.client_leg.tap, &upstream.tap].into_iter().flatten() {
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
