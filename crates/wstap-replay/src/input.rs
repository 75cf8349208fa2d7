//! Where capture bytes come from: a file or standard input (`-`), as they are or
//! compressed with gzip, zstd or lz4 (recognised by their magic, as Wireshark does).
//! Everything streams: a capture is never held whole, and decompression keeps only its
//! window (32 KiB for gzip, up to 4 MiB blocks for lz4, the frame's window for zstd:
//! refused past 32 MiB, enough for every compression level but `--long` and `--ultra`,
//! whose files the tool itself refuses past 128 MiB).

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;

/// A capture's bytes, decompressed.
pub type Source = Box<dyn Read + Send>;

/// How far reads go ahead of the reader.
const BUFFER: usize = 64 << 10;

/// The largest zstd window a capture may ask for.
const MAX_ZSTD_WINDOW: u64 = 32 << 20;

/// The name that means standard input.
pub const STDIN: &str = "-";

/// Opens `path` (`-`: standard input) and undoes its compression.
pub fn open(path: &Path) -> io::Result<Source> {
    let raw: Box<dyn Read + Send> = match path.as_os_str() == STDIN {
        true => Box::new(io::stdin()),
        false => Box::new(File::open(path)?),
    };
    decompressed(BufReader::with_capacity(BUFFER, raw))
}

/// `src` itself, or a decoder of it when its first bytes are a compression's magic.
pub fn decompressed<'a, R: Read + Send + 'a>(mut src: BufReader<R>) -> io::Result<Box<dyn Read + Send + 'a>> {
    let magic = src.fill_buf()?;
    Ok(match magic {
        [0x1f, 0x8b, ..] => Box::new(BufReader::with_capacity(BUFFER, flate2::bufread::MultiGzDecoder::new(src))),
        [0x28, 0xb5, 0x2f, 0xfd, ..] => {
            let mut z = ruzstd::decoding::FrameDecoder::new();
            z.set_max_window_size(MAX_ZSTD_WINDOW);
            Box::new(BufReader::with_capacity(BUFFER, Zstd { src, z, in_frame: false }))
        }
        [0x04, 0x22, 0x4d, 0x18, ..] => {
            Box::new(BufReader::with_capacity(BUFFER, Lz4(Some(lz4_flex::frame::FrameDecoder::new(src)))))
        }
        _ => Box::new(src),
    })
}

/// lz4 frames one after the other, as the `lz4` tool reads them.
struct Lz4<R: BufRead>(Option<lz4_flex::frame::FrameDecoder<R>>);

impl<R: BufRead> Read for Lz4<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while let Some(frame) = &mut self.0 {
            match frame.read(buf)? {
                0 if !buf.is_empty() => {
                    let Some(mut src) = self.0.take().map(lz4_flex::frame::FrameDecoder::into_inner) else { break };
                    if !src.fill_buf()?.is_empty() {
                        self.0 = Some(lz4_flex::frame::FrameDecoder::new(src));
                    }
                }
                n => return Ok(n),
            }
        }
        Ok(0)
    }
}

/// zstd frames one after the other, as the `zstd` tool writes and reads them.
struct Zstd<R: BufRead> {
    src: R,
    z: ruzstd::decoding::FrameDecoder,
    in_frame: bool,
}

impl<R: BufRead> Read for Zstd<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let bad = |e| io::Error::new(io::ErrorKind::InvalidData, format!("zstd: {e}"));
        while !buf.is_empty() {
            if !self.in_frame {
                if self.src.fill_buf()?.is_empty() {
                    break;
                }
                self.z.reset(&mut self.src).map_err(bad)?;
                self.in_frame = true;
            }
            if self.z.can_collect() > 0 {
                return self.z.read(buf);
            }
            if self.z.is_finished() {
                self.in_frame = false;
                continue;
            }
            let one = ruzstd::decoding::BlockDecodingStrategy::UptoBlocks(1);
            self.z.decode_blocks(&mut self.src, one).map_err(bad)?;
        }
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn all(src: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        decompressed(BufReader::new(src)).unwrap().read_to_end(&mut out).unwrap();
        out
    }

    #[test]
    fn gzip_zstd_and_lz4_are_undone_by_their_magic_and_anything_else_is_left_alone() {
        let plain: Vec<u8> = (0..300_000u32).flat_map(|i| (i % 251).to_le_bytes()).collect();
        let half = plain.len() / 2;
        // Two members or frames one after the other, as `cat a.gz b.gz` or `zstd` give.
        let gzip = |part: &[u8]| {
            let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            z.write_all(part).unwrap();
            z.finish().unwrap()
        };
        let zstd = |part: &[u8]| ruzstd::encoding::compress_to_vec(part, ruzstd::encoding::CompressionLevel::Fastest);
        let lz4 = |part: &[u8]| {
            let mut z = lz4_flex::frame::FrameEncoder::new(Vec::new());
            z.write_all(part).unwrap();
            z.finish().unwrap()
        };
        for (name, pack) in [("gzip", &gzip as &dyn Fn(&[u8]) -> Vec<u8>), ("zstd", &zstd), ("lz4", &lz4)] {
            let packed = [pack(&plain[..half]), pack(&plain[half..])].concat();
            assert!(packed.len() < plain.len() / 2, "{name}: {} bytes", packed.len());
            assert!(all(&packed) == plain, "{name}");
        }
        assert_eq!(all(b"\xd4\xc3\xb2\xa1 a pcap as it is"), b"\xd4\xc3\xb2\xa1 a pcap as it is");
        assert_eq!(all(b""), b"");
    }

    #[test]
    fn a_damaged_compressed_capture_is_a_read_error_not_a_panic() {
        let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        z.write_all(&[7; 10_000]).unwrap();
        let mut gz = z.finish().unwrap();
        gz.truncate(gz.len() / 2);
        let mut out = Vec::new();
        assert!(decompressed(BufReader::new(&gz[..])).unwrap().read_to_end(&mut out).is_err());
        let zstd = [0x28, 0xb5, 0x2f, 0xfd, 0xff, 0xff, 0xff, 0xff, 0xff];
        assert!(decompressed(BufReader::new(&zstd[..])).unwrap().read_to_end(&mut out).is_err());
    }
}
