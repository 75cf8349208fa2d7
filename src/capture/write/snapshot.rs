//! A live subscriber's first section: the section header, the interfaces, and every live
//! leg as it stands (handshake, Upgrade exchange, deflate windows, TLS records), for a
//! reader that starts now and then gets the packets the live writer writes next. The
//! writer's own section, its notes and counts are untouched.

use std::io;

use super::repeat::{repeat_all, Beginning};
use super::section::Section;
use super::writer::CaptureWriter;
use crate::capture::note::Audience;
use crate::capture::stats::Stats;

impl CaptureWriter<Vec<u8>> {
    /// A section of its own showing every live leg as it stands, for a live stream's new
    /// subscriber. Call it where [`CaptureWriter::ready_to_rotate`] says a new section may
    /// start (or on [`super::writer::Processed::RotateFirst`]).
    pub fn snapshot(&mut self, stats: &Stats) -> io::Result<Vec<u8>> {
        let boundary = self.rotation.happen();
        let main = std::mem::replace(&mut self.section, Section::none());
        let notes: Vec<_> = self.legs.iter_mut().map(|(id, leg)| (*id, leg.set_notes_aside())).collect();
        let at = Beginning { audience: Audience::Subscriber, time: self.clock, unwritten: 0, boundary };
        let result = self
            .section
            .begin(Vec::new(), &self.info, self.wanted)
            .and_then(|()| repeat_all(&mut self.legs, &mut self.section, at, stats));
        let snapshot = std::mem::replace(&mut self.section, main).abandon();
        for (id, notes) in notes {
            if let Some(leg) = self.legs.get_mut(&id) {
                leg.put_notes_back(notes);
            }
        }
        result.map(|()| snapshot.unwrap_or_default())
    }
}
