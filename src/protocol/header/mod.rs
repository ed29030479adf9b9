//! Typed custom headers, one file per request-code family (reference §3). Each decodes
//! leniently from a command's extFields (numbers as text, booleans `true`/`1`, unknown keys
//! ignored) and encodes with upstream's field names.

pub mod offset;
pub mod pull;
pub mod route;
pub mod send;

use super::RemotingCommand;

/// A required field is missing or unparsable; the text is upstream's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("the custom field <{0}> is null")]
    Missing(&'static str),
    #[error("the custom field <{0}> has a bad value {1:?}")]
    Bad(&'static str, String),
}

/// A required string field.
pub(crate) fn req_str(c: &RemotingCommand, k: &'static str) -> Result<String, HeaderError> {
    c.ext(k).map(str::to_string).ok_or(HeaderError::Missing(k))
}

/// A required number.
pub(crate) fn req_num<T: std::str::FromStr>(
    c: &RemotingCommand,
    k: &'static str,
) -> Result<T, HeaderError> {
    let v = c.ext(k).ok_or(HeaderError::Missing(k))?;
    v.trim()
        .parse()
        .map_err(|_| HeaderError::Bad(k, v.to_string()))
}

/// An optional number (absent or unparsable: `None`, as Java logs and skips).
pub fn opt_num<T: std::str::FromStr>(c: &RemotingCommand, k: &str) -> Option<T> {
    c.ext(k).and_then(|v| v.trim().parse().ok())
}

/// An optional boolean: `true`/`1` (any case) is true, anything else false, absent `None`.
pub fn opt_bool(c: &RemotingCommand, k: &str) -> Option<bool> {
    c.ext(k)
        .map(|v| v.eq_ignore_ascii_case("true") || v.trim() == "1")
}
