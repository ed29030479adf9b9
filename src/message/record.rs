//! The commitlog record (reference §5.1), which is also the per-message layout of a pull
//! response body.
//!
//! ```text
//! TOTALSIZE i32 | MAGICCODE i32 | BODYCRC i32 | QUEUEID i32 | FLAG i32 | QUEUEOFFSET i64
//! PHYSICALOFFSET i64 | SYSFLAG i32 | BORNTIMESTAMP i64 | BORNHOST 4|16 + i32 port
//! STORETIMESTAMP i64 | STOREHOST 4|16 + i32 port | RECONSUMETIMES i32 | PREPARED_TX_OFFSET i64
//! BODYLEN i32 + body | TOPICLEN i8 (v1) or i16 (v2) + topic | PROPLEN i16 + properties
//! ```
//!
//! All integers are big-endian. [`RecordView::parse`] reads untrusted bytes: every length is
//! bounds-checked before slicing and nothing is allocated, so a garbage buffer gives an error.

use bytes::{BufMut, Bytes};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::sysflag::{BORNHOST_V6, STOREHOSTADDRESS_V6};

/// MAGICCODE of a v1 record (one-byte topic length).
pub const MAGIC_V1: i32 = 0xDAA3_20A7_u32 as i32;
/// MAGICCODE of a v2 record (two-byte topic length).
pub const MAGIC_V2: i32 = 0xDAA3_20AB_u32 as i32;
/// MAGICCODE of the blank record that pads the end of a segment (reference §5.2).
pub const BLANK_MAGIC: i32 = 0xCBD4_3194_u32 as i32;
/// Bytes of the blank record actually written at the end of a segment.
pub const BLANK_RECORD_WRITTEN: usize = 8;
/// Fixed part of a record with IPv4 hosts, up to and including PREPARED_TX_OFFSET.
pub const FIXED_PART_V4: usize = 84;
/// Smallest valid record: IPv4 hosts, v1, empty body, topic and properties.
pub const MIN_RECORD_SIZE: usize = FIXED_PART_V4 + 4 + 1 + 2;
/// Topics longer than this need the v2 record layout.
pub const MAX_V1_TOPIC_LEN: usize = 127;
/// The properties length is an i16 on disk.
pub const MAX_PROPERTIES_LEN: usize = i16::MAX as usize;

/// Position of STORETIMESTAMP when the born host is IPv4.
pub const STORE_TIMESTAMP_POS_V4: usize = 56;

/// Why bytes are not a valid record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record truncated: need {need} bytes, have {have}")]
    Truncated { need: usize, have: usize },
    #[error("bad magic code {0:#010x}")]
    BadMagic(u32),
    #[error("blank end-of-segment record")]
    Blank,
    #[error("bad TOTALSIZE {0}")]
    BadTotalSize(i64),
    #[error("field {field} has bad length {len}")]
    BadLength { field: &'static str, len: i64 },
    #[error("TOTALSIZE {declared} disagrees with the fields' sum {computed}")]
    SizeMismatch { declared: usize, computed: usize },
    #[error("body CRC mismatch: stored {stored:#x}, computed {computed:#x}")]
    CrcMismatch { stored: u32, computed: u32 },
}

/// Why a record cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("topic length {0} exceeds 32767 bytes")]
    TopicTooLong(usize),
    #[error("properties length {0} exceeds the 32KB limit")]
    PropertiesTooLong(usize),
    #[error("body length {0} exceeds i32")]
    BodyTooLong(usize),
}

/// The fixed-size fields of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordMeta {
    pub queue_id: i32,
    pub flag: i32,
    pub queue_offset: i64,
    pub physical_offset: i64,
    /// On encode the two host-v6 bits are derived from the addresses.
    pub sys_flag: i32,
    pub born_timestamp: i64,
    pub born_host: SocketAddr,
    pub store_timestamp: i64,
    pub store_host: SocketAddr,
    pub reconsume_times: i32,
    pub prepared_transaction_offset: i64,
}

/// A decoded record whose variable parts share the buffer they were read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageRecord {
    pub meta: RecordMeta,
    pub body_crc: u32,
    pub body: Bytes,
    pub topic: Bytes,
    pub properties: Bytes,
}

/// Borrowed view of one record, as parsed from a byte slice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordView<'a> {
    pub total_size: usize,
    pub magic: i32,
    pub meta: RecordMeta,
    pub body_crc: u32,
    pub body: &'a [u8],
    pub topic: &'a [u8],
    pub properties: &'a [u8],
}

fn host_len(addr: &SocketAddr) -> usize {
    match addr.ip() {
        IpAddr::V4(_) => 8,
        IpAddr::V6(_) => 20,
    }
}

/// Length of the encoded record (reference §5.1 length formula).
pub fn encoded_len(
    body_len: usize,
    topic_len: usize,
    props_len: usize,
    born: &SocketAddr,
    store: &SocketAddr,
) -> usize {
    let topic_len_width = if topic_len > MAX_V1_TOPIC_LEN { 2 } else { 1 };
    FIXED_PART_V4 - 16
        + host_len(born)
        + host_len(store)
        + 4
        + body_len
        + topic_len_width
        + topic_len
        + 2
        + props_len
}

fn put_host(out: &mut impl BufMut, addr: &SocketAddr) {
    match addr.ip() {
        IpAddr::V4(ip) => out.put_slice(&ip.octets()),
        IpAddr::V6(ip) => out.put_slice(&ip.octets()),
    }
    out.put_i32(addr.port() as i32);
}

/// Appends one record to `out` and returns its length. The body CRC is computed here.
/// v1 layout unless the topic is longer than 127 bytes (`autoMessageVersionOnTopicLen`).
pub fn encode(
    out: &mut impl BufMut,
    meta: &RecordMeta,
    body: &[u8],
    topic: &[u8],
    props: &[u8],
) -> Result<usize, EncodeError> {
    if topic.len() > i16::MAX as usize {
        return Err(EncodeError::TopicTooLong(topic.len()));
    }
    if props.len() > MAX_PROPERTIES_LEN {
        return Err(EncodeError::PropertiesTooLong(props.len()));
    }
    let len = encoded_len(
        body.len(),
        topic.len(),
        props.len(),
        &meta.born_host,
        &meta.store_host,
    );
    if i32::try_from(len).is_err() {
        return Err(EncodeError::BodyTooLong(body.len()));
    }
    let v2 = topic.len() > MAX_V1_TOPIC_LEN;
    let mut sys_flag = meta.sys_flag & !(BORNHOST_V6 | STOREHOSTADDRESS_V6);
    if meta.born_host.is_ipv6() {
        sys_flag |= BORNHOST_V6;
    }
    if meta.store_host.is_ipv6() {
        sys_flag |= STOREHOSTADDRESS_V6;
    }
    out.put_i32(len as i32);
    out.put_i32(if v2 { MAGIC_V2 } else { MAGIC_V1 });
    out.put_u32(super::body_crc(body));
    out.put_i32(meta.queue_id);
    out.put_i32(meta.flag);
    out.put_i64(meta.queue_offset);
    out.put_i64(meta.physical_offset);
    out.put_i32(sys_flag);
    out.put_i64(meta.born_timestamp);
    put_host(out, &meta.born_host);
    out.put_i64(meta.store_timestamp);
    put_host(out, &meta.store_host);
    out.put_i32(meta.reconsume_times);
    out.put_i64(meta.prepared_transaction_offset);
    out.put_i32(body.len() as i32);
    out.put_slice(body);
    if v2 {
        out.put_i16(topic.len() as i16);
    } else {
        out.put_u8(topic.len() as u8);
    }
    out.put_slice(topic);
    out.put_i16(props.len() as i16);
    out.put_slice(props);
    Ok(len)
}

/// A bounds-checked big-endian reader over a slice.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.checked_add(n).ok_or(DecodeError::Truncated {
            need: usize::MAX,
            have: self.buf.len(),
        })?;
        let s = self.buf.get(self.pos..end).ok_or(DecodeError::Truncated {
            need: end,
            have: self.buf.len(),
        })?;
        self.pos = end;
        Ok(s)
    }
    fn arr<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn i8(&mut self) -> Result<i8, DecodeError> {
        Ok(i8::from_be_bytes(self.arr()?))
    }
    fn i16(&mut self) -> Result<i16, DecodeError> {
        Ok(i16::from_be_bytes(self.arr()?))
    }
    fn i32(&mut self) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.arr()?))
    }
    fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.arr()?))
    }
    fn host(&mut self, v6: bool) -> Result<SocketAddr, DecodeError> {
        let ip = if v6 {
            IpAddr::V6(Ipv6Addr::from(self.arr::<16>()?))
        } else {
            IpAddr::V4(Ipv4Addr::from(self.arr::<4>()?))
        };
        let port = self.i32()?;
        // Java writes the port as an int; anything outside u16 is corruption.
        let port = u16::try_from(port).map_err(|_| DecodeError::BadLength {
            field: "port",
            len: port as i64,
        })?;
        Ok(SocketAddr::new(ip, port))
    }
}

/// Reads TOTALSIZE and MAGICCODE, the first 8 bytes of any record (including a blank one).
pub fn peek_header(buf: &[u8]) -> Result<(i32, i32), DecodeError> {
    let mut r = Reader { buf, pos: 0 };
    Ok((r.i32()?, r.i32()?))
}

impl<'a> RecordView<'a> {
    /// Parses the record at the start of `buf` (which may hold more bytes after it). Checks
    /// magic, every length, and that TOTALSIZE equals the sum of the fields; does not check
    /// the body CRC (see [`RecordView::verify_crc`]).
    pub fn parse(buf: &'a [u8]) -> Result<RecordView<'a>, DecodeError> {
        let mut r = Reader { buf, pos: 0 };
        let total = r.i32()?;
        let magic = r.i32()?;
        match magic {
            MAGIC_V1 | MAGIC_V2 => {}
            BLANK_MAGIC => return Err(DecodeError::Blank),
            m => return Err(DecodeError::BadMagic(m as u32)),
        }
        let total = usize::try_from(total)
            .ok()
            .filter(|t| *t >= MIN_RECORD_SIZE)
            .ok_or(DecodeError::BadTotalSize(total as i64))?;
        if total > buf.len() {
            return Err(DecodeError::Truncated {
                need: total,
                have: buf.len(),
            });
        }
        // Parse only within the declared record so trailing bytes can't be mistaken for it.
        let mut r = Reader {
            buf: &buf[..total],
            pos: 8,
        };
        let body_crc = r.i32()? as u32;
        let queue_id = r.i32()?;
        let flag = r.i32()?;
        let queue_offset = r.i64()?;
        let physical_offset = r.i64()?;
        let sys_flag = r.i32()?;
        let born_timestamp = r.i64()?;
        let born_host = r.host(sys_flag & BORNHOST_V6 != 0)?;
        let store_timestamp = r.i64()?;
        let store_host = r.host(sys_flag & STOREHOSTADDRESS_V6 != 0)?;
        let reconsume_times = r.i32()?;
        let prepared_transaction_offset = r.i64()?;
        let body_len = r.i32()?;
        let body_len = usize::try_from(body_len).map_err(|_| DecodeError::BadLength {
            field: "body",
            len: body_len as i64,
        })?;
        let body = r.take(body_len)?;
        let topic_len = if magic == MAGIC_V1 {
            r.i8()? as i64
        } else {
            r.i16()? as i64
        };
        let topic_len = usize::try_from(topic_len).map_err(|_| DecodeError::BadLength {
            field: "topic",
            len: topic_len,
        })?;
        let topic = r.take(topic_len)?;
        let props_len = r.i16()?;
        let props_len = usize::try_from(props_len).map_err(|_| DecodeError::BadLength {
            field: "properties",
            len: props_len as i64,
        })?;
        let properties = r.take(props_len)?;
        if r.pos != total {
            return Err(DecodeError::SizeMismatch {
                declared: total,
                computed: r.pos,
            });
        }
        Ok(RecordView {
            total_size: total,
            magic,
            meta: RecordMeta {
                queue_id,
                flag,
                queue_offset,
                physical_offset,
                sys_flag,
                born_timestamp,
                born_host,
                store_timestamp,
                store_host,
                reconsume_times,
                prepared_transaction_offset,
            },
            body_crc,
            body,
            topic,
            properties,
        })
    }

    /// Checks BODYCRC against the body.
    pub fn verify_crc(&self) -> Result<(), DecodeError> {
        let computed = super::body_crc(self.body);
        if computed != self.body_crc {
            return Err(DecodeError::CrcMismatch {
                stored: self.body_crc,
                computed,
            });
        }
        Ok(())
    }

    /// The value of a property, if present.
    pub fn property(&self, name: &str) -> Option<&'a [u8]> {
        super::properties::get(self.properties, name)
    }
}

impl MessageRecord {
    /// Decodes the record at the start of `buf`, sharing `buf`'s memory. Verifies the body CRC.
    pub fn decode(buf: &Bytes) -> Result<MessageRecord, DecodeError> {
        let v = RecordView::parse(buf)?;
        v.verify_crc()?;
        let base = buf.as_ptr() as usize;
        let slice = |s: &[u8]| {
            let start = s.as_ptr() as usize - base;
            buf.slice(start..start + s.len())
        };
        Ok(MessageRecord {
            meta: v.meta,
            body_crc: v.body_crc,
            body: slice(v.body),
            topic: slice(v.topic),
            properties: slice(v.properties),
        })
    }

    /// Encodes into a fresh buffer (tests and tools; the store encodes in place).
    pub fn to_bytes(&self) -> Result<Bytes, EncodeError> {
        let mut out = Vec::with_capacity(encoded_len(
            self.body.len(),
            self.topic.len(),
            self.properties.len(),
            &self.meta.born_host,
            &self.meta.store_host,
        ));
        encode(
            &mut out,
            &self.meta,
            &self.body,
            &self.topic,
            &self.properties,
        )?;
        Ok(out.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn meta(born: SocketAddr, store: SocketAddr) -> RecordMeta {
        RecordMeta {
            queue_id: 3,
            flag: 0,
            queue_offset: 7,
            physical_offset: 4096,
            sys_flag: 0,
            born_timestamp: 1_700_000_000_000,
            born_host: born,
            store_timestamp: 1_700_000_000_123,
            store_host: store,
            reconsume_times: 0,
            prepared_transaction_offset: 0,
        }
    }

    #[test]
    fn golden_minimal_v1_record() {
        let m = meta(
            "10.0.0.1:50000".parse().unwrap(),
            "127.0.0.1:10911".parse().unwrap(),
        );
        let mut out = Vec::new();
        let n = encode(&mut out, &m, b"", b"T", b"").unwrap();
        assert_eq!(n, MIN_RECORD_SIZE + 1);
        assert_eq!(out.len(), n);
        assert_eq!(&out[0..4], &(92i32).to_be_bytes());
        assert_eq!(&out[4..8], &[0xDA, 0xA3, 0x20, 0xA7]);
        // CRC32 of the empty body is 0.
        assert_eq!(&out[8..12], &[0, 0, 0, 0]);
        assert_eq!(&out[20..28], &7i64.to_be_bytes());
        assert_eq!(&out[28..36], &4096i64.to_be_bytes());
        assert_eq!(&out[48..52], &[10, 0, 0, 1]);
        assert_eq!(&out[52..56], &50000i32.to_be_bytes());
        assert_eq!(
            &out[STORE_TIMESTAMP_POS_V4..STORE_TIMESTAMP_POS_V4 + 8],
            &1_700_000_000_123i64.to_be_bytes()
        );
        assert_eq!(&out[64..68], &[127, 0, 0, 1]);
        assert_eq!(&out[84..88], &[0, 0, 0, 0]); // body length
        assert_eq!(out[88], 1); // topic length, one byte
        assert_eq!(out[89], b'T');
        assert_eq!(&out[90..92], &[0, 0]);
    }

    #[test]
    fn ipv6_hosts_add_12_bytes_each_and_set_flags() {
        let m = meta("[::1]:1".parse().unwrap(), "[::2]:2".parse().unwrap());
        let mut out = Vec::new();
        let n = encode(&mut out, &m, b"x", b"T", b"").unwrap();
        assert_eq!(n, MIN_RECORD_SIZE + 1 + 1 + 24);
        let v = RecordView::parse(&out).unwrap();
        assert_eq!(v.meta.sys_flag & 0x30, 0x30);
        assert_eq!(v.meta.born_host, m.born_host);
        assert_eq!(v.meta.store_host, m.store_host);
    }

    #[test]
    fn long_topic_uses_v2() {
        let m = meta("1.2.3.4:5".parse().unwrap(), "1.2.3.4:6".parse().unwrap());
        let topic = vec![b'a'; 200];
        let mut out = Vec::new();
        encode(&mut out, &m, b"b", &topic, b"").unwrap();
        let v = RecordView::parse(&out).unwrap();
        assert_eq!(v.magic, MAGIC_V2);
        assert_eq!(v.topic, &topic[..]);
    }

    #[test]
    fn truncated_and_garbage_bytes_are_errors() {
        let m = meta("1.2.3.4:5".parse().unwrap(), "1.2.3.4:6".parse().unwrap());
        let mut out = Vec::new();
        encode(&mut out, &m, b"hello", b"TopicTest", b"TAGS\x01A\x02").unwrap();
        for cut in 0..out.len() {
            assert!(RecordView::parse(&out[..cut]).is_err(), "cut at {cut}");
        }
        assert!(RecordView::parse(&[0xFF; 200]).is_err());
        let mut blank = vec![0u8; 8];
        blank[4..8].copy_from_slice(&BLANK_MAGIC.to_be_bytes());
        assert_eq!(RecordView::parse(&blank), Err(DecodeError::Blank));
    }

    #[test]
    fn flipped_body_byte_fails_crc() {
        let m = meta("1.2.3.4:5".parse().unwrap(), "1.2.3.4:6".parse().unwrap());
        let mut out = Vec::new();
        encode(&mut out, &m, b"hello", b"T", b"").unwrap();
        out[88] ^= 0x40;
        let b = Bytes::from(out);
        assert!(matches!(
            MessageRecord::decode(&b),
            Err(DecodeError::CrcMismatch { .. })
        ));
    }

    fn arb_host() -> impl Strategy<Value = SocketAddr> {
        prop_oneof![
            (any::<u32>(), any::<u16>())
                .prop_map(|(ip, p)| SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), p)),
            (any::<u128>(), any::<u16>())
                .prop_map(|(ip, p)| SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), p)),
        ]
    }

    fn arb_record() -> impl Strategy<Value = MessageRecord> {
        let meta = (
            any::<i32>(),
            any::<i32>(),
            any::<i64>(),
            any::<i64>(),
            any::<i32>(),
            any::<i64>(),
            arb_host(),
            any::<i64>(),
            arb_host(),
            any::<i32>(),
            any::<i64>(),
        );
        let body = prop_oneof![
            4 => proptest::collection::vec(any::<u8>(), 0..2048),
            1 => Just(Vec::new()),
            // The largest body the store accepts (maxMessageSize = 4 MiB).
            1 => Just(vec![0xA5u8; 4 * 1024 * 1024]),
        ];
        let topic = prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..=127),
            proptest::collection::vec(any::<u8>(), 128..400),
        ];
        let props = proptest::collection::vec(("[A-Z_]{1,12}", "[ -~]{1,40}"), 0..6);
        (meta, body, topic, props).prop_map(|(m, body, topic, props)| {
            let (queue_id, flag, qo, po, sf, bt, born, st, store, rt, pto) = m;
            let mut sys_flag = sf & !0x30;
            if born.is_ipv6() {
                sys_flag |= 0x10;
            }
            if store.is_ipv6() {
                sys_flag |= 0x20;
            }
            let props = crate::message::properties::encode(
                props.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            );
            MessageRecord {
                meta: RecordMeta {
                    queue_id,
                    flag,
                    queue_offset: qo,
                    physical_offset: po,
                    sys_flag,
                    born_timestamp: bt,
                    born_host: born,
                    store_timestamp: st,
                    store_host: store,
                    reconsume_times: rt,
                    prepared_transaction_offset: pto,
                },
                body_crc: crate::message::body_crc(&body),
                body: body.into(),
                topic: topic.into(),
                properties: props.into(),
            }
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn encode_decode_round_trip(rec in arb_record()) {
            let bytes = rec.to_bytes().unwrap();
            prop_assert_eq!(bytes.len(), encoded_len(rec.body.len(), rec.topic.len(),
                rec.properties.len(), &rec.meta.born_host, &rec.meta.store_host));
            let back = MessageRecord::decode(&bytes).unwrap();
            prop_assert_eq!(back, rec);
        }

        #[test]
        fn parse_never_panics_on_garbage(buf in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = RecordView::parse(&buf);
        }
    }
}
