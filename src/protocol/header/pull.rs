//! PULL_MESSAGE / LITE_PULL_MESSAGE headers (reference §3.3–3.4).

use super::{opt_num, req_num, req_str, HeaderError};
use crate::protocol::RemotingCommand;

/// `PullSysFlag` bits.
pub mod sys_flag {
    pub const COMMIT_OFFSET: i32 = 0x1;
    pub const SUSPEND: i32 = 0x2;
    pub const SUBSCRIPTION: i32 = 0x4;
}

/// `PullMessageRequestHeader`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PullMessageRequestHeader {
    pub consumer_group: String,
    pub topic: String,
    pub queue_id: u32,
    pub queue_offset: i64,
    pub max_msg_nums: i32,
    pub sys_flag: i32,
    pub commit_offset: i64,
    pub suspend_timeout_millis: i64,
    pub subscription: Option<String>,
    pub sub_version: i64,
    pub expression_type: Option<String>,
}

impl PullMessageRequestHeader {
    pub fn decode(c: &RemotingCommand) -> Result<Self, HeaderError> {
        Ok(PullMessageRequestHeader {
            consumer_group: req_str(c, "consumerGroup")?,
            topic: req_str(c, "topic")?,
            queue_id: req_num(c, "queueId")?,
            queue_offset: req_num(c, "queueOffset")?,
            max_msg_nums: opt_num(c, "maxMsgNums").unwrap_or(32),
            sys_flag: opt_num(c, "sysFlag").unwrap_or(0),
            commit_offset: opt_num(c, "commitOffset").unwrap_or(0),
            suspend_timeout_millis: opt_num(c, "suspendTimeoutMillis").unwrap_or(0),
            subscription: c.ext("subscription").map(str::to_string),
            sub_version: opt_num(c, "subVersion").unwrap_or(0),
            expression_type: c.ext("expressionType").map(str::to_string),
        })
    }

    pub fn encode(&self, c: &mut RemotingCommand) {
        c.set_ext("consumerGroup", &self.consumer_group);
        c.set_ext("topic", &self.topic);
        c.set_ext("queueId", self.queue_id);
        c.set_ext("queueOffset", self.queue_offset);
        c.set_ext("maxMsgNums", self.max_msg_nums);
        c.set_ext("sysFlag", self.sys_flag);
        c.set_ext("commitOffset", self.commit_offset);
        c.set_ext("suspendTimeoutMillis", self.suspend_timeout_millis);
        if let Some(s) = &self.subscription {
            c.set_ext("subscription", s);
        }
        c.set_ext("subVersion", self.sub_version);
        if let Some(e) = &self.expression_type {
            c.set_ext("expressionType", e);
        }
    }
}

/// `PullMessageResponseHeader`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PullMessageResponseHeader {
    pub suggest_which_broker_id: i64,
    pub next_begin_offset: i64,
    pub min_offset: i64,
    pub max_offset: i64,
}

impl PullMessageResponseHeader {
    pub fn encode(&self, c: &mut RemotingCommand) {
        c.set_ext("suggestWhichBrokerId", self.suggest_which_broker_id);
        c.set_ext("nextBeginOffset", self.next_begin_offset);
        c.set_ext("minOffset", self.min_offset);
        c.set_ext("maxOffset", self.max_offset);
    }

    pub fn decode(c: &RemotingCommand) -> Result<Self, HeaderError> {
        Ok(PullMessageResponseHeader {
            suggest_which_broker_id: req_num(c, "suggestWhichBrokerId")?,
            next_begin_offset: req_num(c, "nextBeginOffset")?,
            min_offset: req_num(c, "minOffset")?,
            max_offset: req_num(c, "maxOffset")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::HeaderCodec;

    #[test]
    fn round_trips_and_lenient_numbers() {
        let h = PullMessageRequestHeader {
            consumer_group: "g".into(),
            topic: "T".into(),
            queue_id: 2,
            queue_offset: 10,
            max_msg_nums: 32,
            sys_flag: sys_flag::SUSPEND,
            commit_offset: 0,
            suspend_timeout_millis: 15000,
            subscription: None,
            sub_version: 1,
            expression_type: Some("TAG".into()),
        };
        let mut c = RemotingCommand::request(11, HeaderCodec::RocketMq);
        h.encode(&mut c);
        assert_eq!(PullMessageRequestHeader::decode(&c).unwrap(), h);
        c.set_ext("queueOffset", " 10 ");
        assert_eq!(
            PullMessageRequestHeader::decode(&c).unwrap().queue_offset,
            10
        );
        c.set_ext("queueId", "x");
        assert!(PullMessageRequestHeader::decode(&c).is_err());
        let r = PullMessageResponseHeader {
            suggest_which_broker_id: 0,
            next_begin_offset: 5,
            min_offset: 0,
            max_offset: 9,
        };
        let mut c = RemotingCommand::request(0, HeaderCodec::Json);
        r.encode(&mut c);
        assert_eq!(PullMessageResponseHeader::decode(&c).unwrap(), r);
    }
}
