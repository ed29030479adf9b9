//! The batch body of SEND_BATCH_MESSAGE (reference §4.3, `MessageDecoder.encodeMessages`):
//! per message `TOTALSIZE i32 | MAGIC 0 | BODYCRC 0 | FLAG i32 | bodyLen i32 | body |
//! propLen i16 | properties`.

use bytes::{Buf, BufMut, Bytes};

/// One message of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchItem {
    pub flag: i32,
    pub body: Bytes,
    /// Properties in wire form (each message carries its own `UNIQ_KEY`).
    pub properties: Bytes,
}

/// Encodes items as a batch body.
pub fn encode(items: &[BatchItem]) -> Vec<u8> {
    let mut out = Vec::new();
    for it in items {
        let total = 20 + it.body.len() + 2 + it.properties.len();
        out.put_i32(total as i32);
        out.put_i32(0);
        out.put_i32(0);
        out.put_i32(it.flag);
        out.put_i32(it.body.len() as i32);
        out.put_slice(&it.body);
        out.put_i16(it.properties.len() as i16);
        out.put_slice(&it.properties);
    }
    out
}

/// Decodes a batch body; every length is checked against the bytes present. Bodies and
/// properties are slices of `batch`, not copies.
pub fn decode(batch: &Bytes) -> Result<Vec<BatchItem>, String> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < batch.len() {
        let b = &batch[at..];
        if b.len() < 20 {
            return Err("truncated item header".into());
        }
        let total = i32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        let total = usize::try_from(total)
            .ok()
            .filter(|t| *t >= 22 && *t <= b.len())
            .ok_or("bad item TOTALSIZE")?;
        let mut item = &b[12..total];
        let flag = item.get_i32();
        let body_len = usize::try_from(item.get_i32()).map_err(|_| "bad body length")?;
        if body_len + 2 > item.len() {
            return Err("body overruns its item".into());
        }
        let body_at = at + 20;
        item.advance(body_len);
        let props_len = usize::try_from(item.get_i16()).map_err(|_| "bad properties length")?;
        if props_len != item.len() {
            return Err("properties do not fill the item".into());
        }
        let props_at = body_at + body_len + 2;
        out.push(BatchItem {
            flag,
            body: batch.slice(body_at..body_at + body_len),
            properties: batch.slice(props_at..props_at + props_len),
        });
        at += total;
    }
    if out.is_empty() {
        return Err("empty batch".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn item(flag: i32, body: &[u8], props: &[u8]) -> BatchItem {
        BatchItem {
            flag,
            body: Bytes::copy_from_slice(body),
            properties: Bytes::copy_from_slice(props),
        }
    }

    #[test]
    fn golden_layout_and_cuts() {
        let items = vec![item(7, b"one", b"UNIQ_KEY\x01A\x02"), item(0, b"two", b"")];
        let b = Bytes::from(encode(&items));
        assert_eq!(&b[0..4], &36i32.to_be_bytes());
        assert_eq!(&b[4..12], &[0; 8]);
        assert_eq!(&b[12..16], &7i32.to_be_bytes());
        assert_eq!(&b[16..20], &3i32.to_be_bytes());
        assert_eq!(&b[20..23], b"one");
        assert_eq!(&b[23..25], &11i16.to_be_bytes());
        assert_eq!(decode(&b).unwrap(), items);
        for cut in 1..b.len() {
            match decode(&b.slice(..cut)) {
                // A cut at an item boundary is a shorter, valid batch.
                Ok(got) => assert!(cut == 36 && got.len() == 1, "cut {cut}"),
                Err(_) => assert_ne!(cut, 36),
            }
        }
        assert!(decode(&Bytes::from_static(&[0xFF; 40])).is_err());
        assert!(decode(&Bytes::new()).is_err());
    }

    proptest! {
        #[test]
        fn round_trip(items in proptest::collection::vec(
            (any::<i32>(), proptest::collection::vec(any::<u8>(), 0..200), proptest::collection::vec(any::<u8>(), 0..50)),
            1..8)) {
            let items: Vec<BatchItem> = items.iter().map(|(f, b, p)| item(*f, b, p)).collect();
            prop_assert_eq!(decode(&Bytes::from(encode(&items))).unwrap(), items);
        }

        #[test]
        fn garbage_never_panics(b in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode(&Bytes::from(b));
        }
    }
}
