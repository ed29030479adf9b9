//! Direct-I/O alignment. Every DMA write and read position and length goes through here.

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
}
