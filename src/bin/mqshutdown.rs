//! `mqshutdown broker|namesrv`: finds the running `mqbroker` / `mqnamesrv` processes of this
//! user and asks each to stop (SIGTERM: a clean stop), printing as upstream's script does.

fn pids_named(name: &str) -> Vec<u32> {
    let me = std::process::id();
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for ent in rd.flatten() {
        let Some(pid) = ent.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        // /proc/<pid>/comm holds at most 15 characters of the executable name.
        let comm = std::fs::read_to_string(ent.path().join("comm")).unwrap_or_default();
        if comm.trim_end() == name {
            out.push(pid);
        }
    }
    out.sort_unstable();
    out
}

fn main() {
    let target = std::env::args().nth(1).unwrap_or_default();
    let name = match target.as_str() {
        "broker" => "mqbroker",
        "namesrv" => "mqnamesrv",
        _ => {
            eprintln!("Useage: mqshutdown (broker|namesrv)");
            std::process::exit(1);
        }
    };
    let pids = pids_named(name);
    if pids.is_empty() {
        println!("No {name} running.");
        std::process::exit(1);
    }
    for pid in pids {
        println!("The {name}({pid}) is running...");
        // SAFETY: kill(2) with a pid we just read; no memory involved.
        if unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) } == 0 {
            println!("Send shutdown request to {name}({pid}) OK");
        } else {
            println!(
                "Send shutdown request to {name}({pid}) failed: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}
