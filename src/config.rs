//! `.properties` files as the seed's `conf/` uses them: `key=value` lines, `#` or `!`
//! comments, surrounding spaces trimmed. Errors name the file and line.

use std::path::Path;

/// One `key=value` with the line it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Property {
    pub key: String,
    pub value: String,
    pub line: usize,
}

/// A bad line or value in a configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: {source}")]
    Io {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}:{line}: {msg}")]
    Bad {
        file: String,
        line: usize,
        msg: String,
    },
}

/// Parses properties text; `file` is used in error messages.
pub fn parse_properties(text: &str, file: &str) -> Result<Vec<Property>, ConfigError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with('!') {
            continue;
        }
        let Some(at) = line.find(['=', ':']) else {
            return Err(ConfigError::Bad {
                file: file.to_string(),
                line: i + 1,
                msg: format!("expected key=value, found {line:?}"),
            });
        };
        let key = line[..at].trim();
        if key.is_empty() {
            return Err(ConfigError::Bad {
                file: file.to_string(),
                line: i + 1,
                msg: "empty key".into(),
            });
        }
        out.push(Property {
            key: key.to_string(),
            value: line[at + 1..].trim().to_string(),
            line: i + 1,
        });
    }
    Ok(out)
}

/// Reads and parses a properties file.
pub fn read_properties(path: &Path) -> Result<Vec<Property>, ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        file: file.clone(),
        source,
    })?;
    parse_properties(&text, &file)
}

/// Parses a property value, with an error naming file, line and key.
pub fn value<T: std::str::FromStr>(p: &Property, file: &str) -> Result<T, ConfigError>
where
    T::Err: std::fmt::Display,
{
    p.value.parse().map_err(|e| ConfigError::Bad {
        file: file.to_string(),
        line: p.line,
        msg: format!("bad value {:?} for {}: {e}", p.value, p.key),
    })
}

/// Blocks SIGTERM and SIGINT in this thread (call first in `main`, so every thread inherits
/// it) and returns a channel that receives once either arrives.
pub fn termination_signals() -> flume::Receiver<()> {
    // A write past the file-size limit (`ulimit -f`) must fail with EFBIG, which the store
    // turns into a logged flush error and a clean refusal of further writes, not kill the
    // process with SIGXFSZ (its default) mid-write. The JVM ignores it likewise.
    // SAFETY: setting a signal's disposition to SIG_IGN involves no handler code.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    // SAFETY: plain signal-mask calls on a local sigset.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    let (tx, rx) = flume::bounded(1);
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut sig: libc::c_int = 0;
            // SAFETY: sigwait on the set blocked above.
            unsafe { libc::sigwait(&set, &mut sig) };
            log::info!("signal {sig} received: shutting down");
            let _ = tx.send(());
        })
        .ok();
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_with_comments_and_errors() {
        let p =
            parse_properties("# c\n\nbrokerName = broker-a\nlistenPort=11911\n! x\n", "f").unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(
            (p[0].key.as_str(), p[0].value.as_str(), p[0].line),
            ("brokerName", "broker-a", 3)
        );
        let e = parse_properties("a=1\nnot a pair\n", "conf/x.properties").unwrap_err();
        assert_eq!(
            e.to_string(),
            "conf/x.properties:2: expected key=value, found \"not a pair\""
        );
        let bad = value::<u16>(&p[1], "f").unwrap();
        assert_eq!(bad, 11911);
        let q = Property {
            key: "listenPort".into(),
            value: "x".into(),
            line: 7,
        };
        assert!(value::<u16>(&q, "f")
            .unwrap_err()
            .to_string()
            .starts_with("f:7: bad value \"x\" for listenPort"));
    }
}
