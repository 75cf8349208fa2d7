//! The capture writer fed any sequence of events (opens, data at any offsets, gaps, FINs,
//! resets, closes, sessions, rotations) on up to four legs, with redaction and snaps on,
//! in MSS-sized or GRO-sized segments.
//! Every file it writes must read back without a format problem.
#![no_main]
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use wstap::capture::{CaptureWriter, ConnId, Event, Gap, LegId, Processed, PureAcks, Scope};
use wstap::capture::{Ending, SectionInfo, Stats, Synthesis, What};
use wstap::config::{DisplayPort, Legs, Redact, Segmentation, Snap};
use wstap::{Dir, Leg, Opening, PerDir};
use wstap_wire::Timestamp;

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(*b)
    }

    fn bytes(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (b, rest) = self.0.split_at(n);
        self.0 = rest;
        b
    }
}

fuzz_target!(|data: &[u8]| {
    let redact = Redact { payload: vec![regex::bytes::Regex::new("secret").unwrap()], ..Redact::defaults() };
    let synth = Synthesis {
        mss_ipv4: 1460,
        mss_ipv6: 1440,
        segment: if data.first().is_some_and(|b| b & 2 == 2) { Segmentation::Gro } else { Segmentation::Mss },
        acks: if data.first().is_some_and(|b| b & 1 == 1) { PureAcks::Written } else { PureAcks::Omitted },
        display_port: DisplayPort::Auto,
        redact: Arc::new(redact),
        isn_seed: 7,
        rotate_wait: Duration::from_millis(5),
        budgets: Default::default(),
    };
    let info =
        SectionInfo { application: "fuzz".into(), os: "fuzz".into(), hostname: "fuzz".into(), ..Default::default() };
    let Ok(mut w) = CaptureWriter::new(Vec::new(), &info, Legs { client: true, upstream: true }, synth) else { return };
    let stats = Stats::default();
    let mut files: Vec<Vec<u8>> = Vec::new();
    let mut offsets: HashMap<u64, PerDir<u64>> = HashMap::new();
    let mut input = Input(data);
    let mut time = 1_000u64;
    let conn = ConnId(1);
    while let Some(op) = input.byte() {
        let leg = u64::from(op >> 4 & 3) + 1;
        let dir = if op & 0x40 == 0 { Dir::Up } else { Dir::Down };
        time += u64::from(input.byte().unwrap_or(0)) * 1_000_000;
        let at = offsets.entry(leg).or_default();
        let what = match op & 0x0f {
            0 => {
                let mut o = Opening::new(
                    if op & 0x80 == 0 { Leg::Client } else { Leg::Upstream },
                    "127.0.0.1:8080".parse().unwrap(),
                    "127.0.0.1:40000".parse().unwrap(),
                    "fuzz ?token=x",
                );
                o.scope = if op & 0x40 != 0 { Scope::Session } else { Scope::Connection };
                o.conn = conn;
                let n = u64::from(input.byte().unwrap_or(0));
                o.snap = Snap { message: (n & 1 == 1).then_some(n), session: (n & 2 == 2).then_some(n * 7) };
                // A leg of TLS records, written as they come and repeated by new files.
                o.tls_secrets = (n & 4 == 4).then(|| {
                    "CLIENT_RANDOM 00 00
"
                    .to_owned()
                });
                *at = PerDir::default();
                What::Open(Box::new(o))
            }
            1..=6 => {
                let len = usize::from(input.byte().unwrap_or(0)) * 8 + usize::from(op & 7);
                let skip = if op & 0x80 != 0 { u64::from(input.byte().unwrap_or(0)) } else { 0 };
                let bytes = Bytes::copy_from_slice(input.bytes(len));
                let offset = at[dir] + skip;
                at[dir] = offset + bytes.len() as u64;
                What::Data { dir, offset, bytes }
            }
            7 => What::Fin { dir, offset: at[dir] },
            8 => {
                let until = at[dir] + u64::from(input.byte().unwrap_or(0)) * 16;
                at[dir] = until;
                What::Gap(Gap { dir, until, frames: 1, compressed: op & 0x80 != 0 })
            }
            9 => What::Reset,
            10 => What::Note(wstap::capture::Note::TlsAfterLoss),
            11 => What::Session { heading: "fuzz session".into(), snap: Snap::default() },
            12 => {
                w.rotation_due(Timestamp::from_nanos(time));
                continue;
            }
            _ => What::Close { reason: Ending::Said("fuzz".into()), offsets: *at },
        };
        let mut ev = Some(Event { time: Timestamp::from_nanos(time), leg: LegId(leg), what });
        while let Some(e) = ev.take() {
            match w.process(e, &stats) {
                Ok(Processed::Done) => {}
                Ok(Processed::RotateFirst { then }) => match w.rotate(Vec::new(), &stats) {
                    Ok(Some(old)) => {
                        files.push(old);
                        ev = then;
                    }
                    _ => return,
                },
                Err(_) => return,
            }
        }
    }
    if let Ok(Some(last)) = w.finish(&stats) {
        files.push(last);
    }
    for (i, file) in files.iter().enumerate() {
        let rec = wstap_replay::read(&[(std::path::Path::new("fuzz.pcapng"), file)]).expect("the writer's file opens");
        assert!(
            !rec.problems.iter().any(|p| p.contains("nothing after it was read")),
            "file {i} of {}: {:?}",
            files.len(),
            rec.problems
        );
    }
});
