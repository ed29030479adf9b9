//! Remoting frames (reference §1.1): `length i32 | serializeType<<24 | headerLen | header | body`.
//!
//! [`check`] is the cheap "is a whole frame here?" test that runs before any decoding or
//! allocation; it enforces the 16 MiB frame limit from the 4-byte prefix alone. "Need more
//! bytes" is a normal answer, not an error.

use bytes::{Buf, Bytes, BytesMut};

use super::command::{HeaderCodec, RemotingCommand};
use super::ProtocolError;

/// Largest frame, counting the 4-byte prefix (`com.rocketmq.remoting.frameMaxLength`).
pub const MAX_FRAME: usize = 16 * 1024 * 1024;

/// Length of the complete frame at the start of `buf` (prefix included), `Ok(None)` if more
/// bytes are needed, or an error for a length no valid frame has.
pub fn check(buf: &[u8]) -> Result<Option<usize>, ProtocolError> {
    let Some(prefix) = buf.get(..4) else {
        return Ok(None);
    };
    let len = i32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
    // At least the 4-byte header-length word must follow.
    if len < 4 || len as usize + 4 > MAX_FRAME {
        return Err(ProtocolError::FrameLength(len as i64));
    }
    let total = len as usize + 4;
    Ok((buf.len() >= total).then_some(total))
}

/// Takes one whole frame off the front of `buf` and decodes it; `Ok(None)` if the frame is
/// not complete yet. On error the connection should be closed: the stream is out of sync.
pub fn decode(buf: &mut BytesMut) -> Result<Option<RemotingCommand>, ProtocolError> {
    let Some(total) = check(buf)? else {
        return Ok(None);
    };
    let mut frame = buf.split_to(total).freeze();
    frame.advance(4);
    decode_frame_body(frame).map(Some)
}

/// Decodes a frame without its length prefix.
pub fn decode_frame_body(mut frame: Bytes) -> Result<RemotingCommand, ProtocolError> {
    if frame.len() < 4 {
        return Err(ProtocolError::Truncated("header length"));
    }
    let word = frame.get_u32();
    let codec = match word >> 24 {
        0 => HeaderCodec::Json,
        1 => HeaderCodec::RocketMq,
        t => return Err(ProtocolError::SerializeType(t as u8)),
    };
    let header_len = (word & 0x00FF_FFFF) as usize;
    if header_len > frame.len() {
        return Err(ProtocolError::HeaderLength {
            header: header_len,
            frame: frame.len(),
        });
    }
    let header = frame.split_to(header_len);
    let mut cmd = RemotingCommand::decode_header(codec, header)?;
    cmd.body = frame;
    Ok(cmd)
}

/// Appends the encoded frame of `cmd` to `out` (one buffer per response: one write).
pub fn encode(cmd: &RemotingCommand, out: &mut BytesMut) {
    let start = out.len();
    out.extend_from_slice(&[0u8; 8]);
    cmd.encode_header(out);
    let header_len = out.len() - start - 8;
    out.extend_from_slice(&cmd.body);
    let length = (out.len() - start - 4) as u32;
    let word = ((cmd.codec as u32) << 24) | (header_len as u32 & 0x00FF_FFFF);
    out[start..start + 4].copy_from_slice(&length.to_be_bytes());
    out[start + 4..start + 8].copy_from_slice(&word.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::command::HeaderCodec;
    use proptest::prelude::*;

    #[test]
    fn need_more_bytes_is_not_an_error() {
        assert_eq!(check(&[]).unwrap(), None);
        assert_eq!(check(&[0, 0, 0]).unwrap(), None);
        assert_eq!(check(&[0, 0, 0, 8, 0, 0]).unwrap(), None);
    }

    #[test]
    fn absurd_lengths_are_errors_before_any_allocation() {
        // A 2 GiB prefix.
        assert!(check(&[0x7F, 0xFF, 0xFF, 0xFF]).is_err());
        assert!(check(&[0x80, 0, 0, 0]).is_err(), "negative");
        assert!(
            check(&[0, 0, 0, 3]).is_err(),
            "shorter than the header word"
        );
        let just_over = ((MAX_FRAME - 4 + 1) as u32).to_be_bytes();
        assert!(check(&just_over).is_err());
        let at_limit = ((MAX_FRAME - 4) as u32).to_be_bytes();
        assert_eq!(check(&at_limit).unwrap(), None);
    }

    #[test]
    fn golden_minimal_json_request() {
        // Reference §1.3 minimal request.
        let header = br#"{"code":105,"extFields":{"topic":"T"},"flag":0,"language":"JAVA","opaque":7,"version":479}"#;
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&((4 + header.len()) as u32).to_be_bytes());
        buf.extend_from_slice(&(header.len() as u32).to_be_bytes());
        buf.extend_from_slice(header);
        let cmd = decode(&mut buf).unwrap().unwrap();
        assert!(buf.is_empty());
        assert_eq!(cmd.code, 105);
        assert_eq!(cmd.opaque, 7);
        assert_eq!(cmd.version, 479);
        assert_eq!(cmd.codec, HeaderCodec::Json);
        assert_eq!(cmd.ext("topic"), Some("T"));
        assert!(cmd.body.is_empty());
    }

    #[test]
    fn round_trip_both_codecs_with_body() {
        for codec in [HeaderCodec::Json, HeaderCodec::RocketMq] {
            let mut cmd = RemotingCommand::request(310, codec);
            cmd.opaque = 42;
            cmd.remark = Some("hi \"there\"\n".into());
            cmd.set_ext("a", "1");
            cmd.set_ext("b", "x\u{1}y");
            cmd.body = Bytes::from_static(b"\x00\x01body");
            let mut out = BytesMut::new();
            encode(&cmd, &mut out);
            encode(&cmd, &mut out);
            let a = decode(&mut out).unwrap().unwrap();
            let b = decode(&mut out).unwrap().unwrap();
            assert!(out.is_empty());
            assert_eq!(a, cmd);
            assert_eq!(b, cmd);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        /// The decoder never panics on arbitrary bytes and never asks for more than the limit.
        #[test]
        fn decode_never_panics(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut buf = BytesMut::from(&data[..]);
            while let Ok(Some(_)) = decode(&mut buf) {}
        }

        /// Well-framed garbage headers: both codec bytes, any header bytes.
        #[test]
        fn header_garbage_never_panics(codec in 0u8..3, header in proptest::collection::vec(any::<u8>(), 0..300),
                                       body in proptest::collection::vec(any::<u8>(), 0..16)) {
            let mut buf = BytesMut::new();
            let len = 4 + header.len() + body.len();
            buf.extend_from_slice(&(len as u32).to_be_bytes());
            buf.extend_from_slice(&(((codec as u32) << 24) | header.len() as u32).to_be_bytes());
            buf.extend_from_slice(&header);
            buf.extend_from_slice(&body);
            let _ = decode(&mut buf);
        }
    }
}
