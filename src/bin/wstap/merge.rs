//! The `merge` command: wstap's rotated files joined into one pcapng in which every
//! session is whole and decodes, plain or TLS-encrypted: the files' blocks copied in time
//! order under one section, interfaces that are the same described once, the decryption
//! secrets kept once each, and what each file repeated of connections an earlier file
//! holds (its synthetic handshake, Upgrade exchange, deflate priming, TLS records) left
//! out, so that each connection runs on from one file into the next as it did on the
//! wire. Plain `mergecap` keeps the repeats, and the connections then do not decode.

use std::collections::HashSet;
use std::io::{BufWriter, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use wstap_replay::dissect::{self, LinkType};

use crate::pick::{fail, MATCHED};

const SHB: u32 = 0x0A0D_0D0A;
const IDB: u32 = 1;
const ISB: u32 = 5;
const EPB: u32 = 6;
const DSB: u32 = 0x0000_000A;
/// The largest block read: a packet and a megabyte of options or secrets.
const MAX_BLOCK: usize = 2 << 20;

/// A connection, whichever way its packets go.
type Tuple = (SocketAddr, SocketAddr);

/// What the merge has written so far.
#[derive(Default)]
struct Merged {
    /// The interfaces written, by their description block's body.
    interfaces: Vec<(Vec<u8>, LinkType)>,
    /// The decryption secrets written.
    secrets: HashSet<Vec<u8>>,
    /// Connections the files before the current one hold.
    earlier: HashSet<Tuple>,
    /// Connections the current file holds.
    current: HashSet<Tuple>,
    /// Packets copied, and repeated ones left out.
    packets: u64,
    dropped: u64,
}

/// `wstap merge`: written to `OUT.part`, renamed to `output` once whole, so that a
/// failure leaves nothing half-written and no input is ever overwritten.
pub fn merge(files: &[PathBuf], output: &Path) -> ExitCode {
    if let Err(e) = distinct(files, output) {
        return fail(e);
    }
    let ordered = match in_time_order(files) {
        Ok(f) => f,
        Err(e) => return fail(e),
    };
    let part = output.with_file_name(format!(
        "{}.part",
        output.file_name().map_or_else(|| "merged".into(), |n| n.to_string_lossy())
    ));
    let out = match std::fs::File::create(&part) {
        Ok(f) => f,
        Err(e) => return fail(format!("{}: {e}", part.display())),
    };
    let mut out = BufWriter::new(out);
    let mut merged = Merged::default();
    let mut result = Ok(());
    for (i, file) in ordered.iter().enumerate() {
        result = merged.file(file, i == 0, &mut out).map_err(|e| format!("{}: {e}", file.display()));
        if result.is_err() {
            break;
        }
        let current = std::mem::take(&mut merged.current);
        merged.earlier.extend(current);
    }
    let result = result
        .and_then(|()| out.flush().map_err(|e| format!("{}: {e}", part.display())))
        .and_then(|()| std::fs::rename(&part, output).map_err(|e| format!("{}: {e}", output.display())));
    if let Err(e) = result {
        let _ = std::fs::remove_file(&part);
        return fail(e);
    }
    eprintln!(
        "wstap: merged {} files into {}: {} packets, {} repeated ones left out",
        ordered.len(),
        output.display(),
        merged.packets,
        merged.dropped
    );
    ExitCode::from(MATCHED)
}

/// The inputs are files (not standard input, which cannot be read twice), each given
/// once, none of them the output.
fn distinct(files: &[PathBuf], output: &Path) -> Result<(), String> {
    let mut seen = HashSet::new();
    let out = std::fs::canonicalize(output).ok();
    for f in files {
        if f.as_os_str() == "-" {
            return Err("merge reads files, not standard input (`-`): it reads each twice".into());
        }
        let real = std::fs::canonicalize(f).map_err(|e| format!("{}: {e}", f.display()))?;
        if out.as_ref() == Some(&real) {
            return Err(format!("{}: the output is one of the inputs", f.display()));
        }
        if !seen.insert(real) {
            return Err(format!("{}: given twice", f.display()));
        }
    }
    Ok(())
}

/// The files in the order of their first packets.
fn in_time_order(files: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    let mut timed = Vec::new();
    for f in files {
        let src = wstap_replay::input::open(f).map_err(|e| format!("{}: {e}", f.display()))?;
        let mut r = wstap_replay::capfile::Reader::new(src).map_err(|e| format!("{}: {e}", f.display()))?;
        let first = r.next().and_then(Result::ok).map(|p| p.time);
        timed.push((first, f.clone()));
    }
    timed.sort_by_key(|(t, _)| *t);
    Ok(timed.into_iter().map(|(_, f)| f).collect())
}

impl Merged {
    /// Copies one file's blocks: its section header if it is the first.
    fn file(&mut self, path: &Path, first: bool, out: &mut impl Write) -> Result<(), String> {
        let mut src = wstap_replay::input::open(path).map_err(|e| e.to_string())?;
        // Interface ids in this file (per section) → ids in the merged file.
        let mut map: Vec<u32> = Vec::new();
        let mut at = 0u64;
        while let Some((kind, mut block)) = next_block(&mut src, at)? {
            let len = block.len() as u64;
            match kind {
                SHB if first && at == 0 => out_write(out, &block)?,
                SHB => map.clear(),
                IDB => map.push(self.interface(&block, out)?),
                EPB | ISB => {
                    let Some(&to) = block.get(8..12).and_then(|b| map.get(u32_le(b) as usize)) else {
                        return Err(format!("at offset {at}: a block names an interface its section lacks"));
                    };
                    if kind == EPB && self.repeated_of_earlier(&block, to) {
                        self.dropped += 1;
                    } else {
                        block[8..12].copy_from_slice(&to.to_le_bytes());
                        self.packets += u64::from(kind == EPB);
                        out_write(out, &block)?;
                    }
                }
                DSB => {
                    if self.secrets.insert(block.clone()) {
                        out_write(out, &block)?;
                    }
                }
                _ => out_write(out, &block)?,
            }
            at += len;
        }
        Ok(())
    }

    /// The merged id of an interface described by `block`, written if it is new.
    fn interface(&mut self, block: &[u8], out: &mut impl Write) -> Result<u32, String> {
        let body = block[8..block.len() - 4].to_vec();
        if let Some(i) = self.interfaces.iter().position(|(b, _)| *b == body) {
            return Ok(i as u32);
        }
        let link = LinkType::from_value(body.first().map_or(0, |_| u16::from_le_bytes([body[0], body[1]])));
        out_write(out, block)?;
        self.interfaces.push((body, link));
        Ok(self.interfaces.len() as u32 - 1)
    }

    /// Whether an enhanced packet block (on merged interface `ifc`) is one a file
    /// repeated of a connection an earlier file holds; notes the connection either way.
    fn repeated_of_earlier(&mut self, block: &[u8], ifc: u32) -> bool {
        let body = &block[8..block.len() - 4];
        let caplen = body.get(12..16).map_or(0, |b| u32_le(b) as usize);
        let Some(data) = body.get(20..20 + caplen) else { return false };
        let link = self.interfaces.get(ifc as usize).map_or(LinkType::Raw, |(_, l)| *l);
        let Ok(s) = dissect::segment(link, data) else { return false };
        let tuple = if s.src <= s.dst { (s.src, s.dst) } else { (s.dst, s.src) };
        let options = body.get(20 + caplen.div_ceil(4) * 4..).unwrap_or_default();
        if comment_is_repeat(options) && self.earlier.contains(&tuple) {
            return true;
        }
        self.current.insert(tuple);
        false
    }
}

/// Whether an EPB's options hold a comment that marks the packet as repeated.
fn comment_is_repeat(mut options: &[u8]) -> bool {
    while options.len() >= 4 {
        let (code, len) =
            (u16::from_le_bytes([options[0], options[1]]), usize::from(u16::from_le_bytes([options[2], options[3]])));
        let Some(value) = options.get(4..4 + len) else { return false };
        match code {
            0 => return false,
            1 if std::str::from_utf8(value).is_ok_and(wstap_wire::repeat::is_repeat) => return true,
            _ => {}
        }
        options = &options[(4 + len.div_ceil(4) * 4).min(options.len())..];
    }
    false
}

fn u32_le(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn out_write(out: &mut impl Write, block: &[u8]) -> Result<(), String> {
    out.write_all(block).map_err(|e| format!("writing: {e}"))
}

/// The next whole block (its type, and its bytes), little-endian pcapng only: wstap's
/// own files are; `None` at the end.
fn next_block(src: &mut impl Read, at: u64) -> Result<Option<(u32, Vec<u8>)>, String> {
    let mut head = [0u8; 8];
    match src.read(&mut head[..1]) {
        Ok(0) => return Ok(None),
        Ok(_) => {}
        Err(e) => return Err(format!("at offset {at}: {e}")),
    }
    src.read_exact(&mut head[1..]).map_err(|e| format!("at offset {at}: truncated block header ({e})"))?;
    let (kind, len) = (u32_le(&head[..4]), u32_le(&head[4..]) as usize);
    if at == 0 && kind != SHB {
        return Err("not a pcapng file: wstap merge joins wstap's own (pcapng) files".into());
    }
    if !(12..=MAX_BLOCK).contains(&len) || len % 4 != 0 {
        return Err(format!("at offset {at}: block length {len} is not one this merge reads"));
    }
    let mut block = head.to_vec();
    block.resize(len, 0);
    src.read_exact(&mut block[8..])
        .map_err(|e| format!("at offset {at}: a block of {len} bytes is cut short ({e})"))?;
    if kind == SHB && block.get(8..12) != Some(&0x1A2B_3C4Du32.to_le_bytes()[..]) {
        return Err(format!("at offset {at}: a big-endian section: not a file wstap wrote"));
    }
    Ok(Some((kind, block)))
}
