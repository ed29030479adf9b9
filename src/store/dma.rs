//! Direct-I/O alignment and buffers. Every DMA write and read position and length goes
//! through here; the commitlog's write buffers come from a [`DmaPool`] (one per shard, used
//! only on its executor).

use std::cell::RefCell;

use glommio::io::{DmaBuffer, DmaFile};

/// Alignment of every DMA position and length. 4 KiB covers 512 e and 4 Kn devices.
pub const ALIGN: u64 = 4096;

pub fn align_down(v: u64) -> u64 {
    v & !(ALIGN - 1)
}

pub fn align_up(v: u64) -> u64 {
    v.div_ceil(ALIGN) * ALIGN
}

pub fn is_aligned(v: u64) -> bool {
    v % ALIGN == 0
}

/// Recycles DMA buffers of one size (the commitlog's full write pieces).
///
/// A fresh buffer is fresh memory: a 1 MiB one costs 256 page faults when the copy first
/// touches it, which was ~6 % of a shard's time under steady appends. Buffers of other
/// lengths (a round's short last piece) are allocated and dropped as usual, since
/// `DmaBuffer` can only be trimmed, never grown back.
pub struct DmaPool {
    size: usize,
    cap: usize,
    free: RefCell<Vec<DmaBuffer>>,
}

impl DmaPool {
    /// A pool of `size`-byte buffers keeping at most `cap` idle ones.
    pub fn new(size: usize, cap: usize) -> DmaPool {
        DmaPool {
            size,
            cap,
            free: RefCell::new(Vec::new()),
        }
    }

    /// A buffer of exactly `len` bytes (contents undefined), pooled if `len` is the pool's size.
    pub fn get(&self, file: &DmaFile, len: usize) -> DmaBuffer {
        if len == self.size {
            if let Some(b) = self.free.borrow_mut().pop() {
                return b;
            }
        }
        file.alloc_dma_buffer(len)
    }

    /// Returns a buffer for reuse; one of another length, or past the cap, is dropped.
    pub fn put(&self, buf: DmaBuffer) {
        let mut free = self.free.borrow_mut();
        if buf.len() == self.size && free.len() < self.cap {
            free.push(buf);
        }
    }

    /// Idle buffers held.
    pub fn idle(&self) -> usize {
        self.free.borrow().len()
    }
}

/// Makes glommio's per-device iopoll probe see real data.
///
/// glommio decides once per device whether DMA reads go to the polled ring, by reading the
/// first block of the first file opened with `dma_open`. If that file is empty the read ends
/// at EOF without reaching the device, the probe "succeeds", and every later DMA read on a
/// device without poll queues (virtio, most NVMe setups) fails with EOPNOTSUPP. Opening a file
/// that holds at least one block first makes the probe exercise the device and answer right.
pub async fn prime_iopoll_probe(file_with_data: &std::path::Path) -> std::io::Result<()> {
    let f = glommio::io::DmaFile::open(file_with_data).await?;
    f.close().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alignment_edges() {
        assert_eq!(align_down(0), 0);
        assert_eq!(align_up(0), 0);
        assert_eq!(align_up(1), 4096);
        assert_eq!(align_up(4096), 4096);
        assert_eq!(align_down(4097), 4096);
        assert!(is_aligned(8192));
        assert!(!is_aligned(8191));
    }

    #[test]
    fn pool_reuses_only_its_size_and_keeps_at_most_cap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        crate::store::run_on_executor(move || async move {
            let f = glommio::io::OpenOptions::new()
                .create(true)
                .write(true)
                .dma_open(&path)
                .await
                .unwrap();
            let pool = DmaPool::new(8192, 2);
            let mut a = pool.get(&f, 8192);
            a.as_bytes_mut()[0] = 7;
            let a_ptr = a.as_ptr();
            pool.put(a);
            assert_eq!(pool.idle(), 1);
            let again = pool.get(&f, 8192);
            assert_eq!(again.as_ptr(), a_ptr, "the idle buffer is handed out again");
            assert_eq!(pool.idle(), 0);
            // Another length is never pooled.
            let short = pool.get(&f, 4096);
            assert_eq!(short.len(), 4096);
            pool.put(short);
            assert_eq!(pool.idle(), 0);
            for _ in 0..3 {
                pool.put(f.alloc_dma_buffer(8192));
            }
            assert_eq!(pool.idle(), 2, "capped");
            f.close().await.unwrap();
        });
    }
}
