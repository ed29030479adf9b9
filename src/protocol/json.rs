//! JSON bodies as fastjson writes them. fastjson emits map keys that are integers without
//! quotes (`{0:"addr"}`, reference §3.9, §7.6); [`parse`] quotes them before handing the text
//! to serde. Output is always standard JSON, which every client parses.

use serde::de::DeserializeOwned;

/// Rewrites bare integer object keys as strings; leaves everything else as it is.
pub fn quote_bare_keys(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len() + 16);
    let mut i = 0;
    let mut in_str = false;
    // Whether the next token in the current object is a key.
    let mut expect_key = false;
    while i < b.len() {
        let c = b[i];
        if in_str {
            out.push(c as char);
            if c == b'\\' && i + 1 < b.len() {
                out.push(b[i + 1] as char);
                i += 2;
                continue;
            }
            if c == b'"' {
                in_str = false;
            }
            i += 1;
            continue;
        }
        match c {
            b'"' => {
                in_str = true;
                expect_key = false;
                out.push('"');
            }
            b'{' | b',' => {
                // After ',' a key follows only inside an object; a wrong guess is harmless
                // because array elements are never followed by ':'.
                expect_key = true;
                out.push(c as char);
            }
            b'-' | b'0'..=b'9' if expect_key => {
                let start = i;
                while i < b.len() && (b[i] == b'-' || b[i].is_ascii_digit()) {
                    i += 1;
                }
                let mut j = i;
                while j < b.len() && b[j].is_ascii_whitespace() {
                    j += 1;
                }
                if b.get(j) == Some(&b':') {
                    out.push('"');
                    out.push_str(&text[start..i]);
                    out.push('"');
                } else {
                    out.push_str(&text[start..i]);
                }
                expect_key = false;
                continue;
            }
            c if c.is_ascii_whitespace() => out.push(c as char),
            _ => {
                expect_key = false;
                out.push(c as char);
            }
        }
        i += 1;
    }
    out
}

/// Parses a fastjson body (UTF-8, possibly with bare integer keys).
pub fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    let text = std::str::from_utf8(body).map_err(|e| format!("body is not UTF-8: {e}"))?;
    match serde_json::from_str(text) {
        Ok(v) => Ok(v),
        Err(_) => serde_json::from_str(&quote_bare_keys(text)).map_err(|e| e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn bare_integer_keys_are_quoted() {
        assert_eq!(
            quote_bare_keys(r#"{"offsetTable":{"T@g":{0:12,1:-3}},"a":[1,2],"s":"{0:1}"}"#),
            r#"{"offsetTable":{"T@g":{"0":12,"1":-3}},"a":[1,2],"s":"{0:1}"}"#
        );
        let m: BTreeMap<String, BTreeMap<String, String>> =
            parse(br#"{"b":{0:"x", 1 : "y"}}"#).unwrap();
        assert_eq!(m["b"]["1"], "y");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(parse::<BTreeMap<String, String>>(b"{0:").is_err());
        assert!(parse::<BTreeMap<String, String>>(b"\xff").is_err());
        let _ = quote_bare_keys("{\"\\");
    }
}
