//! Logging backend for the binaries: `log` records go over a channel to one writer thread
//! (executors never block on file I/O), which appends to `<dir>/<name>.log` and rotates it at
//! `max_bytes` to `<name>.log.1` … `<name>.log.<keep>`.
//!
//! glommio logs an error for every DMA file on a device without polled queues ("probing
//! iopoll"); it is harmless and filtered out here.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Where and how much to log.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// Directory of the log file (`~/logs/rocketmqlogs` by default, as upstream).
    pub dir: Option<PathBuf>,
    /// File stem: `broker`, `namesrv`, ...
    pub name: String,
    /// Also write to stderr.
    pub stderr: bool,
    pub level: log::LevelFilter,
    pub max_bytes: u64,
    pub keep: u32,
}

impl LogConfig {
    pub fn new(name: &str) -> LogConfig {
        LogConfig {
            dir: Some(default_log_dir()),
            name: name.to_string(),
            stderr: false,
            level: log::LevelFilter::Info,
            max_bytes: 128 << 20,
            keep: 10,
        }
    }
}

/// `~/logs/rocketmqlogs`.
pub fn default_log_dir() -> PathBuf {
    home_dir().join("logs").join("rocketmqlogs")
}

/// `$HOME`, or `/` when unset.
pub fn home_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/"))
}

/// Expands a leading `~` (as in property files).
pub fn expand_tilde(p: &str) -> PathBuf {
    if p == "~" {
        home_dir()
    } else if let Some(rest) = p.strip_prefix("~/") {
        home_dir().join(rest)
    } else {
        PathBuf::from(p)
    }
}

enum Line {
    Text(String),
    /// Acknowledged once every earlier line is written.
    Flush(flume::Sender<()>),
}

struct ChannelLogger {
    tx: flume::Sender<Line>,
    level: log::LevelFilter,
}

fn is_noise(r: &log::Record<'_>) -> bool {
    r.target().starts_with("glommio")
        && r.level() >= log::Level::Error
        && format!("{}", r.args()).contains("probing iopoll")
}

impl log::Log for ChannelLogger {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= self.level
    }
    fn log(&self, r: &log::Record<'_>) {
        if !self.enabled(r.metadata()) || is_noise(r) {
            return;
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let (y, mo, d, h, mi, s) = crate::store::index::local_time(now);
        let thread = std::thread::current();
        let line = format!(
            "{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}.{:03} {:<5} [{}] {} - {}\n",
            now.rem_euclid(1000),
            r.level(),
            thread.name().unwrap_or("main"),
            r.target(),
            r.args()
        );
        let _ = self.tx.send(Line::Text(line));
    }
    fn flush(&self) {
        let (ack, done) = flume::bounded(1);
        if self.tx.send(Line::Flush(ack)).is_ok() {
            let _ = done.recv_timeout(std::time::Duration::from_secs(2));
        }
    }
}

struct Sink {
    path: Option<PathBuf>,
    file: Option<File>,
    written: u64,
    max: u64,
    keep: u32,
    stderr: bool,
}

impl Sink {
    fn open(path: &Path) -> std::io::Result<(File, u64)> {
        let f = OpenOptions::new().create(true).append(true).open(path)?;
        let n = f.metadata().map(|m| m.len()).unwrap_or(0);
        Ok((f, n))
    }

    fn rotate(&mut self) {
        let Some(path) = &self.path else { return };
        let name = |i: u32| PathBuf::from(format!("{}.{i}", path.display()));
        let _ = std::fs::remove_file(name(self.keep));
        for i in (1..self.keep).rev() {
            let _ = std::fs::rename(name(i), name(i + 1));
        }
        let _ = std::fs::rename(path, name(1));
        if let Ok((f, n)) = Self::open(path) {
            self.file = Some(f);
            self.written = n;
        }
    }

    fn write(&mut self, line: &str) {
        if self.stderr {
            let _ = std::io::stderr().write_all(line.as_bytes());
        }
        if let Some(f) = &mut self.file {
            let _ = f.write_all(line.as_bytes());
            self.written += line.len() as u64;
            if self.written >= self.max {
                self.rotate();
            }
        }
    }
}

/// Installs the logger. Returns the log file path. Fails only if a logger is already set or
/// the directory cannot be created.
pub fn init(cfg: &LogConfig) -> std::io::Result<Option<PathBuf>> {
    let path = match &cfg.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            Some(d.join(format!("{}.log", cfg.name)))
        }
        None => None,
    };
    let mut sink = Sink {
        path: path.clone(),
        file: None,
        written: 0,
        max: cfg.max_bytes.max(4096),
        keep: cfg.keep.max(1),
        stderr: cfg.stderr,
    };
    if let Some(p) = &path {
        let (f, n) = Sink::open(p)?;
        sink.file = Some(f);
        sink.written = n;
    }
    let (tx, rx) = flume::unbounded::<Line>();
    std::thread::Builder::new()
        .name("log-writer".into())
        .spawn(move || {
            while let Ok(line) = rx.recv() {
                match line {
                    Line::Text(t) => sink.write(&t),
                    Line::Flush(ack) => {
                        if let Some(f) = &mut sink.file {
                            let _ = f.flush();
                        }
                        let _ = ack.send(());
                    }
                }
            }
        })?;
    log::set_boxed_logger(Box::new(ChannelLogger {
        tx,
        level: cfg.level,
    }))
    .map_err(|e| std::io::Error::other(e.to_string()))?;
    log::set_max_level(cfg.level);
    Ok(path)
}

/// Waits until every line logged so far is written; call right before exit.
pub fn drain() {
    log::logger().flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tilde_expansion() {
        std::env::set_var("HOME", "/home/u");
        assert_eq!(expand_tilde("~/store"), PathBuf::from("/home/u/store"));
        assert_eq!(expand_tilde("~"), PathBuf::from("/home/u"));
        assert_eq!(expand_tilde("/abs"), PathBuf::from("/abs"));
    }

    #[test]
    fn rotation_keeps_n_files() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.log");
        let (f, _) = Sink::open(&p).unwrap();
        let mut s = Sink {
            path: Some(p.clone()),
            file: Some(f),
            written: 0,
            max: 100,
            keep: 2,
            stderr: false,
        };
        for _ in 0..10 {
            s.write(&"a".repeat(60));
        }
        assert!(p.exists());
        assert!(d.path().join("x.log.1").exists());
        assert!(d.path().join("x.log.2").exists());
        assert!(!d.path().join("x.log.3").exists());
    }
}
