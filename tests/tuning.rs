//! `tuning/apply.sh` against a fake `sysctl` (values in a temp dir), so the host is never
//! touched: --apply changes what differs, writes a revert script, and a second run finds
//! nothing to change; the revert script restores the old values.

use std::path::Path;
use std::process::Command;

fn fake_tools(dir: &Path) {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let vals = dir.join("vals");
    std::fs::create_dir_all(&vals).unwrap();
    for (k, v) in [
        ("vm.swappiness", "60"),
        ("net.core.somaxconn", "128"),
        ("net.ipv4.tcp_max_syn_backlog", "512"),
        ("net.core.rmem_max", "212992"),
        ("net.core.wmem_max", "212992"),
        ("net.ipv4.tcp_rmem", "4096\t131072\t6291456"),
        ("net.ipv4.tcp_wmem", "4096\t16384\t4194304"),
        ("kernel.io_uring_disabled", "0"),
        ("fs.file-max", "9223372036854775807"),
    ] {
        std::fs::write(vals.join(k), v).unwrap();
    }
    // sysctl -n KEY | sysctl -w KEY=VALUE, over files in $FAKE_SYSCTL.
    let sysctl = r#"#!/bin/sh
if [ "$1" = -n ]; then cat "$FAKE_SYSCTL/$2" 2>/dev/null || exit 1; exit 0; fi
if [ "$1" = -w ]; then k="${2%%=*}"; v="${2#*=}"; [ -e "$FAKE_SYSCTL/$k" ] || exit 1; printf '%s' "$v" > "$FAKE_SYSCTL/$k"; exit 0; fi
exit 2
"#;
    std::fs::write(bin.join("sysctl"), sysctl).unwrap();
    std::fs::write(bin.join("id"), "#!/bin/sh\necho 0\n").unwrap();
    for f in ["sysctl", "id"] {
        Command::new("chmod")
            .arg("+x")
            .arg(bin.join(f))
            .status()
            .unwrap();
    }
}

fn run(dir: &Path, args: &[&str]) -> (i32, String) {
    run_after(dir, "true", args)
}

/// As [`run`], in a shell that first runs `setup` (a `ulimit`, say).
fn run_after(dir: &Path, setup: &str, args: &[&str]) -> (i32, String) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tuning/apply.sh");
    let path = format!(
        "{}:{}",
        dir.join("bin").display(),
        std::env::var("PATH").unwrap()
    );
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!("{setup} && exec bash \"$0\" \"$@\""))
        .arg(script)
        .args(args)
        .args(["--store", dir.to_str().unwrap()])
        .env("PATH", path)
        .env("FAKE_SYSCTL", dir.join("vals"))
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

fn val(dir: &Path, k: &str) -> String {
    std::fs::read_to_string(dir.join("vals").join(k)).unwrap()
}

#[test]
fn apply_sets_what_differs_once_and_the_revert_script_restores_it() {
    let dir = tempfile::tempdir().unwrap();
    fake_tools(dir.path());
    let (code, out) = run(dir.path(), &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("DIFF  vm.swappiness"), "{out}");
    assert!(out.contains("ok    kernel.io_uring_disabled"), "{out}");
    assert_eq!(
        val(dir.path(), "vm.swappiness"),
        "60",
        "check changes nothing"
    );

    let (_, dry) = run(dir.path(), &["--dry-run"]);
    assert!(
        dry.contains("sysctl -w net.core.somaxconn=\"4096\""),
        "{dry}"
    );

    let (_, out) = run(dir.path(), &["--apply"]);
    assert!(out.contains("set vm.swappiness = 1 (was 60)"), "{out}");
    assert_eq!(val(dir.path(), "vm.swappiness"), "1");
    assert_eq!(val(dir.path(), "net.ipv4.tcp_wmem"), "4096 131072 16777216");
    let revert = out
        .lines()
        .find_map(|l| l.strip_prefix("revert with: sh "))
        .unwrap_or_else(|| panic!("{out}"))
        .to_string();

    let (_, again) = run(dir.path(), &["--apply"]);
    assert!(again.contains("sysctls: nothing to change"), "{again}");

    let path = format!(
        "{}:{}",
        dir.path().join("bin").display(),
        std::env::var("PATH").unwrap()
    );
    let st = Command::new("sh")
        .arg(&revert)
        .env("PATH", path)
        .env("FAKE_SYSCTL", dir.path().join("vals"))
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(val(dir.path(), "vm.swappiness"), "60");
    assert_eq!(val(dir.path(), "net.core.somaxconn"), "128");
    let _ = std::fs::remove_file(revert);
}

#[test]
fn a_file_size_limit_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    fake_tools(dir.path());
    let (code, text) = run_after(dir.path(), "ulimit -f 1024", &[]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("DIFF  ulimit -f"), "{text}");
}
