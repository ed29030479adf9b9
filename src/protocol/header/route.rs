//! Name-server headers (reference §3.7).

use super::{opt_num, req_num, req_str, HeaderError};
use crate::protocol::RemotingCommand;

/// REGISTER_BROKER / UNREGISTER_BROKER request header.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RegisterBrokerRequestHeader {
    pub broker_name: String,
    pub broker_addr: String,
    pub cluster_name: String,
    pub ha_server_addr: String,
    pub broker_id: i64,
    pub heartbeat_timeout_millis: Option<i64>,
    pub compressed: bool,
    pub body_crc32: i64,
}

impl RegisterBrokerRequestHeader {
    pub fn decode(c: &RemotingCommand) -> Result<Self, HeaderError> {
        Ok(RegisterBrokerRequestHeader {
            broker_name: req_str(c, "brokerName")?,
            broker_addr: req_str(c, "brokerAddr")?,
            cluster_name: req_str(c, "clusterName")?,
            ha_server_addr: c.ext("haServerAddr").unwrap_or_default().to_string(),
            broker_id: req_num(c, "brokerId")?,
            heartbeat_timeout_millis: opt_num(c, "heartbeatTimeoutMillis"),
            compressed: c
                .ext("compressed")
                .is_some_and(|v| v.eq_ignore_ascii_case("true")),
            body_crc32: opt_num(c, "bodyCrc32").unwrap_or(0),
        })
    }

    /// Writes the fields (UNREGISTER uses the first four and the id).
    pub fn encode(&self, c: &mut RemotingCommand, register: bool) {
        c.set_ext("brokerName", &self.broker_name);
        c.set_ext("brokerAddr", &self.broker_addr);
        c.set_ext("clusterName", &self.cluster_name);
        c.set_ext("brokerId", self.broker_id);
        if register {
            c.set_ext("haServerAddr", &self.ha_server_addr);
            c.set_ext("compressed", self.compressed);
            c.set_ext("bodyCrc32", self.body_crc32);
            if let Some(t) = self.heartbeat_timeout_millis {
                c.set_ext("heartbeatTimeoutMillis", t);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::HeaderCodec;

    #[test]
    fn register_round_trip() {
        let h = RegisterBrokerRequestHeader {
            broker_name: "broker-a".into(),
            broker_addr: "127.0.0.1:10911".into(),
            cluster_name: "DefaultCluster".into(),
            ha_server_addr: "127.0.0.1:10912".into(),
            broker_id: 0,
            heartbeat_timeout_millis: None,
            compressed: false,
            body_crc32: 12345,
        };
        let mut c = RemotingCommand::request(103, HeaderCodec::Json);
        h.encode(&mut c, true);
        assert_eq!(RegisterBrokerRequestHeader::decode(&c).unwrap(), h);
    }
}
