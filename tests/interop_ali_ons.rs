//! Interoperability with a real third-party client from npm: `ali-ons` (pure JavaScript,
//! RocketMQ remoting protocol). `tests/interop/ali_ons.js` produces 100 messages with tags
//! and keys and consumes them back in clustering mode; every message must arrive exactly
//! once, with the same body, tag and key. `.ci/run` installs the package (`npm ci`).

mod common;
use common::remoting::*;
use std::collections::BTreeMap;
use std::path::Path;

#[test]
fn ali_ons_produces_and_consumes_100_messages() {
    let interop = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop");
    if !interop.join("node_modules/ali-ons").exists() {
        // CI installs it; a developer without `npm ci` gets a clear failure in CI only.
        assert!(
            std::env::var_os("CI").is_none(),
            "ali-ons is not installed: run `npm ci` in tests/interop"
        );
        eprintln!("skipped: run `npm ci` in tests/interop to enable the ali-ons interop test");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_ns, ns_port) = start_namesrv(dir.path(), &[]);
    let (_broker, port) = start_broker(&dir.path().join("store"), ns_port, &[]);
    // ali-ons does not auto-create topics: create it as an admin would.
    create_topic(port, "InteropTopic", 4);
    wait_route(ns_port, "InteropTopic");

    let out = std::process::Command::new("node")
        .arg(interop.join("ali_ons.js"))
        .args([
            &format!("127.0.0.1:{ns_port}"),
            "InteropTopic",
            "interop_group",
            "100",
        ])
        .current_dir(&interop)
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "ali-ons script failed:\n{}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut sent = BTreeMap::new();
    let mut got: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for line in stdout.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        if let Some(s) = v.get("sent") {
            let i = s["i"].as_u64().unwrap();
            sent.insert(
                format!("interop body {i}"),
                (
                    s["tag"].as_str().unwrap().to_string(),
                    s["key"].as_str().unwrap().to_string(),
                ),
            );
            assert_eq!(s["msgId"].as_str().unwrap().len(), 32, "{s}");
        }
        if let Some(g) = v.get("got") {
            let keys = match &g["keys"] {
                serde_json::Value::Array(a) => a
                    .iter()
                    .filter_map(|k| k.as_str())
                    .collect::<Vec<_>>()
                    .join(" "),
                serde_json::Value::String(s) => s.clone(),
                _ => String::new(),
            };
            got.entry(g["body"].as_str().unwrap().to_string())
                .or_default()
                .push((g["tags"].as_str().unwrap_or("").to_string(), keys));
        }
    }
    assert_eq!(sent.len(), 100, "{stdout}");
    assert_eq!(got.len(), 100, "not every message was consumed");
    for (body, (tag, key)) in &sent {
        let seen = &got[body];
        assert_eq!(seen.len(), 1, "{body} consumed {} times", seen.len());
        assert_eq!(&seen[0].0, tag, "{body}");
        assert_eq!(&seen[0].1, key, "{body}");
    }
}
