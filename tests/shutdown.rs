//! `mqshutdown broker|namesrv` finds the running processes by name and stops them cleanly,
//! printing as the seed shows. It stops *every* mqbroker/mqnamesrv of the user, so this test
//! is its own test binary (cargo runs test binaries one at a time) and, outside CI, does not
//! run while other CoreMQ processes are alive.

mod common;
use common::remoting::*;
use std::process::Command;
use std::time::{Duration, Instant};

fn running(name: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
            (comm.trim_end() == name).then_some(pid)
        })
        .collect()
}

fn shutdown(what: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_mqshutdown"))
        .arg(what)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn mqshutdown_stops_broker_then_namesrv_cleanly() {
    let others = running("mqbroker").len() + running("mqnamesrv").len();
    if others > 0 {
        assert!(
            std::env::var_os("CI").is_none(),
            "other CoreMQ processes run during CI"
        );
        eprintln!(
            "skipped: {others} CoreMQ process(es) already running; mqshutdown would stop them"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (mut ns, ns_port) = start_namesrv(dir.path(), &[]);
    let store = dir.path().join("store");
    let (mut broker, _port) = start_broker(&store, ns_port, &[]);
    assert!(store.join("abort").exists());

    let pid = broker.0.id();
    let out = shutdown("broker");
    assert_eq!(
        out,
        format!("The mqbroker({pid}) is running...\nSend shutdown request to mqbroker({pid}) OK\n")
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while broker.0.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "the broker ignored the shutdown request"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(broker.0.wait().unwrap().success(), "a clean stop exits 0");
    assert!(!store.join("abort").exists(), "a clean stop removes abort");
    assert!(store.join("config/consumerOffset.json").exists());

    let pid = ns.0.id();
    let out = shutdown("namesrv");
    assert!(
        out.starts_with(&format!("The mqnamesrv({pid}) is running...")),
        "{out}"
    );
    while ns.0.try_wait().unwrap().is_none() {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(shutdown("broker"), "No mqbroker running.\n");
}
