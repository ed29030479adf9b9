//! Store errors. I/O errors name the file; corruption names file and offset.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("corrupt data in {file} at offset {offset}: {reason}")]
    Corruption {
        file: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("message of {size} bytes exceeds maxMessageSize {max}")]
    MessageTooLarge { size: usize, max: usize },
    #[error("bad message: {0}")]
    BadMessage(String),
    #[error("store {store} is locked by another process (pid {pid})")]
    Locked { store: PathBuf, pid: String },
    #[error("bad store configuration: {0}")]
    Config(String),
    #[error("commitlog offset {0} is not stored (deleted, not yet written or another shard)")]
    OffsetNotFound(String),
    #[error("a previous flush failed, the shard refuses writes: {0}")]
    FlushFailed(String),
    #[error("the store is shut down")]
    Closed,
    #[error("SYNC_FLUSH timed out after {0} ms")]
    FlushTimeout(u64),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// The outcome of a write of `len` bytes: an error unless all of them were written. A
/// regular file gives a short write at ENOSPC or at the file-size limit, and it must not pass
/// for a full one (the store would call data flushed that is not on disk).
pub fn check_written<E: Into<std::io::Error>>(
    r: std::result::Result<usize, E>,
    len: usize,
    op: &'static str,
    path: impl Into<PathBuf>,
) -> Result<()> {
    let source = match r {
        Ok(n) if n >= len => return Ok(()),
        Ok(n) => std::io::Error::new(
            std::io::ErrorKind::WriteZero,
            format!("short write {n} of {len}"),
        ),
        Err(e) => e.into(),
    };
    Err(StoreError::Io {
        op,
        path: path.into(),
        source,
    })
}

/// Adds the operation and path to an I/O error, as `map_err(io_err("open", &path))`.
pub fn io_err<E: Into<std::io::Error>>(
    op: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(E) -> StoreError {
    let path = path.into();
    move |e| StoreError::Io {
        op,
        path,
        source: e.into(),
    }
}
