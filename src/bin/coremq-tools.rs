//! `coremq-tools <example class>`: the quickstart examples upstream's `bin/tools.sh` runs,
//! by the same class names. `NAMESRV_ADDR` says where the name server is.
//!
//! - `org.apache.rocketmq.example.quickstart.Producer`: 1000 messages to `TopicTest`, tag
//!   `TagA`, one `SendResult [...]` line per message.
//! - `org.apache.rocketmq.example.quickstart.Consumer`: consumes `TopicTest` as group
//!   `please_rename_unique_group_name_4`, printing `ConsumeMessageThread_N Receive New
//!   Messages: [MessageExt [...]]` per batch, until killed (or `COREMQ_QUICKSTART_SECONDS`).

use coremq::client::{Message, Producer, PushConsumer};

const PRODUCER: &str = "org.apache.rocketmq.example.quickstart.Producer";
const CONSUMER: &str = "org.apache.rocketmq.example.quickstart.Consumer";

fn main() {
    let class = std::env::args().nth(1).unwrap_or_default();
    let code = match class.as_str() {
        PRODUCER | "producer" => producer(),
        CONSUMER | "consumer" => consumer(),
        _ => {
            eprintln!("usage: tools.sh {PRODUCER} | {CONSUMER}");
            1
        }
    };
    std::process::exit(code);
}

fn producer() -> i32 {
    let count: usize = std::env::var("COREMQ_QUICKSTART_COUNT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let p = match Producer::new("please_rename_unique_group_name", None) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            return 1;
        }
    };
    for i in 0..count {
        let msg = Message::new(
            "TopicTest",
            "TagA",
            format!("Hello RocketMQ {i}").into_bytes(),
        );
        match p.send(&msg) {
            Ok(r) => println!("{r}"),
            Err(e) => {
                eprintln!("send failed: {e}");
                std::thread::sleep(std::time::Duration::from_secs(1));
            }
        }
    }
    0
}

fn consumer() -> i32 {
    let c = match PushConsumer::start(
        "please_rename_unique_group_name_4",
        None,
        &[("TopicTest", "*")],
        move |msgs| {
            let list: Vec<String> = msgs.iter().map(|m| m.to_string()).collect();
            // The listener runs on a `ConsumeMessageThread_N` thread, as upstream's does.
            println!(
                "{} Receive New Messages: [{}]",
                std::thread::current()
                    .name()
                    .unwrap_or("ConsumeMessageThread"),
                list.join(", ")
            );
        },
    ) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return 1;
        }
    };
    println!("Consumer Started.");
    match std::env::var("COREMQ_QUICKSTART_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        Some(secs) => std::thread::sleep(std::time::Duration::from_secs(secs)),
        None => loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        },
    }
    c.shutdown();
    0
}
