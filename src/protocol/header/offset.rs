//! Offset headers (reference §3.5).

use super::{opt_bool, req_num, req_str, HeaderError};
use crate::protocol::RemotingCommand;

/// QUERY_CONSUMER_OFFSET / UPDATE_CONSUMER_OFFSET: group, topic, queue and (update) offset.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConsumerOffsetHeader {
    pub consumer_group: String,
    pub topic: String,
    pub queue_id: u32,
    /// `commitOffset` (UPDATE only).
    pub commit_offset: Option<i64>,
    /// `setZeroIfNotFound` (QUERY only; absent counts as true, as upstream).
    pub set_zero_if_not_found: Option<bool>,
}

impl ConsumerOffsetHeader {
    pub fn decode(c: &RemotingCommand) -> Result<Self, HeaderError> {
        Ok(ConsumerOffsetHeader {
            consumer_group: req_str(c, "consumerGroup")?,
            topic: req_str(c, "topic")?,
            queue_id: req_num(c, "queueId")?,
            commit_offset: c.ext("commitOffset").and_then(|v| v.trim().parse().ok()),
            set_zero_if_not_found: opt_bool(c, "setZeroIfNotFound"),
        })
    }

    /// Decodes an UPDATE, whose `commitOffset` is required.
    pub fn decode_update(c: &RemotingCommand) -> Result<(Self, i64), HeaderError> {
        let h = Self::decode(c)?;
        let o = req_num(c, "commitOffset")?;
        Ok((h, o))
    }
}

/// GET_MIN_OFFSET / GET_MAX_OFFSET / GET_EARLIEST_MSG_STORETIME / SEARCH_OFFSET_BY_TIMESTAMP.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct QueueHeader {
    pub topic: String,
    pub queue_id: u32,
}

impl QueueHeader {
    pub fn decode(c: &RemotingCommand) -> Result<Self, HeaderError> {
        Ok(QueueHeader {
            topic: req_str(c, "topic")?,
            queue_id: req_num(c, "queueId")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::HeaderCodec;

    #[test]
    fn update_needs_its_offset() {
        let mut c = RemotingCommand::request(15, HeaderCodec::Json);
        c.set_ext("consumerGroup", "g");
        c.set_ext("topic", "T");
        c.set_ext("queueId", "1");
        assert_eq!(
            ConsumerOffsetHeader::decode_update(&c)
                .unwrap_err()
                .to_string(),
            "the custom field <commitOffset> is null"
        );
        c.set_ext("commitOffset", "7");
        assert_eq!(ConsumerOffsetHeader::decode_update(&c).unwrap().1, 7);
        c.set_ext("setZeroIfNotFound", "false");
        assert_eq!(
            ConsumerOffsetHeader::decode(&c)
                .unwrap()
                .set_zero_if_not_found,
            Some(false)
        );
    }
}
