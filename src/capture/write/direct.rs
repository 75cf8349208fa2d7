//! A capture file written around the page cache (`O_DIRECT`): whole aligned blocks go
//! from wstap's buffer to the disk with no copy into the kernel, and the kernel has no
//! dirty pages of it to write back. Buffered `write(2)` spends most of the writer's
//! time per byte copying into the page cache, and more when the kernel throttles a
//! writer with many dirty pages (docs/benchmarks.md).
//!
//! What is promised of a file stays as it was: the bytes buffered reach the file when
//! it is flushed (the sink does, at least every flush interval: [`super::files`]), and
//! the file is always its exact length. `O_DIRECT` writes whole blocks only, so the tail
//! that does not fill a block goes through a second, ordinary descriptor of the same
//! file (the kernel keeps both views coherent), and is written again with its block
//! once that fills.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

/// Alignment of offsets, lengths and memory for `O_DIRECT` (a page: any device's
/// logical block divides it).
const ALIGN: usize = 4096;

/// The buffer: written whole when it fills. Each direct write waits for the disk, so
/// fewer and larger is better: 4 × 64 KiB echoed (make bench) kept 0.70 of its capture
/// with 256 KiB, all of it with 1 MiB.
const CAPACITY: usize = 1 << 20;

/// A file being written with `O_DIRECT`.
pub(crate) struct DirectFile {
    direct: File,
    /// The same file, buffered: the tail that does not fill a block, and the finisher's.
    plain: File,
    buf: Aligned,
    /// Bytes in `buf`.
    fill: usize,
    /// The file offset of `buf[0]`: a multiple of [`ALIGN`].
    base: u64,
    /// The filesystem refused a direct write (it took the open): everything goes
    /// through the ordinary descriptor from then on.
    refused: bool,
}

impl DirectFile {
    /// `plain`, a file just created at `path`, opened a second time with `O_DIRECT`; an
    /// error where the filesystem refuses it (some network filesystems, older kernels'
    /// tmpfs), or where the name no longer leads to the same file.
    pub(crate) fn open(path: &Path, plain: File) -> io::Result<DirectFile> {
        use std::os::unix::fs::MetadataExt;
        let direct = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT | libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)?;
        let (a, b) = (direct.metadata()?, plain.metadata()?);
        if (a.dev(), a.ino()) != (b.dev(), b.ino()) {
            return Err(io::Error::other("the capture file was replaced"));
        }
        Ok(DirectFile { direct, plain, buf: Aligned::new()?, fill: 0, base: 0, refused: false })
    }

    /// `len` bytes of the buffer to the file at `base`, `len` a multiple of [`ALIGN`]:
    /// directly, or through the ordinary descriptor once a direct write was refused
    /// (a filesystem that opens with `O_DIRECT` but wants larger blocks).
    fn write_blocks(&mut self, len: usize) -> io::Result<()> {
        let bytes = &self.buf.bytes()[..len];
        if !self.refused {
            match self.direct.write_all_at(bytes, self.base) {
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => self.refused = true,
                done => return done,
            }
        }
        self.plain.write_all_at(bytes, self.base)
    }

    /// Writes what is buffered (whole blocks directly, the tail through the buffered
    /// descriptor) and hands back the buffered descriptor, to be synced and closed.
    pub(crate) fn into_inner(mut self) -> io::Result<File> {
        self.flush()?;
        Ok(self.plain)
    }
}

impl Write for DirectFile {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.fill == CAPACITY {
            self.write_blocks(CAPACITY)?;
            (self.base, self.fill) = (self.base + CAPACITY as u64, 0);
        }
        let n = data.len().min(CAPACITY - self.fill);
        self.buf.bytes_mut()[self.fill..self.fill + n].copy_from_slice(&data[..n]);
        self.fill += n;
        Ok(n)
    }

    /// Every buffered byte to the file: it is then its exact length.
    fn flush(&mut self) -> io::Result<()> {
        let whole = self.fill / ALIGN * ALIGN;
        if whole > 0 {
            self.write_blocks(whole)?;
        }
        let tail = self.fill - whole;
        if tail > 0 {
            self.plain.write_all_at(&self.buf.bytes()[whole..self.fill], self.base + whole as u64)?;
            // The tail's block is written again, whole, once it fills.
            self.buf.bytes_mut().copy_within(whole..self.fill, 0);
        }
        self.base += whole as u64;
        self.fill = tail;
        Ok(())
    }
}

/// [`CAPACITY`] bytes aligned to [`ALIGN`]: a little more allocated, and the aligned
/// part of it used.
struct Aligned {
    room: Vec<u8>,
    start: usize,
}

impl Aligned {
    fn new() -> io::Result<Aligned> {
        let room = vec![0u8; CAPACITY + ALIGN];
        let start = room.as_ptr().align_offset(ALIGN);
        match start < ALIGN {
            true => Ok(Aligned { room, start }),
            false => Err(io::Error::other("no aligned buffer")),
        }
    }

    fn bytes(&self) -> &[u8] {
        &self.room[self.start..self.start + CAPACITY]
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.room[self.start..self.start + CAPACITY]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The file is its exact length after every flush, holds every byte in order across
    /// whole buffers and tails, and `into_inner` writes the rest.
    #[test]
    fn every_byte_reaches_the_file_in_order_and_the_length_is_exact() {
        let path = scratch("order");
        let plain = OpenOptions::new().write(true).create_new(true).open(&path).unwrap();
        let mut f = DirectFile::open(&path, plain)
            .expect("O_DIRECT in the system's temporary directory (ext4 takes it, and tmpfs since Linux 6.6)");
        let mut expected = Vec::new();
        let mut n = 0u32;
        for size in [10, 4086, 1, 5000, 3 * CAPACITY + 17, 100, CAPACITY - 1, 2] {
            let chunk: Vec<u8> = (0..size)
                .map(|_| {
                    n = n.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                    (n >> 16) as u8
                })
                .collect();
            f.write_all(&chunk).unwrap();
            expected.extend_from_slice(&chunk);
            f.flush().unwrap();
            assert_eq!(std::fs::read(&path).unwrap(), expected, "after {size} bytes");
        }
        f.write_all(b"end").unwrap();
        expected.extend_from_slice(b"end");
        let file = f.into_inner().unwrap();
        file.sync_all().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), expected);
        let _ = std::fs::remove_file(&path);
    }

    /// A fresh path in the system's temporary directory.
    fn scratch(name: &str) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!("wstap-direct-{name}-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        path
    }
}
