//! SEND_MESSAGE (V1 keys), SEND_MESSAGE_V2 / SEND_BATCH_MESSAGE (one-letter keys) and the
//! send response (reference §3.1–3.2).

use super::{opt_bool, opt_num, req_num, req_str, HeaderError};
use crate::protocol::code::request;
use crate::protocol::RemotingCommand;

/// `SendMessageRequestHeader`; V2 commands are read into the same struct.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SendMessageRequestHeader {
    pub producer_group: String,
    pub topic: String,
    pub default_topic: String,
    pub default_topic_queue_nums: i32,
    pub queue_id: i32,
    pub sys_flag: i32,
    pub born_timestamp: i64,
    pub flag: i32,
    pub properties: Option<String>,
    pub reconsume_times: Option<i32>,
    pub unit_mode: Option<bool>,
    pub max_reconsume_times: Option<i32>,
    pub batch: Option<bool>,
}

/// (V1 key, V2 key) per field.
const KEYS: [(&str, &str); 13] = [
    ("producerGroup", "a"),
    ("topic", "b"),
    ("defaultTopic", "c"),
    ("defaultTopicQueueNums", "d"),
    ("queueId", "e"),
    ("sysFlag", "f"),
    ("bornTimestamp", "g"),
    ("flag", "h"),
    ("properties", "i"),
    ("reconsumeTimes", "j"),
    ("unitMode", "k"),
    ("maxReconsumeTimes", "l"),
    ("batch", "m"),
];

impl SendMessageRequestHeader {
    /// Decodes by request code: 10 with V1 keys, 310 and 320 with V2 keys.
    pub fn decode(c: &RemotingCommand) -> Result<Self, HeaderError> {
        let v2 = c.code == request::SEND_MESSAGE_V2 || c.code == request::SEND_BATCH_MESSAGE;
        let k = |i: usize| if v2 { KEYS[i].1 } else { KEYS[i].0 };
        Ok(SendMessageRequestHeader {
            // Java requires these; clients that omit the group still deserve an answer.
            producer_group: c.ext(k(0)).unwrap_or_default().to_string(),
            topic: req_str(c, if v2 { "b" } else { "topic" })?,
            default_topic: c.ext(k(2)).unwrap_or("TBW102").to_string(),
            default_topic_queue_nums: opt_num(c, k(3)).unwrap_or(4),
            queue_id: req_num(c, if v2 { "e" } else { "queueId" })?,
            sys_flag: opt_num(c, k(5)).unwrap_or(0),
            born_timestamp: opt_num(c, k(6)).unwrap_or(0),
            flag: opt_num(c, k(7)).unwrap_or(0),
            properties: c.ext(k(8)).map(str::to_string),
            reconsume_times: opt_num(c, k(9)),
            unit_mode: opt_bool(c, k(10)),
            max_reconsume_times: opt_num(c, k(11)),
            batch: opt_bool(c, k(12)),
        })
    }

    /// Writes the fields into `c` with V1 or V2 keys.
    pub fn encode(&self, c: &mut RemotingCommand, v2: bool) {
        let vals: [Option<String>; 13] = [
            Some(self.producer_group.clone()),
            Some(self.topic.clone()),
            Some(self.default_topic.clone()),
            Some(self.default_topic_queue_nums.to_string()),
            Some(self.queue_id.to_string()),
            Some(self.sys_flag.to_string()),
            Some(self.born_timestamp.to_string()),
            Some(self.flag.to_string()),
            self.properties.clone(),
            self.reconsume_times.map(|v| v.to_string()),
            self.unit_mode.map(|v| v.to_string()),
            self.max_reconsume_times.map(|v| v.to_string()),
            self.batch.map(|v| v.to_string()),
        ];
        for (i, v) in vals.into_iter().enumerate() {
            if let Some(v) = v {
                c.set_ext(if v2 { KEYS[i].1 } else { KEYS[i].0 }, v);
            }
        }
    }
}

/// `SendMessageResponseHeader`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SendMessageResponseHeader {
    pub msg_id: String,
    pub queue_id: i32,
    pub queue_offset: i64,
    pub transaction_id: Option<String>,
}

impl SendMessageResponseHeader {
    pub fn encode(&self, c: &mut RemotingCommand) {
        c.set_ext("msgId", &self.msg_id);
        c.set_ext("queueId", self.queue_id);
        c.set_ext("queueOffset", self.queue_offset);
        if let Some(t) = &self.transaction_id {
            c.set_ext("transactionId", t);
        }
    }

    pub fn decode(c: &RemotingCommand) -> Result<Self, HeaderError> {
        Ok(SendMessageResponseHeader {
            msg_id: req_str(c, "msgId")?,
            queue_id: req_num(c, "queueId")?,
            queue_offset: req_num(c, "queueOffset")?,
            transaction_id: c.ext("transactionId").map(str::to_string),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::HeaderCodec;

    fn sample() -> SendMessageRequestHeader {
        SendMessageRequestHeader {
            producer_group: "pg".into(),
            topic: "T".into(),
            default_topic: "TBW102".into(),
            default_topic_queue_nums: 4,
            queue_id: 3,
            sys_flag: 0,
            born_timestamp: 1700000000000,
            flag: 0,
            properties: Some("TAGS\u{1}A\u{2}".into()),
            reconsume_times: Some(0),
            unit_mode: Some(false),
            max_reconsume_times: None,
            batch: None,
        }
    }

    #[test]
    fn v1_and_v2_round_trip_to_the_same_header() {
        for (code, v2) in [
            (request::SEND_MESSAGE, false),
            (request::SEND_MESSAGE_V2, true),
        ] {
            let mut c = RemotingCommand::request(code, HeaderCodec::Json);
            sample().encode(&mut c, v2);
            assert_eq!(c.ext(if v2 { "b" } else { "topic" }), Some("T"));
            assert_eq!(SendMessageRequestHeader::decode(&c).unwrap(), sample());
        }
    }

    #[test]
    fn missing_required_fields_use_upstreams_text() {
        let c = RemotingCommand::request(request::SEND_MESSAGE_V2, HeaderCodec::Json);
        assert_eq!(
            SendMessageRequestHeader::decode(&c)
                .unwrap_err()
                .to_string(),
            "the custom field <b> is null"
        );
    }

    #[test]
    fn response_round_trip() {
        let r = SendMessageResponseHeader {
            msg_id: "7F00000100002A9F0000000000001234".into(),
            queue_id: 1,
            queue_offset: 9,
            transaction_id: Some("U".into()),
        };
        let mut c = RemotingCommand::request(0, HeaderCodec::Json);
        r.encode(&mut c);
        assert_eq!(SendMessageResponseHeader::decode(&c).unwrap(), r);
    }
}
