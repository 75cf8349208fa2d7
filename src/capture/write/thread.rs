//! The running capture: the queue taps send to, and the writer thread behind it, which
//! takes the queue's events a batch at a time and hands each to the file sink (and, with
//! `[live]`, to the live stream's writer), off the async workers. Its heartbeat tells the
//! watchdog it is not stuck.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use tracing::error;

use super::live::LiveWriter;
use super::sink::FileSink;
use crate::capture::event::now;
use crate::capture::live::Hub;
use crate::capture::outbox::Outbox;
use crate::capture::queue::Recorder;
use crate::config::CaptureSettings;

/// When the writer thread last went round its loop (ns since the epoch).
#[derive(Clone)]
pub struct Heartbeat(Arc<AtomicU64>);

impl Heartbeat {
    fn beat(&self) {
        self.0.store(now().as_nanos(), Relaxed);
    }

    /// Time since then. The writer goes round at least every flush interval, so a long
    /// silence means it is stuck (a hung disk, a bug).
    pub fn idle(&self) -> Duration {
        now().since(wstap_wire::Timestamp::from_nanos(self.0.load(Relaxed)))
    }
}

/// The running capture: the recorder taps send to and the writer thread behind it.
pub struct Capture {
    recorder: Recorder,
    thread: Option<std::thread::JoinHandle<()>>,
    heartbeat: Heartbeat,
    /// Where live-stream subscribers join.
    hub: Arc<Hub>,
}

impl Capture {
    /// Starts the writer thread. The file is created when the first event arrives.
    pub fn start(settings: CaptureSettings) -> io::Result<Capture> {
        Capture::start_shipping(settings, None)
    }

    /// [`Capture::start`], each file handed to `outbox` once it is finished.
    pub fn start_shipping(settings: CaptureSettings, outbox: Option<Arc<Outbox>>) -> io::Result<Capture> {
        let recorder = Recorder::new(settings.queue_size);
        let heartbeat = Heartbeat(Arc::new(AtomicU64::new(now().as_nanos())));
        let waker = recorder.clone();
        let hub = Arc::new(Hub::new(Box::new(move || waker.wake())));
        let thread = {
            let (recorder, heartbeat, hub) = (recorder.clone(), heartbeat.clone(), hub.clone());
            std::thread::Builder::new()
                .name("wstap-capture".into())
                .spawn(move || writer_thread(&recorder, &heartbeat, settings, hub, outbox))?
        };
        Ok(Capture { recorder, thread: Some(thread), heartbeat, hub })
    }

    /// Where live-stream subscribers join (`[live]`).
    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// Where taps send their events.
    pub fn recorder(&self) -> &Recorder {
        &self.recorder
    }

    /// The writer thread's heartbeat, for the watchdog.
    pub fn heartbeat(&self) -> Heartbeat {
        self.heartbeat.clone()
    }

    /// New capture settings (a reload): they apply from the next file, which starts as
    /// soon as every session is between frames.
    pub fn reconfigure(&self, settings: CaptureSettings) {
        self.recorder.request(|r| r.reconfigure = Some(settings));
    }

    /// Rotates the capture files as soon as every session is between frames.
    pub fn rotate(&self) {
        self.recorder.request(|r| r.rotate = true);
    }

    /// Stops taking events, writes what is queued, flushes, syncs and closes the file.
    pub fn finish(mut self) {
        self.close();
    }

    fn close(&mut self) {
        self.recorder.request(|r| r.close = true);
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                error!("capture writer thread panicked");
            }
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.close();
    }
}

fn writer_thread(
    recorder: &Recorder,
    heartbeat: &Heartbeat,
    settings: CaptureSettings,
    hub: Arc<Hub>,
    outbox: Option<Arc<Outbox>>,
) {
    let stats = recorder.stats();
    let flush_interval = settings.flush_interval;
    let seed = random_seed();
    let live_seed = seed.rotate_left(29) ^ 0x11fe;
    let live_writer = |settings: &CaptureSettings| {
        let format = settings.live?;
        Some(LiveWriter::new(settings, live_seed, format, hub.clone()))
    };
    let mut live = live_writer(&settings);
    let mut sink = FileSink::new(settings.clone(), crate::capture::host::section_info(&settings.instance), seed);
    if let Some(outbox) = outbox {
        sink.ship_to(outbox);
    }
    let mut batch = VecDeque::new();
    let mut busy = false;
    loop {
        heartbeat.beat();
        let asked = recorder.take(busy, flush_interval, &mut batch);
        busy = !batch.is_empty();
        for (i, event) in batch.drain(..).enumerate() {
            // Liveness is progress, not idleness: a long batch still beats.
            if i % 256 == 255 {
                heartbeat.beat();
            }
            if let Some(live) = live.as_mut() {
                live.process(&event);
            }
            sink.process(event, stats);
        }
        // Asked for after the events already queued, so applied after them.
        if let Some(settings) = asked.reconfigure {
            // A stream turned on by a reload shows the sessions that start from then on.
            live = match (live.take(), settings.live) {
                (_, None) => None,
                (Some(mut live), Some(format)) => {
                    live.reconfigure(&settings, format);
                    Some(live)
                }
                (None, Some(_)) => live_writer(&settings),
            };
            sink.reconfigure(settings, now());
        }
        if let Some(live) = live.as_mut() {
            live.tick(now());
        }
        if asked.rotate {
            sink.rotate_soon(now());
        }
        sink.tick(now(), stats);
        if asked.close && recorder.is_empty() {
            sink.finish(stats);
            return;
        }
    }
}

fn random_seed() -> u64 {
    let t = now().as_nanos();
    let here = &t as *const u64 as u64;
    t ^ here.rotate_left(32) ^ u64::from(std::process::id()).rotate_left(16)
}
