//! The name server's route table (upstream `RouteInfoManager`): topics → queue data per
//! broker, brokers → addresses by id, clusters → broker names, and broker liveness.
//! Single-threaded (the name server runs one executor); no state on disk.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

/// `DataVersion`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DataVersion {
    pub state_version: i64,
    pub timestamp: i64,
    pub counter: i64,
}

/// `TopicConfig` as it travels in REGISTER_BROKER and GET_ALL_TOPIC_CONFIG.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TopicConfig {
    pub topic_name: String,
    pub read_queue_nums: u32,
    pub write_queue_nums: u32,
    pub perm: u32,
    pub topic_filter_type: String,
    pub topic_sys_flag: i32,
    pub order: bool,
    pub attributes: BTreeMap<String, String>,
}

impl Default for TopicConfig {
    fn default() -> Self {
        // Upstream's class defaults (reference §8.2).
        TopicConfig {
            topic_name: String::new(),
            read_queue_nums: 16,
            write_queue_nums: 16,
            perm: 6,
            topic_filter_type: "SINGLE_TAG".into(),
            topic_sys_flag: 0,
            order: false,
            attributes: BTreeMap::new(),
        }
    }
}

/// `TopicConfigSerializeWrapper`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TopicConfigWrapper {
    pub topic_config_table: BTreeMap<String, TopicConfig>,
    pub data_version: DataVersion,
}

/// `RegisterBrokerBody` (uncompressed form, reference §3.8).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RegisterBrokerBody {
    pub topic_config_serialize_wrapper: TopicConfigWrapper,
    pub filter_server_list: Vec<String>,
}

/// `QueueData` of a route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueueData {
    pub broker_name: String,
    pub read_queue_nums: u32,
    pub write_queue_nums: u32,
    pub perm: u32,
    /// `topicSynFlag` up to 4.5.x.
    #[serde(alias = "topicSynFlag", default)]
    pub topic_sys_flag: i32,
}

/// `BrokerData`: the addresses of one broker name (master id 0, slaves > 0).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BrokerData {
    pub cluster: String,
    pub broker_name: String,
    /// brokerId → `ip:port`; serialised with quoted keys (reference §3.9).
    pub broker_addrs: BTreeMap<i64, String>,
    #[serde(default)]
    pub enable_acting_master: bool,
}

/// `TopicRouteData`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TopicRouteData {
    pub broker_datas: Vec<BrokerData>,
    pub queue_datas: Vec<QueueData>,
    #[serde(default)]
    pub filter_server_table: BTreeMap<String, Vec<String>>,
}

/// `ClusterInfo`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterInfo {
    pub broker_addr_table: BTreeMap<String, BrokerData>,
    pub cluster_addr_table: BTreeMap<String, BTreeSet<String>>,
}

struct Live {
    last_update_ms: i64,
    timeout_ms: i64,
    data_version: DataVersion,
    ha_server_addr: String,
}

/// What a registration returns to a slave: its master's addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Registered {
    pub master_addr: Option<String>,
    pub ha_server_addr: Option<String>,
}

/// A broker registration.
#[derive(Debug, Clone)]
pub struct Registration<'a> {
    pub cluster: &'a str,
    pub broker_name: &'a str,
    pub broker_addr: &'a str,
    pub broker_id: i64,
    pub ha_server_addr: &'a str,
    pub timeout_ms: i64,
    pub topics: Option<&'a TopicConfigWrapper>,
}

/// Default broker expiry (`DEFAULT_BROKER_CHANNEL_EXPIRED_TIME`).
pub const BROKER_EXPIRY_MS: i64 = 120_000;

#[derive(Default)]
pub struct RouteTable {
    topic_queues: BTreeMap<String, BTreeMap<String, QueueData>>,
    brokers: BTreeMap<String, BrokerData>,
    clusters: BTreeMap<String, BTreeSet<String>>,
    live: HashMap<String, Live>,
}

impl RouteTable {
    /// REGISTER_BROKER: records the broker, refreshes its liveness and (for a master whose
    /// data version changed, or on first registration) its topics.
    pub fn register(&mut self, r: &Registration<'_>, now_ms: i64) -> Registered {
        self.clusters
            .entry(r.cluster.to_string())
            .or_default()
            .insert(r.broker_name.to_string());
        let bd = self
            .brokers
            .entry(r.broker_name.to_string())
            .or_insert_with(|| BrokerData {
                cluster: r.cluster.to_string(),
                broker_name: r.broker_name.to_string(),
                broker_addrs: BTreeMap::new(),
                enable_acting_master: false,
            });
        // One address per id: a restarted broker may come back on another address.
        bd.broker_addrs
            .retain(|id, addr| *id == r.broker_id || addr != r.broker_addr);
        let first = bd
            .broker_addrs
            .insert(r.broker_id, r.broker_addr.to_string())
            .is_none();
        let version = r.topics.map(|t| t.data_version.clone()).unwrap_or_default();
        let changed = self
            .live
            .get(r.broker_addr)
            .map(|l| l.data_version != version)
            .unwrap_or(true);
        if r.broker_id == 0 && (first || changed) {
            if let Some(t) = r.topics {
                for tc in t.topic_config_table.values() {
                    self.topic_queues
                        .entry(tc.topic_name.clone())
                        .or_default()
                        .insert(
                            r.broker_name.to_string(),
                            QueueData {
                                broker_name: r.broker_name.to_string(),
                                read_queue_nums: tc.read_queue_nums,
                                write_queue_nums: tc.write_queue_nums,
                                perm: tc.perm,
                                topic_sys_flag: tc.topic_sys_flag,
                            },
                        );
                }
                // Topics the master no longer has lose this broker.
                for (topic, qs) in self.topic_queues.iter_mut() {
                    if !t.topic_config_table.contains_key(topic) {
                        qs.remove(r.broker_name);
                    }
                }
                self.topic_queues.retain(|_, qs| !qs.is_empty());
            }
        }
        self.live.insert(
            r.broker_addr.to_string(),
            Live {
                last_update_ms: now_ms,
                timeout_ms: if r.timeout_ms > 0 {
                    r.timeout_ms
                } else {
                    BROKER_EXPIRY_MS
                },
                data_version: version,
                ha_server_addr: r.ha_server_addr.to_string(),
            },
        );
        let mut out = Registered::default();
        if r.broker_id != 0 {
            if let Some(master) = self
                .brokers
                .get(r.broker_name)
                .and_then(|b| b.broker_addrs.get(&0))
            {
                if let Some(l) = self.live.get(master) {
                    out.master_addr = Some(master.clone());
                    out.ha_server_addr = Some(l.ha_server_addr.clone());
                }
            }
        }
        out
    }

    /// UNREGISTER_BROKER, and the removal of an expired broker.
    pub fn unregister(&mut self, cluster: &str, broker_name: &str, addr: &str, broker_id: i64) {
        self.live.remove(addr);
        let mut name_gone = false;
        if let Some(bd) = self.brokers.get_mut(broker_name) {
            if bd.broker_addrs.get(&broker_id).map(String::as_str) == Some(addr) {
                bd.broker_addrs.remove(&broker_id);
            }
            name_gone = bd.broker_addrs.is_empty();
        }
        if name_gone {
            self.brokers.remove(broker_name);
            if let Some(c) = self.clusters.get_mut(cluster) {
                c.remove(broker_name);
                if c.is_empty() {
                    self.clusters.remove(cluster);
                }
            }
        }
        // A broker name without a live master serves no queues.
        let master_alive = self
            .brokers
            .get(broker_name)
            .is_some_and(|b| b.broker_addrs.contains_key(&0));
        if !master_alive {
            for qs in self.topic_queues.values_mut() {
                qs.remove(broker_name);
            }
            self.topic_queues.retain(|_, qs| !qs.is_empty());
        }
    }

    /// Drops brokers silent for longer than their timeout; returns their addresses.
    pub fn expire(&mut self, now_ms: i64) -> Vec<String> {
        let dead: Vec<String> = self
            .live
            .iter()
            .filter(|(_, l)| now_ms - l.last_update_ms > l.timeout_ms)
            .map(|(a, _)| a.clone())
            .collect();
        for addr in &dead {
            let owner = self.brokers.iter().find_map(|(name, bd)| {
                bd.broker_addrs
                    .iter()
                    .find(|(_, a)| *a == addr)
                    .map(|(id, _)| (bd.cluster.clone(), name.clone(), *id))
            });
            match owner {
                Some((cluster, name, id)) => self.unregister(&cluster, &name, addr, id),
                None => {
                    self.live.remove(addr);
                }
            }
        }
        dead
    }

    /// GET_ROUTEINFO_BY_TOPIC.
    pub fn route(&self, topic: &str) -> Option<TopicRouteData> {
        let qs = self.topic_queues.get(topic)?;
        let broker_datas: Vec<BrokerData> = qs
            .keys()
            .filter_map(|name| self.brokers.get(name).cloned())
            .collect();
        if broker_datas.is_empty() {
            return None;
        }
        Some(TopicRouteData {
            broker_datas,
            queue_datas: qs.values().cloned().collect(),
            filter_server_table: BTreeMap::new(),
        })
    }

    /// GET_BROKER_CLUSTER_INFO.
    pub fn cluster_info(&self) -> ClusterInfo {
        ClusterInfo {
            broker_addr_table: self.brokers.clone(),
            cluster_addr_table: self.clusters.clone(),
        }
    }

    /// GET_ALL_TOPIC_LIST_FROM_NAMESERVER.
    pub fn topics(&self) -> Vec<String> {
        self.topic_queues.keys().cloned().collect()
    }

    /// DELETE_TOPIC_IN_NAMESRV (optionally only the brokers of one cluster).
    pub fn delete_topic(&mut self, topic: &str, cluster: Option<&str>) {
        match cluster {
            None => {
                self.topic_queues.remove(topic);
            }
            Some(c) => {
                let names = self.clusters.get(c).cloned().unwrap_or_default();
                if let Some(qs) = self.topic_queues.get_mut(topic) {
                    qs.retain(|b, _| !names.contains(b));
                    if qs.is_empty() {
                        self.topic_queues.remove(topic);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wrapper(topics: &[(&str, u32)], counter: i64) -> TopicConfigWrapper {
        TopicConfigWrapper {
            topic_config_table: topics
                .iter()
                .map(|(t, q)| {
                    (
                        t.to_string(),
                        TopicConfig {
                            topic_name: t.to_string(),
                            read_queue_nums: *q,
                            write_queue_nums: *q,
                            ..Default::default()
                        },
                    )
                })
                .collect(),
            data_version: DataVersion {
                counter,
                ..Default::default()
            },
        }
    }

    fn reg<'a>(
        name: &'a str,
        addr: &'a str,
        id: i64,
        t: &'a TopicConfigWrapper,
    ) -> Registration<'a> {
        Registration {
            cluster: "DefaultCluster",
            broker_name: name,
            broker_addr: addr,
            broker_id: id,
            ha_server_addr: "127.0.0.1:10912",
            timeout_ms: 0,
            topics: Some(t),
        }
    }

    #[test]
    fn register_route_expire() {
        let mut rt = RouteTable::default();
        let w = wrapper(&[("TopicTest", 4)], 1);
        rt.register(&reg("broker-a", "127.0.0.1:10911", 0, &w), 0);
        let w2 = wrapper(&[("TopicTest", 8), ("Other", 2)], 1);
        rt.register(&reg("broker-b", "127.0.0.1:11911", 0, &w2), 0);
        let r = rt.route("TopicTest").unwrap();
        assert_eq!(r.broker_datas.len(), 2);
        assert_eq!(
            r.queue_datas
                .iter()
                .map(|q| q.write_queue_nums)
                .sum::<u32>(),
            12
        );
        assert!(rt.route("Nope").is_none());
        // A slave learns its master.
        let s = rt.register(&reg("broker-a", "127.0.0.1:10921", 1, &w), 0);
        assert_eq!(s.master_addr.as_deref(), Some("127.0.0.1:10911"));
        // broker-b keeps registering; broker-a (master and slave) go silent.
        rt.register(&reg("broker-b", "127.0.0.1:11911", 0, &w2), 100_000);
        let dead = rt.expire(121_000);
        assert_eq!(dead.len(), 2, "{dead:?}");
        let r = rt.route("TopicTest").unwrap();
        assert_eq!(r.broker_datas.len(), 1);
        assert_eq!(r.broker_datas[0].broker_name, "broker-b");
        assert_eq!(
            rt.cluster_info().cluster_addr_table["DefaultCluster"].len(),
            1
        );
    }

    #[test]
    fn route_json_has_quoted_id_keys() {
        let mut rt = RouteTable::default();
        let w = wrapper(&[("T", 4)], 1);
        rt.register(&reg("broker-a", "127.0.0.1:10911", 0, &w), 0);
        let json = serde_json::to_string(&rt.route("T").unwrap()).unwrap();
        assert_eq!(
            json,
            r#"{"brokerDatas":[{"cluster":"DefaultCluster","brokerName":"broker-a","brokerAddrs":{"0":"127.0.0.1:10911"},"enableActingMaster":false}],"queueDatas":[{"brokerName":"broker-a","readQueueNums":4,"writeQueueNums":4,"perm":6,"topicSysFlag":0}],"filterServerTable":{}}"#
        );
        let back: TopicRouteData = crate::protocol::json::parse(json.as_bytes()).unwrap();
        assert_eq!(back, rt.route("T").unwrap());
    }

    #[test]
    fn topics_dropped_by_master_leave_the_route() {
        let mut rt = RouteTable::default();
        rt.register(&reg("a", "h:1", 0, &wrapper(&[("T1", 1), ("T2", 1)], 1)), 0);
        rt.register(&reg("a", "h:1", 0, &wrapper(&[("T1", 1)], 2)), 0);
        assert_eq!(rt.topics(), vec!["T1".to_string()]);
        rt.delete_topic("T1", None);
        assert!(rt.topics().is_empty());
    }
}
