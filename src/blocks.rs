//! Reuse of large byte blocks that many small `Bytes` are cut from (the commitlog's encode
//! blocks, a connection's read blocks).
//!
//! A fresh block is fresh memory: a page fault per 4 KiB when first touched, and zeroing when
//! the user needs initialized bytes. Each block handed out leaves an empty handle here; once
//! every `Bytes` cut from the block is dropped that handle is the only owner, and
//! `BytesMut::try_reclaim` hands the whole block back without allocating.

use std::collections::VecDeque;

use bytes::BytesMut;

/// Blocks of one size, handed out again once nothing cut from them is alive.
pub struct BlockPool {
    size: usize,
    max: usize,
    kept: VecDeque<BytesMut>,
}

impl BlockPool {
    /// A pool of `size`-byte blocks keeping handles on at most `max` of them.
    pub fn new(size: usize, max: usize) -> BlockPool {
        BlockPool {
            size,
            max: max.max(1),
            kept: VecDeque::new(),
        }
    }

    /// An empty block with room for `size` bytes: a kept one that nothing uses any more
    /// (`reused`), else `fresh()`. Whatever `fresh` initialized stays initialized in a reused
    /// block, since bytes once written stay so.
    pub fn take(&mut self, fresh: impl FnOnce() -> BytesMut) -> (BytesMut, bool) {
        let size = self.size;
        let free = self.kept.iter_mut().position(|k| k.try_reclaim(size));
        let (mut block, reused) = match free.and_then(|i| self.kept.remove(i)) {
            Some(b) => (b, true),
            None => (fresh(), false),
        };
        if self.kept.len() >= self.max {
            // The oldest is pinned (a slow reader, a held frame): let it go rather than hold more.
            self.kept.pop_front();
        }
        self.kept.push_back(block.split_to(0));
        (block, reused)
    }

    /// Blocks the pool holds a handle on.
    pub fn kept(&self) -> usize {
        self.kept.len()
    }

    /// Start addresses of the kept blocks (tests count the distinct blocks a user made).
    #[cfg(test)]
    pub(crate) fn kept_starts(&self) -> impl Iterator<Item = usize> + '_ {
        self.kept.iter().map(|b| b.as_ptr() as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_comes_back_only_once_its_bytes_are_gone() {
        let mut pool = BlockPool::new(1024, 4);
        let (mut first, reused) = pool.take(|| BytesMut::with_capacity(1024));
        assert!(!reused);
        let addr = first.as_ptr();
        first.extend_from_slice(b"record");
        let run = first.split().freeze();
        drop(first);
        // A slice of the first block is alive: the next block is a new one.
        let (second, reused) = pool.take(|| BytesMut::with_capacity(1024));
        assert!(!reused);
        assert_ne!(second.as_ptr(), addr);
        drop(run);
        // Dropped: the first block comes back, whole, without a copy.
        let (third, reused) = pool.take(|| BytesMut::with_capacity(1024));
        assert!(reused);
        assert_eq!(third.as_ptr(), addr);
        assert!(third.capacity() >= 1024);
        assert!(third.is_empty());
    }

    #[test]
    fn pinned_blocks_are_let_go_past_the_bound() {
        let mut pool = BlockPool::new(64, 3);
        let mut held = Vec::new();
        for _ in 0..10 {
            let (mut b, _) = pool.take(|| BytesMut::with_capacity(64));
            b.extend_from_slice(b"x");
            held.push(b.split().freeze());
        }
        assert_eq!(pool.kept(), 3);
    }
}
