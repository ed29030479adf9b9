//! Remoting frames (reference §1.1): `length i32 | serializeType<<24 | headerLen | header | body`.
//!
//! [`check`] is the cheap "is a whole frame here?" test that runs before any decoding or
//! allocation; it enforces the 16 MiB frame limit from the 4-byte prefix alone. "Need more
//! bytes" is a normal answer, not an error.

use bytes::{Buf, Bytes, BytesMut};

use super::command::{HeaderCodec, RemotingCommand};
use super::ProtocolError;
use crate::blocks::BlockPool;

/// Largest frame, counting the 4-byte prefix (`com.rocketmq.remoting.frameMaxLength`).
pub const MAX_FRAME: usize = 16 * 1024 * 1024;

/// Length of the complete frame at the start of `buf` (prefix included), `Ok(None)` if more
/// bytes are needed, or an error for a length no valid frame has.
pub fn check(buf: &[u8]) -> Result<Option<usize>, ProtocolError> {
    Ok(declared_len(buf)?.filter(|total| buf.len() >= *total))
}

/// Length the frame at the start of `buf` declares (prefix included), whole or not: `Ok(None)`
/// before its 4-byte prefix is here, an error for a length no valid frame has.
pub fn declared_len(buf: &[u8]) -> Result<Option<usize>, ProtocolError> {
    let Some(prefix) = buf.get(..4) else {
        return Ok(None);
    };
    let len = i32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
    // At least the 4-byte header-length word must follow.
    if len < 4 || len as usize + 4 > MAX_FRAME {
        return Err(ProtocolError::FrameLength(len as i64));
    }
    Ok(Some(len as usize + 4))
}

/// A connection's receive buffer: bytes are read straight into the memory frames are cut
/// from, instead of into a scratch chunk and then copied (one copy of every received byte;
/// 3-4 % of the broker's CPU with batches).
///
/// `pending` holds what was received and not decoded yet; `spare` is the rest of the same
/// block, zeroed once when the block is made (a read needs initialized bytes), and always
/// starts where `pending` ends, so a read joins `pending` without a copy. A new block is made
/// when the room left is short of [`ReadBuf::MIN_READ`] or of the rest of the pending frame;
/// only the partial frame in `pending` is copied into it. A declared length is only a claim:
/// the room offered for it grows with what has arrived (at most doubling), so a peer sending
/// bare 16 MiB prefixes costs a block per connection, not 16 MiB.
pub struct ReadBuf {
    pending: BytesMut,
    spare: BytesMut,
    /// Blocks of [`ReadBuf::BLOCK`] bytes: one whose frames are all dropped is taken again
    /// instead of a fresh zeroed block (zeroing was 2 % of the broker's time under batches).
    blocks: BlockPool,
}

impl Default for ReadBuf {
    fn default() -> Self {
        ReadBuf {
            pending: BytesMut::new(),
            spare: BytesMut::new(),
            blocks: BlockPool::new(Self::BLOCK, Self::KEPT_BLOCKS),
        }
    }
}

impl ReadBuf {
    /// Size of a fresh block (larger when one frame needs more).
    pub const BLOCK: usize = 64 * 1024;
    /// Least room offered to a read.
    pub const MIN_READ: usize = 4 * 1024;
    /// Blocks kept for reuse.
    const KEPT_BLOCKS: usize = 8;

    /// Room for the next read; an error if the pending frame declares an invalid length.
    pub fn spare(&mut self) -> Result<&mut [u8], ProtocolError> {
        let have = self.pending.len();
        let rest = declared_len(&self.pending)?.map_or(0, |total| total.saturating_sub(have));
        let need = rest.min(have.max(Self::BLOCK)).max(Self::MIN_READ);
        if self.spare.len() < need {
            let mut block = match have + need <= Self::BLOCK {
                true => self.block(),
                false => BytesMut::zeroed(have + need),
            };
            block[..have].copy_from_slice(&self.pending);
            self.pending = block.split_to(have);
            self.spare = block;
        }
        Ok(&mut self.spare[..])
    }

    /// A block of [`ReadBuf::BLOCK`] bytes: a kept one that nothing uses any more, if any.
    fn block(&mut self) -> BytesMut {
        let (mut b, reused) = self.blocks.take(|| BytesMut::zeroed(Self::BLOCK));
        if reused {
            // SAFETY: every kept block was made by `BytesMut::zeroed(BLOCK)` just above: all
            // of its bytes were initialized once, and bytes once initialized stay so.
            unsafe { b.set_len(Self::BLOCK) };
        }
        b
    }

    /// Marks the first `n` bytes of [`ReadBuf::spare`] as received.
    pub fn filled(&mut self, n: usize) {
        let got = self.spare.split_to(n.min(self.spare.len()));
        // Contiguous with `pending` (or `pending` is empty): no copy.
        self.pending.unsplit(got);
    }

    /// Received bytes not decoded yet; [`decode`] takes frames off their front.
    pub fn pending(&mut self) -> &mut BytesMut {
        &mut self.pending
    }
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

    #[test]
    fn read_buf_takes_a_block_again_once_its_frames_are_dropped() {
        // Frames of 40,000 bytes: a block of 64 KiB holds one and part of the next.
        let (cmds, wire) = frames(&[40_000; 12]);
        let mut rb = ReadBuf::default();
        let (mut at, mut held, mut served) = (0, Vec::new(), 0);
        let mut blocks = std::collections::HashSet::new();
        while at < wire.len() {
            let room = rb.spare().unwrap();
            let n = room.len().min(wire.len() - at);
            room[..n].copy_from_slice(&wire[at..at + n]);
            rb.filled(n);
            at += n;
            blocks.extend(rb.blocks.kept_starts());
            while let Some(c) = decode(rb.pending()).unwrap() {
                assert_eq!(c, cmds[served], "frame {served}");
                served += 1;
                // The first two frames are held; the rest are served and dropped.
                if served <= 2 {
                    held.push(c);
                }
            }
        }
        assert_eq!(served, cmds.len());
        assert_eq!(
            held,
            cmds[..2],
            "a held frame's block is never reused under it"
        );
        // 480 KB through 64 KiB blocks: 8 fresh ones without reuse.
        assert!(
            blocks.len() <= 4,
            "{} blocks for 12 frames of 40 KB",
            blocks.len()
        );
    }

    /// Frames of these body sizes, encoded back to back.
    fn frames(bodies: &[usize]) -> (Vec<RemotingCommand>, Vec<u8>) {
        let mut out = BytesMut::new();
        let cmds: Vec<RemotingCommand> = bodies
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let mut c = RemotingCommand::request(10, HeaderCodec::RocketMq);
                c.opaque = i as i32;
                c.body = Bytes::from(vec![i as u8; n]);
                encode(&c, &mut out);
                c
            })
            .collect();
        (cmds, out.to_vec())
    }

    /// Feeds `wire` through a ReadBuf in reads of at most the given sizes (cycled).
    fn read_through(wire: &[u8], reads: &[usize]) -> Vec<RemotingCommand> {
        let mut rb = ReadBuf::default();
        let mut got = Vec::new();
        let (mut at, mut i) = (0, 0);
        while at < wire.len() {
            let room = rb.spare().unwrap();
            let n = reads[i % reads.len()].min(room.len()).min(wire.len() - at);
            room[..n].copy_from_slice(&wire[at..at + n]);
            rb.filled(n);
            at += n;
            i += 1;
            while let Some(c) = decode(rb.pending()).unwrap() {
                got.push(c);
            }
        }
        assert!(rb.pending().is_empty());
        got
    }

    #[test]
    fn read_buf_frames_across_reads_and_blocks() {
        // Small frames over many blocks, one frame larger than a block, split reads.
        let mut sizes = vec![1000; 300];
        sizes.insert(17, 3 * ReadBuf::BLOCK);
        sizes.push(0);
        let (cmds, wire) = frames(&sizes);
        for reads in [
            &[1usize][..],
            &[7, 4096, 13],
            &[ReadBuf::BLOCK],
            &[usize::MAX],
        ] {
            if reads == [1] {
                // Byte by byte only over the first frames (the large one makes it slow).
                let (c, w) = frames(&sizes[..10]);
                assert_eq!(read_through(&w, reads), c);
                continue;
            }
            assert_eq!(read_through(&wire, reads), cmds, "reads of {reads:?}");
        }
    }

    #[test]
    fn read_buf_room_grows_with_what_arrived_not_with_the_claim() {
        // A bare prefix claiming the largest frame gets one block, not 16 MiB.
        let mut rb = ReadBuf::default();
        let claim = ((MAX_FRAME - 4) as u32).to_be_bytes();
        rb.spare().unwrap()[..4].copy_from_slice(&claim);
        rb.filled(4);
        assert!(rb.spare().unwrap().len() <= ReadBuf::BLOCK);
        // As the frame arrives, the room offered at most doubles what is pending.
        let (_, wire) = frames(&[200_000]);
        let mut rb = ReadBuf::default();
        let mut at = 0;
        while at < wire.len() {
            let have = rb.pending().len();
            let room = rb.spare().unwrap();
            assert!(room.len() <= have.max(ReadBuf::BLOCK) + ReadBuf::BLOCK);
            let n = room.len().min(wire.len() - at);
            room[..n].copy_from_slice(&wire[at..at + n]);
            rb.filled(n);
            at += n;
        }
        assert!(decode(rb.pending()).unwrap().is_some());
        // An invalid length is an error, not an allocation.
        let mut bad = ReadBuf::default();
        bad.spare().unwrap()[..4].copy_from_slice(&u32::MAX.to_be_bytes());
        bad.filled(4);
        assert!(bad.spare().is_err());
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
