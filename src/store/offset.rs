//! Offset value types. A [`CommitLogOffset`] names a shard and a byte position in that shard's
//! commitlog, so a consume-queue entry or an offset msgId resolves to exactly one record.

use std::fmt;

/// Bits of a commitlog offset below the shard id: 2^56 bytes (64 PiB) per shard.
pub const SHARD_SHIFT: u32 = 56;
/// Shard ids fit in 7 bits so the offset stays a non-negative Java `long`.
pub const MAX_SHARDS: usize = 128;
const POS_MASK: u64 = (1 << SHARD_SHIFT) - 1;

/// Index of a store shard (one glommio executor).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ShardId(u8);

impl ShardId {
    /// `None` when `id >= MAX_SHARDS`.
    pub fn new(id: usize) -> Option<ShardId> {
        (id < MAX_SHARDS).then_some(ShardId(id as u8))
    }
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A global commitlog offset: shard id in the high bits, byte position in that shard's log
/// below. This is the value written in PHYSICALOFFSET, consume-queue entries and msgIds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CommitLogOffset(u64);

impl CommitLogOffset {
    pub fn new(shard: ShardId, pos: u64) -> CommitLogOffset {
        debug_assert!(pos <= POS_MASK, "position {pos} overflows a shard");
        CommitLogOffset(((shard.0 as u64) << SHARD_SHIFT) | (pos & POS_MASK))
    }
    pub fn shard(self) -> ShardId {
        ShardId((self.0 >> SHARD_SHIFT) as u8)
    }
    /// Byte position inside the shard's commitlog.
    pub fn pos(self) -> u64 {
        self.0 & POS_MASK
    }
    /// The value as Java sees it (a non-negative long).
    pub fn as_i64(self) -> i64 {
        self.0 as i64
    }
    /// `None` for negative values (never produced by this store).
    pub fn from_i64(v: i64) -> Option<CommitLogOffset> {
        u64::try_from(v).ok().map(CommitLogOffset)
    }
}

impl fmt::Display for CommitLogOffset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.shard(), self.pos())
    }
}

/// 20-digit zero-padded decimal file name of a byte offset (upstream `offset2FileName`).
pub fn file_name(offset: u64) -> String {
    format!("{offset:020}")
}

/// Parses a 20-digit file name back to its offset; `None` for anything else.
pub fn parse_file_name(name: &str) -> Option<u64> {
    if name.len() != 20 || !name.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    name.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn file_names_both_ways() {
        assert_eq!(file_name(0), "00000000000000000000");
        assert_eq!(file_name(1_073_741_824), "00000000001073741824");
        assert_eq!(parse_file_name("00000000001073741824"), Some(1_073_741_824));
        assert_eq!(parse_file_name("1073741824"), None);
        assert_eq!(parse_file_name("0000000000107374182x"), None);
        assert_eq!(parse_file_name("00000000001073741824.tmp"), None);
    }

    #[test]
    fn shard_bound() {
        assert!(ShardId::new(MAX_SHARDS - 1).is_some());
        assert!(ShardId::new(MAX_SHARDS).is_none());
        let top = CommitLogOffset::new(ShardId::new(127).unwrap(), POS_MASK);
        assert!(top.as_i64() > 0);
    }

    proptest! {
        #[test]
        fn offset_round_trip(shard in 0usize..MAX_SHARDS, pos in 0u64..=POS_MASK) {
            let s = ShardId::new(shard).unwrap();
            let o = CommitLogOffset::new(s, pos);
            prop_assert_eq!(o.shard(), s);
            prop_assert_eq!(o.pos(), pos);
            prop_assert_eq!(CommitLogOffset::from_i64(o.as_i64()), Some(o));
        }
    }
}
