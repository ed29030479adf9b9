//! `extFields`, the custom header of a remoting command: string keys to string values.
//!
//! Every request carries ten to twenty of them, so they are kept cheap: fields decoded from a
//! ROCKETMQ binary header stay in the received header's bytes (a shared [`Bytes`], checked
//! for UTF-8 once) instead of becoming two `String`s each in a tree map; fields set by our
//! code are owned. Lookups scan the few entries by key tag (see `KeyTag`). Iteration (for
//! encoding) is in key order, as fastjson writes bean fields.

use bytes::Bytes;

/// The first 8 bytes of a key (zero-padded) and its length: two keys of 8 bytes or less are
/// equal exactly when their tags are, so a lookup compares integers held in the field list
/// instead of calling `memcmp` on bytes behind it. A send header has 10–15 fields, and
/// decoding one looks each of them up; the V2 header's keys are single letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct KeyTag(u64, u32);

impl KeyTag {
    #[inline]
    fn of(key: &str) -> KeyTag {
        let b = key.as_bytes();
        // A byte loop, not `copy_from_slice` of a variable length: that is a `memcpy` call.
        let mut head = 0u64;
        for (i, &c) in b.iter().take(8).enumerate() {
            head |= (c as u64) << (8 * i);
        }
        KeyTag(head, b.len() as u32)
    }

    /// Whether a tag match is already a key match.
    #[inline]
    fn is_whole(self) -> bool {
        self.1 <= 8
    }
}

/// One field: the key's tag beside the key and the value.
#[derive(Debug, Clone)]
struct Field {
    tag: KeyTag,
    key: Text,
    value: Text,
}

/// A key or a value: a range of the shared header bytes (known to be UTF-8), or owned.
#[derive(Debug, Clone)]
enum Text {
    Raw { start: u32, len: u32 },
    Owned(String),
}

/// The `extFields` of one command. See the module doc.
#[derive(Debug, Clone, Default)]
pub struct ExtFields {
    raw: Bytes,
    fields: Vec<Field>,
}

impl ExtFields {
    pub fn new() -> ExtFields {
        ExtFields::default()
    }

    /// Room for `capacity` fields that will point into `raw` (the header they are decoded
    /// from).
    pub(super) fn over(raw: Bytes, capacity: usize) -> ExtFields {
        ExtFields {
            raw,
            fields: Vec::with_capacity(capacity),
        }
    }

    fn text<'a>(&'a self, t: &'a Text) -> &'a str {
        match t {
            Text::Raw { start, len } => {
                let b = &self.raw[*start as usize..(*start + *len) as usize];
                // SAFETY: `push_raw` stores a range only after `str::from_utf8` accepted
                // exactly these bytes, and `raw` is immutable.
                unsafe { std::str::from_utf8_unchecked(b) }
            }
            Text::Owned(s) => s,
        }
    }

    /// Adds the field at `key` and `value` (ranges of the `raw` bytes given to
    /// [`ExtFields::over`]); a later field replaces an earlier one with the same key, as a
    /// map insert does. Bytes that are not UTF-8 are decoded lossily (as Java would).
    pub(super) fn push_raw(&mut self, key: std::ops::Range<usize>, value: std::ops::Range<usize>) {
        let key = self.raw_text(key);
        let value = self.raw_text(value);
        let tag = KeyTag::of(self.text(&key));
        match self.position(tag, self.text(&key)) {
            Some(i) => self.fields[i].value = value,
            None => self.fields.push(Field { tag, key, value }),
        }
    }

    fn raw_text(&self, r: std::ops::Range<usize>) -> Text {
        let b = &self.raw[r.clone()];
        // Nearly every header is ASCII; `is_ascii` is inlined and word-at-a-time.
        let utf8 = b.is_ascii() || std::str::from_utf8(b).is_ok();
        match (utf8, u32::try_from(r.start), u32::try_from(r.len())) {
            (true, Ok(start), Ok(len)) => Text::Raw { start, len },
            _ => Text::Owned(String::from_utf8_lossy(b).into_owned()),
        }
    }

    /// The index of the field `key`, whose tag is `tag`.
    fn position(&self, tag: KeyTag, key: &str) -> Option<usize> {
        self.fields
            .iter()
            .position(|f| f.tag == tag && (tag.is_whole() || self.text(&f.key) == key))
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.position(KeyTag::of(key), key)
            .map(|i| self.text(&self.fields[i].value))
    }

    /// Sets `key` to `value`, replacing any value it had.
    pub fn insert(&mut self, key: String, value: String) {
        let tag = KeyTag::of(&key);
        match self.position(tag, &key) {
            Some(i) => self.fields[i].value = Text::Owned(value),
            None => self.fields.push(Field {
                tag,
                key: Text::Owned(key),
                value: Text::Owned(value),
            }),
        }
    }

    pub fn len(&self) -> usize {
        self.fields.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// The fields in the order they were added (the binary codec's order does not matter:
    /// Java reads them into a hash map).
    pub fn iter_unordered(&self) -> impl Iterator<Item = (&str, &str)> {
        self.fields
            .iter()
            .map(|f| (self.text(&f.key), self.text(&f.value)))
    }

    /// The fields in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        let mut v: Vec<(&str, &str)> = self.iter_unordered().collect();
        v.sort_unstable_by(|a, b| a.0.cmp(b.0));
        v.into_iter()
    }
}

impl PartialEq for ExtFields {
    fn eq(&self, other: &ExtFields) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for ExtFields {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_and_owned_fields_read_alike_and_later_keys_win() {
        let raw = Bytes::from_static(b"topicTdupA\xffdupB");
        let mut e = ExtFields::over(raw, 0);
        e.push_raw(0..5, 5..6); // topic = T
        e.push_raw(6..9, 9..11); // dup = A\xff (lossy)
        e.push_raw(6..9, 11..15); // dup = dupB, replacing the first
        assert_eq!(e.get("topic"), Some("T"));
        assert_eq!(e.get("dup"), Some("dupB"));
        assert_eq!(e.len(), 2);
        e.insert("a".into(), "1".into());
        e.insert("topic".into(), "U".into());
        assert_eq!(e.get("topic"), Some("U"));
        let keys: Vec<&str> = e.iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["a", "dup", "topic"]);
        assert_eq!(e.get("missing"), None);
    }

    #[test]
    fn keys_sharing_their_first_eight_bytes_stay_apart() {
        let mut e = ExtFields::new();
        e.insert("defaultTopic".into(), "a".into());
        e.insert("defaultTopicQueueNums".into(), "4".into());
        e.insert("defaultT".into(), "b".into());
        e.insert("defaultTopic".into(), "c".into());
        assert_eq!(e.len(), 3);
        assert_eq!(e.get("defaultTopic"), Some("c"));
        assert_eq!(e.get("defaultTopicQueueNums"), Some("4"));
        assert_eq!(e.get("defaultT"), Some("b"));
        assert_eq!(e.get("defaultTopicX"), None);
        assert_eq!(e.get("defaultTopiX"), None);
        assert_eq!(e.get(""), None);
    }

    #[test]
    fn invalid_utf8_is_decoded_lossily() {
        let mut e = ExtFields::over(Bytes::from_static(b"k\xff"), 1);
        e.push_raw(0..1, 1..2);
        assert_eq!(e.get("k"), Some("\u{fffd}"));
    }

    #[test]
    fn equality_ignores_order_and_storage() {
        let mut a = ExtFields::over(Bytes::from_static(b"xy"), 1);
        a.push_raw(0..1, 1..2);
        a.insert("b".into(), "c".into());
        let mut b = ExtFields::new();
        b.insert("x".into(), "y".into());
        b.insert("b".into(), "c".into());
        assert_eq!(a, b);
    }
}
