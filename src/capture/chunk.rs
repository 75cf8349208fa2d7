//! Copies of captured chunks. The proxy's thread copies what crossed a socket once, into
//! a per-thread slab cut into `Bytes`, which the writer thread frees when it drops the
//! last of them: per chunk a reference count rather than an allocation here and a free
//! on another thread.

use bytes::{Bytes, BytesMut};

/// How long a captured chunk will live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Keep {
    /// On its way to the writer, which drops it within milliseconds.
    Briefly,
    /// In a probe ring, perhaps for the connection's life.
    Long,
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
