//! RocketMQ's remoting protocol: frames, the two header codecs and codes (reference §1–§2).
//! Knows nothing of storage. Every decoder takes untrusted bytes: it returns an error and
//! never panics or allocates past the frame limit.

pub mod code;
pub mod command;
pub mod ext_fields;
pub mod frame;
pub mod header;
pub mod json;
pub mod server;

pub use command::{HeaderCodec, RemotingCommand};

/// Why bytes are not a valid remoting frame. The connection is closed on any of these: the
/// stream can no longer be trusted to be in sync.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("frame length {0} outside 4..=16 MiB")]
    FrameLength(i64),
    #[error("unknown header serialize type {0}")]
    SerializeType(u8),
    #[error("header length {header} exceeds the frame's {frame} bytes")]
    HeaderLength { header: usize, frame: usize },
    #[error("header truncated in {0}")]
    Truncated(&'static str),
    #[error("bad JSON header: {0}")]
    Json(String),
    #[error("header field {0} has a bad value")]
    BadField(&'static str),
}
