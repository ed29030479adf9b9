//! The properties string: `name 0x01 value 0x02`, repeated (reference §4.1).
//!
//! Lookups iterate the raw bytes without allocating, because they run on the append path
//! (TAGS, KEYS and UNIQ_KEY are read from every stored message).

pub const NAME_VALUE_SEPARATOR: u8 = 0x01;
pub const PROPERTY_SEPARATOR: u8 = 0x02;

pub const TAGS: &str = "TAGS";
pub const KEYS: &str = "KEYS";
pub const UNIQ_KEY: &str = "UNIQ_KEY";
pub const WAIT: &str = "WAIT";
pub const DELAY: &str = "DELAY";

/// Iterates the `(name, value)` pairs of a properties string, with Java's leniency: segments
/// shorter than 3 bytes or without an inner separator are skipped; a trailing separator is fine.
pub fn iter(props: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    // memchr rather than a byte-at-a-time split: the store and the send path each scan
    // every message's properties (~5 % of the broker's time under batches).
    let mut rest = Some(props);
    std::iter::from_fn(move || loop {
        let r = rest?;
        let seg = match memchr::memchr(PROPERTY_SEPARATOR, r) {
            Some(i) => {
                rest = Some(&r[i + 1..]);
                &r[..i]
            }
            None => {
                rest = None;
                r
            }
        };
        if seg.len() < 3 {
            continue;
        }
        match memchr::memchr(NAME_VALUE_SEPARATOR, seg) {
            Some(at) if at != 0 && at + 1 != seg.len() => {
                return Some((&seg[..at], &seg[at + 1..]))
            }
            _ => continue,
        }
    })
}

/// The value of `name`, if present.
pub fn get<'a>(props: &'a [u8], name: &str) -> Option<&'a [u8]> {
    iter(props)
        .find(|(k, _)| *k == name.as_bytes())
        .map(|(_, v)| v)
}

/// The properties the store reads from every record it dispatches, found in one pass.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Dispatched<'a> {
    pub tags: Option<&'a [u8]>,
    pub keys: Option<&'a [u8]>,
    pub uniq_key: Option<&'a [u8]>,
}

/// TAGS, KEYS and UNIQ_KEY of a properties string, each as [`get`] finds it (the first
/// occurrence), in one pass instead of three.
pub fn dispatched(props: &[u8]) -> Dispatched<'_> {
    let mut d = Dispatched::default();
    for (k, v) in iter(props) {
        let slot = match k {
            b"TAGS" => &mut d.tags,
            b"KEYS" => &mut d.keys,
            b"UNIQ_KEY" => &mut d.uniq_key,
            _ => continue,
        };
        slot.get_or_insert(v);
    }
    d
}

/// Appends one `name=value` pair in wire form.
pub fn push(out: &mut Vec<u8>, name: &str, value: &str) {
    out.extend_from_slice(name.as_bytes());
    out.push(NAME_VALUE_SEPARATOR);
    out.extend_from_slice(value.as_bytes());
    out.push(PROPERTY_SEPARATOR);
}

/// Encodes pairs in wire form (trailing separator included, as Java writes it).
pub fn encode<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in pairs {
        push(&mut out, k, v);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_lookup() {
        let p = encode([("TAGS", "TagA"), ("KEYS", "k1 k2"), ("UNIQ_KEY", "ABC")]);
        assert_eq!(p, b"TAGS\x01TagA\x02KEYS\x01k1 k2\x02UNIQ_KEY\x01ABC\x02");
        assert_eq!(get(&p, TAGS), Some(&b"TagA"[..]));
        assert_eq!(get(&p, KEYS), Some(&b"k1 k2"[..]));
        assert_eq!(get(&p, "NOPE"), None);
    }

    #[test]
    fn dispatched_finds_what_get_finds() {
        let p = b"KEYS\x01k1 k2\x02X\x01y\x02TAGS\x01A\x02UNIQ_KEY\x01U\x02TAGS\x01B\x02";
        let d = dispatched(p);
        assert_eq!(d.tags, get(p, TAGS));
        assert_eq!(d.tags, Some(&b"A"[..]), "the first of two, as get");
        assert_eq!(d.keys, get(p, KEYS));
        assert_eq!(d.uniq_key, get(p, UNIQ_KEY));
        assert_eq!(dispatched(b"X\x01y\x02"), Dispatched::default());
    }

    proptest::proptest! {
        /// The memchr scan yields what a plain split does, separators anywhere.
        #[test]
        fn iter_matches_a_plain_split(
            p in proptest::collection::vec(
                proptest::prop_oneof![proptest::strategy::Just(1u8), proptest::strategy::Just(2u8), 0u8..=255],
                0..48,
            )
        ) {
            let reference: Vec<_> = p
                .split(|b| *b == PROPERTY_SEPARATOR)
                .filter_map(|seg| {
                    let at = seg.iter().position(|b| *b == NAME_VALUE_SEPARATOR)?;
                    (seg.len() >= 3 && at != 0 && at + 1 != seg.len())
                        .then(|| (&seg[..at], &seg[at + 1..]))
                })
                .collect();
            proptest::prop_assert_eq!(iter(&p).collect::<Vec<_>>(), reference);
        }
    }

    #[test]
    fn lenient_parsing_skips_malformed_segments() {
        let p = b"\x01x\x02ab\x02k\x01\x02\x02\x02TAGS\x01T";
        let pairs: Vec<_> = iter(p).collect();
        assert_eq!(pairs, vec![(&b"TAGS"[..], &b"T"[..])]);
    }
}
