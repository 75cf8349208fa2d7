//! Copies of captured chunks. The proxy's thread copies what crossed a socket once, into
//! a per-thread slab cut into `Bytes`, which the writer thread frees when it drops the
//! last of them: per chunk a reference count rather than an allocation here and a free
//! on another thread.

use std::io::IoSlice;

use bytes::{Bytes, BytesMut};

/// What crossed a socket in one read or write: borrowed from the proxy's buffers (one
/// slice, or the first bytes of a vectored write), or bytes already copied (kept in a
/// probe ring, or held back) that can be sliced without another copy.
#[derive(Clone, Copy)]
pub(crate) enum Piece<'a> {
    /// One slice.
    Slice(&'a [u8]),
    /// The first `len` bytes of these slices.
    Vectored(&'a [IoSlice<'a>], usize),
    /// Bytes already copied.
    Owned(&'a Bytes),
}

impl<'a> Piece<'a> {
    /// Its length in bytes.
    pub(crate) fn len(&self) -> usize {
        match self {
            Piece::Slice(s) => s.len(),
            Piece::Vectored(_, len) => *len,
            Piece::Owned(b) => b.len(),
        }
    }

    /// The slices holding its bytes from `from` on.
    pub(crate) fn parts_from(&self, from: usize) -> Parts<'a> {
        Parts { piece: *self, index: 0, left: self.len(), skip: from }
    }

    /// Slice `i` of the piece, as it holds it.
    fn slice(&self, i: usize) -> Option<&'a [u8]> {
        match *self {
            Piece::Slice(s) => (i == 0).then_some(s),
            Piece::Vectored(bufs, _) => bufs.get(i).map(|b| &b[..]),
            Piece::Owned(b) => (i == 0).then_some(&b[..]),
        }
    }

    /// Its bytes `from..to`, copied (or, if already owned, sliced).
    pub(crate) fn bytes(&self, from: usize, to: usize, keep: Keep) -> Bytes {
        match self {
            Piece::Owned(b) => b.slice(from..to),
            _ => copy_chunk(self.parts_from(from), to - from, keep),
        }
    }
}

/// How long a captured chunk will live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Keep {
    /// On its way to the writer, which drops it within milliseconds.
    Briefly,
    /// In a probe ring, perhaps for the connection's life.
    Long,
}

/// The slices of a [`Piece`] from some byte on.
pub(crate) struct Parts<'a> {
    piece: Piece<'a>,
    index: usize,
    /// Bytes of the piece not yet walked past.
    left: usize,
    /// Bytes still to skip.
    skip: usize,
}

impl<'a> Iterator for Parts<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        loop {
            let s = self.piece.slice(self.index)?;
            self.index += 1;
            let s = &s[..s.len().min(self.left)];
            self.left -= s.len();
            let cut = self.skip.min(s.len());
            self.skip -= cut;
            if cut < s.len() {
                return Some(&s[cut..]);
            }
            if self.left == 0 {
                return None;
            }
        }
    }
}

/// Chunks shorter than this that are kept briefly share the thread's slab.
const SLAB_CHUNK: usize = 16 * 1024;
/// Below the allocator's mmap threshold (128 KiB), so that a new slab reuses warm heap
/// memory: 256 KiB slabs came fresh from mmap, and faulting their pages in cost more
/// than the allocations they saved.
const SLAB: usize = 64 * 1024;

thread_local! {
    /// Where this thread copies captured chunks: one allocation cut into many `Bytes`,
    /// freed by the writer thread when it drops the last of them. Per chunk that is a
    /// reference count instead of an allocation here and a free on another thread.
    static SLAB_BUF: std::cell::RefCell<BytesMut> = std::cell::RefCell::new(BytesMut::new());
}

/// The first `n` bytes of `parts`, copied. A chunk kept long gets its own allocation,
/// so that it never pins a shared slab.
pub(crate) fn copy_chunk<'a>(parts: impl IntoIterator<Item = &'a [u8]>, n: usize, keep: Keep) -> Bytes {
    let gather = |out: &mut BytesMut| {
        let mut left = n;
        for p in parts {
            let take = left.min(p.len());
            out.extend_from_slice(&p[..take]);
            left -= take;
        }
    };
    if keep == Keep::Long || n > SLAB_CHUNK {
        let mut own = BytesMut::with_capacity(n);
        gather(&mut own);
        return own.freeze();
    }
    SLAB_BUF.with_borrow_mut(|slab| {
        if slab.capacity() - slab.len() < n {
            *slab = BytesMut::with_capacity(SLAB);
        }
        gather(slab);
        slab.split().freeze()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_yield_their_bytes_from_any_offset() {
        let (a, b) = (b"hello ".to_vec(), b"world!!".to_vec());
        let bufs = [IoSlice::new(&a), IoSlice::new(&b)];
        let piece = Piece::Vectored(&bufs, 11);
        assert_eq!(piece.len(), 11);
        let from = |n| piece.parts_from(n).flat_map(|p| p.iter().copied()).collect::<Vec<u8>>();
        assert_eq!(
            (from(0), from(4), from(6), from(11)),
            (b"hello world".to_vec(), b"o world".to_vec(), b"world".to_vec(), vec![])
        );
        assert_eq!(&piece.bytes(3, 8, Keep::Briefly)[..], b"lo wo");
        let owned = Bytes::from_static(b"kept bytes");
        assert_eq!(&Piece::Owned(&owned).bytes(5, 10, Keep::Briefly)[..], b"bytes");
    }

    #[test]
    fn brief_chunks_share_a_slab_and_long_ones_do_not() {
        let a = copy_chunk([&b"hello "[..], b"world, and more"], 11, Keep::Briefly);
        let b = copy_chunk([&b"again"[..]], 5, Keep::Briefly);
        assert_eq!((&a[..], &b[..]), (&b"hello world"[..], &b"again"[..]));
        assert_eq!(b.as_ptr(), a.as_ptr().wrapping_add(a.len()), "cut from one slab");
        let long = copy_chunk([&b"kept for long"[..]], 13, Keep::Long);
        assert_eq!(&long[..], b"kept for long");
        let c = copy_chunk([&b"next"[..]], 4, Keep::Briefly);
        assert_eq!(c.as_ptr(), b.as_ptr().wrapping_add(b.len()), "a long chunk takes nothing from the slab");
        // Filling the slab starts another; what was cut from the old one stays intact.
        let big = vec![7u8; SLAB_CHUNK];
        let many: Vec<Bytes> =
            (0..2 * SLAB / SLAB_CHUNK).map(|_| copy_chunk([&big[..]], big.len(), Keep::Briefly)).collect();
        assert!(many.iter().all(|m| m[..] == big[..]));
        assert_eq!((&a[..], &b[..], &c[..]), (&b"hello world"[..], &b"again"[..], &b"next"[..]));
    }
}
