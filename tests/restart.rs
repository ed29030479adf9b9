//! A broker killed (SIGKILL) under load restarts, cycle after cycle: each restart recovers the
//! store and every shard opens, so the broker listens again within `start_broker`'s 30 s.
//!
//! The restart is a shard's busiest moment on its own: thousands of consume-queue files opened
//! and read, with no connection and no timer to wake it. A shard that went to sleep there with
//! a task still runnable never woke, and SIGTERM could not stop the broker. Glommio parked when
//! preempted before it ran anything, and the kept preemption timer made that common: about one
//! restart in twenty of this shape in a debug build, and one in ten with 1,000 topics in a
//! release build (vendor/README.md, patches 3 and 5).

mod common;

use common::remoting::*;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Starts `mqbench` against the name server; the caller waits for it.
fn mqbench(ns_port: u16, args: &[&str]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_mqbench"))
        .args(args)
        .args(["-n", &format!("127.0.0.1:{ns_port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start mqbench")
}

#[test]
fn broker_restarts_after_repeated_sigkill_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let (_ns, ns_port) = start_namesrv(dir.path(), &[]);
    let store = dir.path().join("store");
    let (mut broker, _) = start_broker(&store, ns_port, &[]);
    // 400 topics x 8 queues with data: a restart opens and checks 3,200 queues' files.
    let ok = |mut c: std::process::Child| assert!(c.wait().unwrap().success());
    ok(mqbench(
        ns_port,
        &["topics", "-t", "Many", "--count", "400", "--queues", "8"],
    ));
    ok(mqbench(
        ns_port,
        &[
            "producer", "-t", "Many", "--topics", "400", "-c", "4", "-i", "8", "-m", "async", "-d",
            "2", "-w", "0", "--quiet",
        ],
    ));
    for _ in 0..10 {
        // Killed with sends in flight, as the benchmark's trouble (c) does.
        let mut load = mqbench(
            ns_port,
            &[
                "producer", "-t", "Load", "--queues", "8", "--create", "-c", "4", "-i", "8", "-m",
                "async", "-d", "3", "-w", "0", "--quiet",
            ],
        );
        std::thread::sleep(Duration::from_millis(1200));
        broker.0.kill().unwrap();
        broker.0.wait().unwrap();
        let _ = load.wait();
        assert!(store.join("abort").exists());
        // Panics with the log's tail if the broker never listens (a shard never opened).
        broker = start_broker(&store, ns_port, &[]).0;
    }
    stop(&mut broker);
}
