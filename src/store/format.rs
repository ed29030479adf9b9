//! Fixed-size on-disk formats besides the commitlog record: the 20-byte consume-queue entry
//! (reference §7.2), the index header and entry (§7.3) and the checkpoint (§7.4). Each has
//! `SIZE`, `encode` and `decode`; decoders take untrusted bytes.

/// Reads a big-endian integer at `at`, or `None` when out of bounds.
fn be<const N: usize>(b: &[u8], at: usize) -> Option<[u8; N]> {
    let mut a = [0u8; N];
    a.copy_from_slice(b.get(at..at.checked_add(N)?)?);
    Some(a)
}

/// One consume-queue entry: commitlog offset (8), record size (4), tag hash code (8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CqEntry {
    pub offset: i64,
    pub size: i32,
    pub tags_code: i64,
}

impl CqEntry {
    pub const SIZE: usize = 20;
    /// Filler for leading slots of a queue that starts past 0 (upstream `(0, MAX_INT, 0)`).
    pub const BLANK: CqEntry = CqEntry {
        offset: 0,
        size: i32::MAX,
        tags_code: 0,
    };

    pub fn encode(&self) -> [u8; 20] {
        let mut b = [0u8; 20];
        b[0..8].copy_from_slice(&self.offset.to_be_bytes());
        b[8..12].copy_from_slice(&self.size.to_be_bytes());
        b[12..20].copy_from_slice(&self.tags_code.to_be_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Option<CqEntry> {
        Some(CqEntry {
            offset: i64::from_be_bytes(be(b, 0)?),
            size: i32::from_be_bytes(be(b, 8)?),
            tags_code: i64::from_be_bytes(be(b, 12)?),
        })
    }

    /// An entry that points at a record (not blank, not zero-filled).
    pub fn is_valid(&self) -> bool {
        self.offset >= 0 && self.size > 0 && self.size != i32::MAX
    }
}

/// IndexFile header (40 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IndexHeader {
    pub begin_timestamp: i64,
    pub end_timestamp: i64,
    pub begin_phy_offset: i64,
    pub end_phy_offset: i64,
    pub hash_slot_count: i32,
    /// Starts at 1: entry ordinal 0 is never used.
    pub index_count: i32,
}

impl IndexHeader {
    pub const SIZE: usize = 40;

    pub fn encode(&self) -> [u8; 40] {
        let mut b = [0u8; 40];
        b[0..8].copy_from_slice(&self.begin_timestamp.to_be_bytes());
        b[8..16].copy_from_slice(&self.end_timestamp.to_be_bytes());
        b[16..24].copy_from_slice(&self.begin_phy_offset.to_be_bytes());
        b[24..32].copy_from_slice(&self.end_phy_offset.to_be_bytes());
        b[32..36].copy_from_slice(&self.hash_slot_count.to_be_bytes());
        b[36..40].copy_from_slice(&self.index_count.to_be_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Option<IndexHeader> {
        Some(IndexHeader {
            begin_timestamp: i64::from_be_bytes(be(b, 0)?),
            end_timestamp: i64::from_be_bytes(be(b, 8)?),
            begin_phy_offset: i64::from_be_bytes(be(b, 16)?),
            end_phy_offset: i64::from_be_bytes(be(b, 24)?),
            hash_slot_count: i32::from_be_bytes(be(b, 32)?),
            index_count: i32::from_be_bytes(be(b, 36)?),
        })
    }
}

/// One index entry: key hash, commitlog offset, seconds since the file's begin, previous
/// ordinal in the same slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    pub key_hash: i32,
    pub phy_offset: i64,
    pub time_diff: i32,
    pub prev_index: i32,
}

impl IndexEntry {
    pub const SIZE: usize = 20;

    pub fn encode(&self) -> [u8; 20] {
        let mut b = [0u8; 20];
        b[0..4].copy_from_slice(&self.key_hash.to_be_bytes());
        b[4..12].copy_from_slice(&self.phy_offset.to_be_bytes());
        b[12..16].copy_from_slice(&self.time_diff.to_be_bytes());
        b[16..20].copy_from_slice(&self.prev_index.to_be_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Option<IndexEntry> {
        Some(IndexEntry {
            key_hash: i32::from_be_bytes(be(b, 0)?),
            phy_offset: i64::from_be_bytes(be(b, 4)?),
            time_diff: i32::from_be_bytes(be(b, 12)?),
            prev_index: i32::from_be_bytes(be(b, 16)?),
        })
    }
}

/// Index geometry: where slots and entries live in a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexLayout {
    pub slots: u32,
    pub max_entries: u32,
}

impl IndexLayout {
    /// `40 + slots×4 + maxIndex×20` (420,000,040 with the defaults).
    pub fn file_size(&self) -> u64 {
        IndexHeader::SIZE as u64 + self.slots as u64 * 4 + self.max_entries as u64 * 20
    }
    pub fn slot_pos(&self, slot: u32) -> u64 {
        IndexHeader::SIZE as u64 + slot as u64 * 4
    }
    pub fn entry_pos(&self, ordinal: u32) -> u64 {
        IndexHeader::SIZE as u64 + self.slots as u64 * 4 + ordinal as u64 * 20
    }
    /// Slot of a key hash.
    pub fn slot_of(&self, key_hash: i32) -> u32 {
        key_hash as u32 % self.slots
    }
}

/// Index key hash: `abs(hashCode(topic + "#" + key))`, with `Integer.MIN_VALUE` mapped to 0.
pub fn index_key_hash(topic: &[u8], key: &[u8]) -> i32 {
    index_key_hash_from(index_key_prefix(topic), key)
}

/// The Java hash of `topic#`, which every index key of the topic continues: computed once per
/// topic, not once per key.
pub fn index_key_prefix(topic: &[u8]) -> i32 {
    use crate::message::java_hash_continue_bytes;
    java_hash_continue_bytes(java_hash_continue_bytes(0, topic), b"#")
}

/// [`index_key_hash`] of `key` under a topic's [`index_key_prefix`].
pub fn index_key_hash_from(prefix: i32, key: &[u8]) -> i32 {
    let h = crate::message::java_hash_continue_bytes(prefix, key);
    if h == i32::MIN {
        0
    } else {
        h.abs()
    }
}

/// The checkpoint file (4 KiB). The first 40 bytes are upstream's layout; from byte 64 CoreMQ
/// keeps, per shard, the positions recovery starts from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Checkpoint {
    pub physic_msg_timestamp: i64,
    pub logics_msg_timestamp: i64,
    pub index_msg_timestamp: i64,
    pub master_flushed_offset: i64,
    pub confirm_phy_offset: i64,
    /// One entry per shard; its length is the store's shard count.
    pub shards: Vec<ShardCheckpoint>,
}

/// Per-shard recovery points (shard-local commitlog positions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ShardCheckpoint {
    /// Everything below is durable in the commitlog.
    pub commitlog: u64,
    /// Consume-queue entries for every record below are durable.
    pub consume_queue: u64,
    /// Index entries for every record below are durable.
    pub index: u64,
}

const CHECKPOINT_MAGIC: &[u8; 4] = b"CMQ1";
const SHARD_TABLE_AT: usize = 64;

impl Checkpoint {
    pub const SIZE: usize = 4096;

    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; Self::SIZE];
        b[0..8].copy_from_slice(&self.physic_msg_timestamp.to_be_bytes());
        b[8..16].copy_from_slice(&self.logics_msg_timestamp.to_be_bytes());
        b[16..24].copy_from_slice(&self.index_msg_timestamp.to_be_bytes());
        b[24..32].copy_from_slice(&self.master_flushed_offset.to_be_bytes());
        b[32..40].copy_from_slice(&self.confirm_phy_offset.to_be_bytes());
        b[40..44].copy_from_slice(CHECKPOINT_MAGIC);
        b[44..48].copy_from_slice(&(self.shards.len() as u32).to_be_bytes());
        for (i, s) in self.shards.iter().enumerate() {
            let at = Self::shard_pos(i);
            b[at..at + 8].copy_from_slice(&s.commitlog.to_be_bytes());
            b[at + 8..at + 16].copy_from_slice(&s.consume_queue.to_be_bytes());
            b[at + 16..at + 24].copy_from_slice(&s.index.to_be_bytes());
        }
        b
    }

    /// Byte position of shard `i`'s entry.
    pub fn shard_pos(i: usize) -> usize {
        SHARD_TABLE_AT + i * 24
    }

    /// `None` when the bytes are not a CoreMQ checkpoint.
    pub fn decode(b: &[u8]) -> Option<Checkpoint> {
        if b.get(40..44)? != CHECKPOINT_MAGIC {
            return None;
        }
        let n = u32::from_be_bytes(be(b, 44)?) as usize;
        if n > super::offset::MAX_SHARDS {
            return None;
        }
        let mut shards = Vec::with_capacity(n);
        for i in 0..n {
            let at = Self::shard_pos(i);
            shards.push(ShardCheckpoint {
                commitlog: u64::from_be_bytes(be(b, at)?),
                consume_queue: u64::from_be_bytes(be(b, at + 8)?),
                index: u64::from_be_bytes(be(b, at + 16)?),
            });
        }
        Some(Checkpoint {
            physic_msg_timestamp: i64::from_be_bytes(be(b, 0)?),
            logics_msg_timestamp: i64::from_be_bytes(be(b, 8)?),
            index_msg_timestamp: i64::from_be_bytes(be(b, 16)?),
            master_flushed_offset: i64::from_be_bytes(be(b, 24)?),
            confirm_phy_offset: i64::from_be_bytes(be(b, 32)?),
            shards,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn cq_entry_golden() {
        let e = CqEntry {
            offset: 0x0102030405060708,
            size: 0x0A0B0C0D,
            tags_code: -1,
        };
        let b = e.encode();
        assert_eq!(&b[0..8], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(&b[8..12], &[0x0A, 0x0B, 0x0C, 0x0D]);
        assert_eq!(&b[12..20], &[0xFF; 8]);
        assert!(!CqEntry::BLANK.is_valid());
        assert!(!CqEntry::decode(&[0u8; 20]).unwrap().is_valid());
    }

    #[test]
    fn truncated_formats_are_none() {
        assert!(CqEntry::decode(&[0u8; 19]).is_none());
        assert!(IndexHeader::decode(&[0u8; 39]).is_none());
        assert!(IndexEntry::decode(&[0u8; 19]).is_none());
        assert!(Checkpoint::decode(&[0u8; 4096]).is_none());
        assert!(Checkpoint::decode(&[0u8; 10]).is_none());
        let mut garbage = vec![0xFFu8; 4096];
        garbage[40..44].copy_from_slice(b"CMQ1");
        assert!(Checkpoint::decode(&garbage).is_none(), "absurd shard count");
    }

    #[test]
    fn index_defaults_match_upstream_size() {
        let l = IndexLayout {
            slots: 5_000_000,
            max_entries: 20_000_000,
        };
        assert_eq!(l.file_size(), 420_000_040);
        assert_eq!(l.entry_pos(1), 40 + 20_000_000 + 20);
    }

    #[test]
    fn index_key_hash_is_abs_java_hash() {
        // hashCode("TopicTest#key1") = -1655984460
        assert_eq!(index_key_hash(b"TopicTest", b"key1"), 1655984460);
    }

    proptest! {
        #[test]
        fn cq_round_trip(offset in any::<i64>(), size in any::<i32>(), tags in any::<i64>()) {
            let e = CqEntry { offset, size, tags_code: tags };
            prop_assert_eq!(CqEntry::decode(&e.encode()), Some(e));
        }

        #[test]
        fn index_round_trip(a in any::<i64>(), b in any::<i64>(), c in any::<i64>(), d in any::<i64>(),
                            e in any::<i32>(), f in any::<i32>(), g in any::<i32>()) {
            let h = IndexHeader { begin_timestamp: a, end_timestamp: b, begin_phy_offset: c,
                end_phy_offset: d, hash_slot_count: e, index_count: f };
            prop_assert_eq!(IndexHeader::decode(&h.encode()), Some(h));
            let en = IndexEntry { key_hash: e, phy_offset: a, time_diff: f, prev_index: g };
            prop_assert_eq!(IndexEntry::decode(&en.encode()), Some(en));
        }

        #[test]
        fn index_arithmetic(slots in 1u32..10_000_000, max in 2u32..30_000_000, hash in any::<i32>(), ord in 0u32..30_000_000) {
            let l = IndexLayout { slots, max_entries: max };
            let s = l.slot_of(hash);
            prop_assert!(s < slots);
            prop_assert!(l.slot_pos(s) + 4 <= l.entry_pos(0));
            if ord < max {
                prop_assert!(l.entry_pos(ord) + 20 <= l.file_size());
            }
        }

        #[test]
        fn cq_arithmetic(per_file in 1u64..1_000_000, offset in 0u64..(1u64 << 40)) {
            // A logical offset lands in exactly one file, at a position that is a whole entry.
            let file_base = offset / per_file * per_file;
            let pos = (offset - file_base) * CqEntry::SIZE as u64;
            prop_assert!(pos + CqEntry::SIZE as u64 <= per_file * CqEntry::SIZE as u64);
            prop_assert_eq!(file_base * 20 + pos, offset * 20);
        }

        #[test]
        fn checkpoint_round_trip(n in 0usize..128, v in any::<u64>()) {
            let cp = Checkpoint { physic_msg_timestamp: v as i64, shards: (0..n).map(|i| ShardCheckpoint {
                commitlog: v.wrapping_add(i as u64), consume_queue: v / 2, index: v / 3 }).collect(), ..Default::default() };
            prop_assert_eq!(Checkpoint::decode(&cp.encode()), Some(cp));
        }
    }
}
