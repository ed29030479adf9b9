//! `mqadmin` commands, named and shaped as upstream's `tools` module: each talks to name
//! servers and brokers over the wire through the client's [`RemotingClient`] and returns what
//! the command prints. `bin/mqadmin.rs` only parses arguments.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::client::remoting::{namesrv_addrs, ClientError, RemotingClient};
use crate::namesrv::route::ClusterInfo;
use crate::protocol::code::{request, response};
use crate::protocol::{HeaderCodec, RemotingCommand};

/// What a command can fail with; the text is what `mqadmin` prints.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{0}")]
    Client(#[from] ClientError),
    /// The server answered with an error code.
    #[error("{addr}: CODE: {code} DESC: {remark}")]
    Refused {
        addr: String,
        code: i32,
        remark: String,
    },
    #[error("{0}")]
    Usage(String),
}

/// A broker's address and its settings, key → value.
pub type BrokerSettings = (String, BTreeMap<String, String>);

/// Where a broker command goes: one broker, or every master of a cluster.
pub enum Target<'a> {
    Broker(&'a str),
    Cluster(&'a str),
}

/// An admin session: the name servers to ask and the connections it opened.
pub struct Admin {
    client: Arc<RemotingClient>,
    namesrv: Vec<String>,
    timeout: Duration,
}

impl Admin {
    /// `namesrv` as `a:9876;b:9876`, else `NAMESRV_ADDR`.
    pub fn new(namesrv: Option<&str>) -> Admin {
        Admin {
            client: RemotingClient::new().0,
            namesrv: namesrv_addrs(namesrv),
            timeout: Duration::from_secs(5),
        }
    }

    fn call(&self, addr: &str, req: RemotingCommand) -> Result<RemotingCommand, AdminError> {
        let r = self.client.invoke(addr, req, self.timeout)?;
        if r.code != response::SUCCESS {
            return Err(AdminError::Refused {
                addr: addr.to_string(),
                code: r.code,
                remark: r.remark.unwrap_or_default(),
            });
        }
        Ok(r)
    }

    /// GET_BROKER_CLUSTER_INFO from the first name server that answers.
    pub fn cluster_info(&self) -> Result<ClusterInfo, AdminError> {
        if self.namesrv.is_empty() {
            return Err(AdminError::Usage(
                "no name server: give -n host:port or set NAMESRV_ADDR".into(),
            ));
        }
        let mut last = None;
        for ns in &self.namesrv {
            let req = RemotingCommand::request(request::GET_BROKER_CLUSTER_INFO, HeaderCodec::Json);
            match self.call(ns, req) {
                Ok(r) => {
                    return crate::protocol::json::parse(&r.body)
                        .map_err(|e| AdminError::Usage(format!("{ns}: bad cluster info: {e}")))
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| AdminError::Usage("no name server answered".into())))
    }

    /// The broker addresses a command goes to (a cluster's masters, by broker name).
    pub fn brokers(&self, target: &Target<'_>) -> Result<Vec<String>, AdminError> {
        match target {
            Target::Broker(a) => Ok(vec![a.to_string()]),
            Target::Cluster(c) => {
                let info = self.cluster_info()?;
                let names = info.cluster_addr_table.get(*c).ok_or_else(|| {
                    AdminError::Usage(format!("cluster {c} is not known to the name server"))
                })?;
                Ok(names
                    .iter()
                    .filter_map(|n| info.broker_addr_table.get(n))
                    .filter_map(|b| b.broker_addrs.get(&0).cloned())
                    .collect())
            }
        }
    }

    /// `updateBrokerConfig -b|-c -k -v`: UPDATE_BROKER_CONFIG with one `key=value`. Returns
    /// the brokers updated.
    pub fn update_broker_config(
        &self,
        target: &Target<'_>,
        key: &str,
        value: &str,
    ) -> Result<Vec<String>, AdminError> {
        if key.is_empty() || key.contains(['=', '\n']) || value.contains('\n') {
            return Err(AdminError::Usage(format!(
                "bad key or value: {key:?}={value:?}"
            )));
        }
        let brokers = self.brokers(target)?;
        for b in &brokers {
            let mut req =
                RemotingCommand::request(request::UPDATE_BROKER_CONFIG, HeaderCodec::Json);
            req.body = Bytes::from(format!("{key}={value}\n"));
            self.call(b, req)?;
        }
        Ok(brokers)
    }

    /// `getBrokerConfig -b|-c`: GET_BROKER_CONFIG of each broker, as key → value.
    pub fn get_broker_config(
        &self,
        target: &Target<'_>,
    ) -> Result<Vec<BrokerSettings>, AdminError> {
        let mut out = Vec::new();
        for b in self.brokers(target)? {
            let req = RemotingCommand::request(request::GET_BROKER_CONFIG, HeaderCodec::Json);
            let r = self.call(&b, req)?;
            let text = String::from_utf8_lossy(&r.body);
            let props = crate::config::parse_properties(&text, &b)
                .map_err(|e| AdminError::Usage(e.to_string()))?;
            out.push((b, props.into_iter().map(|p| (p.key, p.value)).collect()));
        }
        Ok(out)
    }
}

/// Upstream's `getBrokerConfig` layout: a banner per broker, then `key = value` lines.
pub fn format_broker_config(configs: &[BrokerSettings]) -> String {
    let mut s = String::new();
    for (addr, kv) in configs {
        s.push_str(&format!("============{addr}============\n"));
        for (k, v) in kv {
            s.push_str(&format!("{k:<50}=  {v}\n"));
        }
    }
    s
}
