//! `RemotingCommand`: the logical header (reference §1.2) and its two codecs, JSON (§1.3) and
//! the ROCKETMQ binary header (§1.4).
//!
//! Decoding is liberal, as the Java broker is: JSON numbers or strings for the int fields, the
//! language by name or ordinal, extFields values as strings, numbers or booleans, unknown keys
//! ignored. Encoding is exact: fastjson's key order (alphabetical), no `null` members.

use bytes::{BufMut, Bytes, BytesMut};

use super::ext_fields::ExtFields;
use super::ProtocolError;

/// Flag bit 0: this command is a response.
pub const FLAG_RESPONSE: i32 = 0x1;
/// Flag bit 1: a oneway request (no response).
pub const FLAG_ONEWAY: i32 = 0x2;
/// The version CoreMQ sends: `MQVersion.V4_9_8` (409).
pub const OUR_VERSION: i32 = 409;

/// The header codec, the high byte of the header-length word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum HeaderCodec {
    Json = 0,
    RocketMq = 1,
}

/// `LanguageCode` names by ordinal (reference §1.5).
const LANGUAGES: [&str; 14] = [
    "JAVA", "CPP", "DOTNET", "PYTHON", "DELPHI", "ERLANG", "RUBY", "OTHER", "HTTP", "GO", "PHP",
    "OMS", "RUST", "NODE_JS",
];
/// Ordinal of `RUST`, the language CoreMQ announces.
pub const LANGUAGE_RUST: u8 = 12;

/// Name of a language ordinal (`OTHER` for unknown ones).
pub fn language_name(code: u8) -> &'static str {
    LANGUAGES.get(code as usize).copied().unwrap_or("OTHER")
}

fn language_code(name: &str) -> u8 {
    LANGUAGES
        .iter()
        .position(|l| l.eq_ignore_ascii_case(name))
        .map(|p| p as u8)
        .unwrap_or(7)
}

/// One remoting command (request or response).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemotingCommand {
    pub code: i32,
    pub language: u8,
    pub version: i32,
    pub opaque: i32,
    pub flag: i32,
    pub remark: Option<String>,
    /// The custom header; iterated in key order, as fastjson writes bean fields.
    pub ext_fields: ExtFields,
    pub body: Bytes,
    /// The codec this command was decoded from, and will be encoded with.
    pub codec: HeaderCodec,
}

impl RemotingCommand {
    /// A request with our language and version.
    pub fn request(code: i32, codec: HeaderCodec) -> RemotingCommand {
        RemotingCommand {
            code,
            language: LANGUAGE_RUST,
            version: OUR_VERSION,
            opaque: 0,
            flag: 0,
            remark: None,
            ext_fields: ExtFields::new(),
            body: Bytes::new(),
            codec,
        }
    }

    /// The response to `req`: same opaque and codec, response flag set.
    pub fn response_to(
        req: &RemotingCommand,
        code: i32,
        remark: Option<String>,
    ) -> RemotingCommand {
        RemotingCommand {
            code,
            language: LANGUAGE_RUST,
            version: OUR_VERSION,
            opaque: req.opaque,
            flag: FLAG_RESPONSE,
            remark,
            ext_fields: ExtFields::new(),
            body: Bytes::new(),
            codec: req.codec,
        }
    }

    pub fn is_response(&self) -> bool {
        self.flag & FLAG_RESPONSE != 0
    }
    pub fn is_oneway(&self) -> bool {
        self.flag & FLAG_ONEWAY != 0
    }
    pub fn ext(&self, key: &str) -> Option<&str> {
        self.ext_fields.get(key)
    }
    pub fn set_ext(&mut self, key: &str, value: impl ToString) {
        self.ext_fields.insert(key.to_string(), value.to_string());
    }

    pub(super) fn decode_header(
        codec: HeaderCodec,
        h: Bytes,
    ) -> Result<RemotingCommand, ProtocolError> {
        match codec {
            HeaderCodec::Json => decode_json(&h),
            HeaderCodec::RocketMq => decode_binary(h),
        }
    }

    pub(super) fn encode_header(&self, out: &mut BytesMut) {
        match self.codec {
            HeaderCodec::Json => self.encode_json(out),
            HeaderCodec::RocketMq => self.encode_binary(out),
        }
    }

    fn encode_json(&self, out: &mut BytesMut) {
        let mut w = out.writer();
        let s = |v: &str| serde_json::to_string(v).unwrap_or_else(|_| "\"\"".into());
        let mut text = format!("{{\"code\":{}", self.code);
        if !self.ext_fields.is_empty() {
            text.push_str(",\"extFields\":{");
            for (i, (k, v)) in self.ext_fields.iter().enumerate() {
                if i > 0 {
                    text.push(',');
                }
                text.push_str(&s(k));
                text.push(':');
                text.push_str(&s(v));
            }
            text.push('}');
        }
        text.push_str(&format!(
            ",\"flag\":{},\"language\":\"{}\",\"opaque\":{}",
            self.flag,
            language_name(self.language),
            self.opaque
        ));
        if let Some(r) = &self.remark {
            text.push_str(",\"remark\":");
            text.push_str(&s(r));
        }
        text.push_str(&format!(
            ",\"serializeTypeCurrentRPC\":\"JSON\",\"version\":{}}}",
            self.version
        ));
        let _ = std::io::Write::write_all(&mut w, text.as_bytes());
    }

    fn encode_binary(&self, out: &mut BytesMut) {
        out.put_i16(self.code as i16);
        out.put_u8(self.language);
        out.put_i16(self.version as i16);
        out.put_i32(self.opaque);
        out.put_i32(self.flag);
        match &self.remark {
            Some(r) if !r.is_empty() => {
                out.put_i32(r.len() as i32);
                out.put_slice(r.as_bytes());
            }
            _ => out.put_i32(0),
        }
        let ext_len: usize = self
            .ext_fields
            .iter_unordered()
            .map(|(k, v)| 2 + k.len() + 4 + v.len())
            .sum();
        out.put_i32(ext_len as i32);
        for (k, v) in self.ext_fields.iter_unordered() {
            out.put_i16(k.len() as i16);
            out.put_slice(k.as_bytes());
            out.put_i32(v.len() as i32);
            out.put_slice(v.as_bytes());
        }
    }
}

/// A JSON number or numeric string as i32 (liberal, as Java's parser is).
fn json_i32(v: Option<&serde_json::Value>, field: &'static str) -> Result<i32, ProtocolError> {
    use serde_json::Value;
    match v {
        None | Some(Value::Null) => Ok(0),
        Some(Value::Number(n)) => n
            .as_i64()
            .and_then(|x| i32::try_from(x).ok())
            .ok_or(ProtocolError::BadField(field)),
        Some(Value::String(s)) => s.trim().parse().map_err(|_| ProtocolError::BadField(field)),
        Some(_) => Err(ProtocolError::BadField(field)),
    }
}

fn decode_json(h: &[u8]) -> Result<RemotingCommand, ProtocolError> {
    use serde_json::Value;
    let v: Value = serde_json::from_slice(h).map_err(|e| ProtocolError::Json(e.to_string()))?;
    let obj = v
        .as_object()
        .ok_or(ProtocolError::Json("header is not an object".into()))?;
    let language = match obj.get("language") {
        Some(Value::String(s)) => language_code(s),
        Some(Value::Number(n)) => n.as_u64().and_then(|x| u8::try_from(x).ok()).unwrap_or(7),
        _ => 0,
    };
    let mut ext_fields = ExtFields::new();
    if let Some(Value::Object(m)) = obj.get("extFields") {
        for (k, v) in m {
            let s = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                Value::Null => continue,
                other => other.to_string(),
            };
            ext_fields.insert(k.clone(), s);
        }
    }
    let remark = match obj.get("remark") {
        Some(Value::String(s)) => Some(s.clone()),
        _ => None,
    };
    Ok(RemotingCommand {
        code: json_i32(obj.get("code"), "code")?,
        language,
        version: json_i32(obj.get("version"), "version")?,
        opaque: json_i32(obj.get("opaque"), "opaque")?,
        flag: json_i32(obj.get("flag"), "flag")?,
        remark,
        ext_fields,
        body: Bytes::new(),
        codec: HeaderCodec::Json,
    })
}

struct Rd<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Rd<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], ProtocolError> {
        let end = self
            .at
            .checked_add(n)
            .ok_or(ProtocolError::Truncated(what))?;
        let s = self
            .b
            .get(self.at..end)
            .ok_or(ProtocolError::Truncated(what))?;
        self.at = end;
        Ok(s)
    }
    fn i16(&mut self, what: &'static str) -> Result<i16, ProtocolError> {
        let s = self.take(2, what)?;
        Ok(i16::from_be_bytes([s[0], s[1]]))
    }
    fn i32(&mut self, what: &'static str) -> Result<i32, ProtocolError> {
        let s = self.take(4, what)?;
        Ok(i32::from_be_bytes([s[0], s[1], s[2], s[3]]))
    }
    /// A length no larger than the header (Java's check), else an error.
    fn len(&mut self, v: i64, what: &'static str) -> Result<usize, ProtocolError> {
        usize::try_from(v)
            .ok()
            .filter(|n| *n <= self.b.len())
            .ok_or(ProtocolError::Truncated(what))
    }
    /// Skips `n` bytes, returning where they lie in `b`.
    fn span(
        &mut self,
        n: usize,
        what: &'static str,
    ) -> Result<std::ops::Range<usize>, ProtocolError> {
        let start = self.at;
        self.take(n, what)?;
        Ok(start..self.at)
    }
    fn string(&mut self, n: usize, what: &'static str) -> Result<String, ProtocolError> {
        Ok(String::from_utf8_lossy(self.take(n, what)?).into_owned())
    }
}

fn decode_binary(header: Bytes) -> Result<RemotingCommand, ProtocolError> {
    let h = &header[..];
    let mut r = Rd { b: h, at: 0 };
    let code = r.i16("code")? as i32;
    let language = r.take(1, "language")?[0];
    let version = r.i16("version")? as i32;
    let opaque = r.i32("opaque")?;
    let flag = r.i32("flag")?;
    let rl = r.i32("remark length")?;
    let rl = r.len(rl as i64, "remark")?;
    let remark = (rl > 0).then(|| r.string(rl, "remark")).transpose()?;
    let el = r.i32("extFields length")?;
    let el = r.len(el as i64, "extFields")?;
    let map = r.span(el, "extFields")?;
    // A reader of the map alone, at its place in the header: the spans it returns are the
    // fields' places in the header, where they stay (see `ExtFields`).
    let mut m = Rd {
        b: &h[..map.end],
        at: map.start,
    };
    // A field takes at least 8 bytes (two lengths and a byte each): one allocation for all.
    let mut ext_fields = ExtFields::over(header.clone(), (el / 8).min(32));
    while m.at < map.end {
        let kl = m.i16("key length")?;
        let kl = m.len(kl as i64, "key")?;
        let k = m.span(kl, "key")?;
        let vl = m.i32("value length")?;
        let vl = m.len(vl as i64, "value")?;
        let v = m.span(vl, "value")?;
        // Java decodes a zero-length string as null: such a field is absent.
        if !k.is_empty() && !v.is_empty() {
            ext_fields.push_raw(k, v);
        }
    }
    Ok(RemotingCommand {
        code,
        language,
        version,
        opaque,
        flag,
        remark,
        ext_fields,
        body: Bytes::new(),
        codec: HeaderCodec::RocketMq,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_liberal_in_types() {
        let h = br#"{"code":"10","flag":"0","language":9,"opaque":3,"version":317,
                    "extFields":{"queueId":3,"batch":false,"topic":"T","n":null},
                    "serializeTypeCurrentRPC":"JSON","unknown":[1,2]}"#;
        let c = decode_json(h).unwrap();
        assert_eq!(c.code, 10);
        assert_eq!(language_name(c.language), "GO");
        assert_eq!(c.ext("queueId"), Some("3"));
        assert_eq!(c.ext("batch"), Some("false"));
        assert_eq!(c.ext("n"), None);
        assert!(decode_json(br#"{"code":{}}"#).is_err());
        assert!(decode_json(b"[1]").is_err());
    }

    #[test]
    fn json_encoding_is_fastjson_shaped() {
        let mut c = RemotingCommand::request(105, HeaderCodec::Json);
        c.opaque = 7;
        c.set_ext("topic", "T");
        let mut out = BytesMut::new();
        c.encode_json(&mut out);
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"code":105,"extFields":{"topic":"T"},"flag":0,"language":"RUST","opaque":7,"serializeTypeCurrentRPC":"JSON","version":409}"#
        );
    }

    #[test]
    fn binary_golden_and_checks() {
        let mut c = RemotingCommand::request(11, HeaderCodec::RocketMq);
        c.opaque = 1;
        c.set_ext("k", "v");
        let mut out = BytesMut::new();
        c.encode_binary(&mut out);
        // code 11, language RUST, version 409, opaque 1, flag 0, no remark, ext 8 bytes.
        assert_eq!(
            &out[..],
            &[
                0, 11, 12, 0x01, 0x99, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 8, 0, 1, b'k',
                0, 0, 0, 1, b'v'
            ][..]
        );
        assert_eq!(decode_binary(out.clone().freeze()).unwrap(), c);
        for cut in 0..out.len() {
            assert!(
                decode_binary(Bytes::copy_from_slice(&out[..cut])).is_err(),
                "cut {cut}"
            );
        }
        // A remark length larger than the header is refused.
        let mut bad = out.to_vec();
        bad[13..17].copy_from_slice(&1000i32.to_be_bytes());
        assert!(decode_binary(Bytes::from(bad)).is_err());
    }
}
