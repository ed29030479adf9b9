//! GET_TOPIC_STATS_INFO and GET_CONSUME_STATS (reference §3.11). Java's fastjson writes these
//! maps with a JSON *object* as the key (`{{"brokerName":…,"queueId":0,"topic":…}:{…}}`), and
//! Java admin tools expect exactly that, so it is written here by hand, not by serde.

use std::fmt::Write;

/// One `MessageQueue` as fastjson writes it (keys sorted).
fn mq_key(broker: &str, topic: &str, queue_id: u32) -> String {
    format!(
        "{{\"brokerName\":{},\"queueId\":{queue_id},\"topic\":{}}}",
        serde_json::Value::from(broker),
        serde_json::Value::from(topic)
    )
}

/// `TopicStatsTable`: per queue (min, max, last update ms).
pub fn topic_stats(broker: &str, topic: &str, queues: &[(u32, u64, u64, i64)]) -> String {
    let mut s = String::from("{\"offsetTable\":{");
    for (i, (q, min, max, ts)) in queues.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(
            s,
            "{}:{{\"lastUpdateTimestamp\":{ts},\"maxOffset\":{max},\"minOffset\":{min}}}",
            mq_key(broker, topic, *q)
        );
    }
    s.push_str("},\"topicPutTps\":0.0}");
    s
}

/// `ConsumeStats`: per (topic, queue) (broker max offset, consumer offset, last ms).
pub fn consume_stats(broker: &str, rows: &[(String, u32, u64, i64, i64)]) -> String {
    let mut s = String::from("{\"consumeTps\":0.0,\"offsetTable\":{");
    for (i, (topic, q, broker_off, consumer_off, ts)) in rows.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(
            s,
            "{}:{{\"brokerOffset\":{broker_off},\"consumerOffset\":{consumer_off},\
             \"lastTimestamp\":{ts},\"pullOffset\":{consumer_off}}}",
            mq_key(broker, topic, *q)
        );
    }
    s.push_str("}}");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fastjson_object_keys() {
        assert_eq!(
            topic_stats("b", "T", &[(0, 1, 5, 7)]),
            r#"{"offsetTable":{{"brokerName":"b","queueId":0,"topic":"T"}:{"lastUpdateTimestamp":7,"maxOffset":5,"minOffset":1}},"topicPutTps":0.0}"#
        );
        let c = consume_stats("b", &[("T".into(), 1, 9, 4, 0)]);
        assert!(
            c.contains(
                r#"{"brokerName":"b","queueId":1,"topic":"T"}:{"brokerOffset":9,"consumerOffset":4"#
            ),
            "{c}"
        );
    }
}
