//! Broker configuration: the seed's `conf/*.properties` keys and upstream defaults (reference
//! §8.4). An unknown key is a warning; a bad value an error naming file, line and key.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use crate::config::{parse_properties, read_properties, value, ConfigError, Property};
use crate::logging::expand_tilde;
use crate::store::config::{format_delete_when, parse_delete_when, Retention};
use crate::store::{FlushDiskType, StoreConfig};

/// `brokerRole`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerRole {
    AsyncMaster,
    SyncMaster,
    Slave,
}

impl BrokerRole {
    /// The property value, as `conf/*.properties` spell it.
    pub fn name(self) -> &'static str {
        match self {
            BrokerRole::AsyncMaster => "ASYNC_MASTER",
            BrokerRole::SyncMaster => "SYNC_MASTER",
            BrokerRole::Slave => "SLAVE",
        }
    }
}

impl std::str::FromStr for BrokerRole {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        [
            BrokerRole::AsyncMaster,
            BrokerRole::SyncMaster,
            BrokerRole::Slave,
        ]
        .into_iter()
        .find(|r| r.name() == s)
        .ok_or_else(|| format!("unknown brokerRole {s:?} (ASYNC_MASTER, SYNC_MASTER or SLAVE)"))
    }
}

#[derive(Debug, Clone)]
pub struct BrokerConfig {
    pub cluster_name: String,
    pub broker_name: String,
    pub broker_id: i64,
    pub broker_role: BrokerRole,
    /// `namesrvAddr`, split on `;`.
    pub namesrv_addrs: Vec<String>,
    pub listen_port: u16,
    /// The address registered with name servers and written in STOREHOST.
    pub broker_ip1: IpAddr,
    pub auto_create_topic_enable: bool,
    pub default_topic_queue_nums: u32,
    pub broker_permission: u32,
    pub region_id: String,
    pub trace_on: bool,
    pub register_period_ms: u64,
    pub flush_consumer_offset_interval_ms: u64,
    pub long_polling_enable: bool,
    pub short_polling_time_ms: u64,
    pub store: StoreConfig,
}

/// The host's first up, non-loopback IPv4 interface address, else 127.0.0.1 (upstream picks
/// a local address too). Reads interfaces only; sends nothing.
fn local_ip() -> IpAddr {
    let mut found = None;
    // SAFETY: getifaddrs allocates a list we only read and then free with freeifaddrs.
    unsafe {
        let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
        if libc::getifaddrs(&mut head) == 0 {
            let mut cur = head;
            while !cur.is_null() {
                let ifa = &*cur;
                let up = ifa.ifa_flags & libc::IFF_UP as u32 != 0;
                let lo = ifa.ifa_flags & libc::IFF_LOOPBACK as u32 != 0;
                if up
                    && !lo
                    && !ifa.ifa_addr.is_null()
                    && (*ifa.ifa_addr).sa_family as i32 == libc::AF_INET
                {
                    let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                    found = Some(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)));
                    break;
                }
                cur = ifa.ifa_next;
            }
            libc::freeifaddrs(head);
        }
    }
    IpAddr::V4(found.unwrap_or(Ipv4Addr::LOCALHOST))
}

impl Default for BrokerConfig {
    fn default() -> Self {
        let root = expand_tilde("~/store");
        let host = hostname();
        BrokerConfig {
            cluster_name: "DefaultCluster".into(),
            broker_name: if host.is_empty() {
                "DEFAULT_BROKER".into()
            } else {
                host
            },
            broker_id: 0,
            broker_role: BrokerRole::AsyncMaster,
            namesrv_addrs: std::env::var("NAMESRV_ADDR")
                .map(|v| split_addrs(&v))
                .unwrap_or_default(),
            listen_port: 10911,
            broker_ip1: local_ip(),
            auto_create_topic_enable: true,
            default_topic_queue_nums: 8,
            broker_permission: 6,
            region_id: "DefaultRegion".into(),
            trace_on: true,
            register_period_ms: 30_000,
            flush_consumer_offset_interval_ms: 5000,
            long_polling_enable: true,
            short_polling_time_ms: 1000,
            store: StoreConfig::new(root),
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Splits `a;b` name-server lists.
pub fn split_addrs(v: &str) -> Vec<String> {
    v.split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

impl BrokerConfig {
    /// Applies properties (from a file or `-D`-style overrides). `file` names the source in
    /// errors and warnings.
    pub fn apply(&mut self, props: &[Property], file: &str) -> Result<(), ConfigError> {
        let mut commitlog_dir = None;
        for p in props {
            if apply_retention(&self.store.retention, p, file)? {
                continue;
            }
            let v = p.value.as_str();
            match p.key.as_str() {
                "brokerClusterName" => self.cluster_name = v.to_string(),
                "brokerName" => self.broker_name = v.to_string(),
                "brokerId" => self.broker_id = value(p, file)?,
                "brokerRole" => self.broker_role = value(p, file)?,
                "namesrvAddr" => self.namesrv_addrs = split_addrs(v),
                "listenPort" => self.listen_port = value(p, file)?,
                "brokerIP1" => self.broker_ip1 = value(p, file)?,
                "brokerIP2" | "haListenPort" | "haMasterAddress" => {}
                "autoCreateTopicEnable" => self.auto_create_topic_enable = value(p, file)?,
                "defaultTopicQueueNums" => self.default_topic_queue_nums = value(p, file)?,
                "brokerPermission" => self.broker_permission = value(p, file)?,
                "regionId" => self.region_id = v.to_string(),
                "traceOn" => self.trace_on = value(p, file)?,
                "registerNameServerPeriod" => {
                    self.register_period_ms = value::<u64>(p, file)?.clamp(10_000, 60_000)
                }
                "flushConsumerOffsetInterval" => {
                    self.flush_consumer_offset_interval_ms = value(p, file)?
                }
                "longPollingEnable" => self.long_polling_enable = value(p, file)?,
                "shortPollingTimeMills" => self.short_polling_time_ms = value(p, file)?,
                "storePathRootDir" => self.store.root = expand_tilde(v),
                "storePathCommitLog" => commitlog_dir = Some(expand_tilde(v)),
                "flushDiskType" => {
                    self.store.flush_disk_type =
                        v.parse::<FlushDiskType>().map_err(|m| bad(p, file, m))?
                }
                "mappedFileSizeCommitLog" => self.store.segment_size = value(p, file)?,
                "mappedFileSizeConsumeQueue" => {
                    self.store.cq_entries_per_file = value::<u64>(p, file)? / 20
                }
                "maxMessageSize" => self.store.max_message_size = value(p, file)?,
                "flushIntervalCommitLog" => self.store.flush_interval_ms = value(p, file)?,
                "commitIntervalCommitLog" => self.store.commit_interval_ms = value(p, file)?,
                "flushIntervalConsumeQueue" => self.store.flush_cq_interval_ms = value(p, file)?,
                "flushConsumeQueueLeastPages" => self.store.flush_cq_least_pages = value(p, file)?,
                "flushConsumeQueueThoroughInterval" => {
                    self.store.flush_cq_thorough_interval_ms = value(p, file)?
                }
                "syncFlushTimeout" => self.store.sync_flush_timeout_ms = value(p, file)?,
                "cleanResourceInterval" => self.store.clean_resource_interval_ms = value(p, file)?,
                "messageIndexEnable" => self.store.message_index_enable = value(p, file)?,
                "maxHashSlotNum" => self.store.index_slots = value(p, file)?,
                "maxIndexNum" => self.store.index_max_entries = value(p, file)?,
                "shards" => self.store.shards = value(p, file)?,
                // Unset: on for SYNC_FLUSH (see StoreConfig::warm_segments).
                "warmMapedFileEnable" => self.store.warm_segments = Some(value(p, file)?),
                // CoreMQ: keep an expired segment as the next new one (default true).
                "reuseCommitLogSegments" => self.store.reuse_segments = value(p, file)?,
                // CoreMQ: most expired segments a shard keeps for reuse (default 1).
                "spareCommitLogSegments" => self.store.spare_segments = value(p, file)?,
                // CoreMQ: pin each shard's thread to its core (default true).
                "pinShards" => self.store.pin_shards = value(p, file)?,
                // CoreMQ: µs an idle shard polls before sleeping (see StoreConfig).
                "shardSpinMicros" => self.store.spin_before_park_us = value(p, file)?,
                // Derived from storePathRootDir upstream too (reference §7.1): accepted, unused.
                "storePathConsumeQueue" | "storePathIndex" | "storeCheckpoint" | "abortFile" => {
                    log::warn!(
                        "{file}:{}: {} is derived from storePathRootDir; the value is ignored",
                        p.line,
                        p.key
                    )
                }
                other => log::warn!("{file}:{}: unknown key {other} ignored", p.line),
            }
        }
        self.store.commitlog_dir =
            commitlog_dir.unwrap_or_else(|| self.store.root.join("commitlog"));
        if self.broker_role != BrokerRole::Slave {
            // Upstream forces 0 for masters.
            self.broker_id = 0;
        }
        Ok(())
    }

    /// Loads a properties file on top of the defaults.
    pub fn load(path: &Path) -> Result<BrokerConfig, ConfigError> {
        let mut c = BrokerConfig::default();
        c.apply(&read_properties(path)?, &path.display().to_string())?;
        Ok(c)
    }

    /// `brokerIP1:listenPort`.
    pub fn broker_addr(&self) -> String {
        format!("{}:{}", self.broker_ip1, self.listen_port)
    }

    /// UPDATE_BROKER_CONFIG: applies a properties text whose keys are all in [`LIVE_KEYS`]
    /// and whose values are all valid, to this running broker (every shard sees it at its
    /// next retention tick). Anything else changes nothing and returns why. Changes last
    /// until the broker restarts. Returns the `key=value`s applied.
    pub fn update_live(&self, text: &str) -> Result<Vec<String>, String> {
        const SRC: &str = "UPDATE_BROKER_CONFIG";
        let props = parse_properties(text, SRC).map_err(|e| e.to_string())?;
        // Applied to a copy first, so a bad value or key leaves everything as it was.
        let live = &self.store.retention;
        let scratch = Retention::new(
            &live.delete_when(),
            live.file_reserved_hours(),
            live.disk_max_used_space_ratio(),
        );
        for p in &props {
            if !apply_retention(&scratch, p, SRC).map_err(|e| e.to_string())? {
                return Err(format!(
                    "{} cannot be changed while the broker runs (these can: {}); set it in \
                     the broker's properties and restart",
                    p.key,
                    LIVE_KEYS.join(", ")
                ));
            }
        }
        live.set_delete_when(&scratch.delete_when());
        live.set_file_reserved_hours(scratch.file_reserved_hours());
        live.set_disk_max_used_space_ratio(scratch.disk_max_used_space_ratio());
        Ok(props
            .iter()
            .map(|p| format!("{}={}", p.key, p.value))
            .collect())
    }

    /// GET_BROKER_CONFIG: the configuration in force, as `key=value` lines with the keys
    /// [`BrokerConfig::apply`] reads (live changes included).
    pub fn to_properties(&self) -> String {
        let st = &self.store;
        let kv: Vec<(&str, String)> = vec![
            ("brokerClusterName", self.cluster_name.clone()),
            ("brokerName", self.broker_name.clone()),
            ("brokerId", self.broker_id.to_string()),
            ("brokerRole", self.broker_role.name().into()),
            ("namesrvAddr", self.namesrv_addrs.join(";")),
            ("listenPort", self.listen_port.to_string()),
            ("brokerIP1", self.broker_ip1.to_string()),
            (
                "autoCreateTopicEnable",
                self.auto_create_topic_enable.to_string(),
            ),
            (
                "defaultTopicQueueNums",
                self.default_topic_queue_nums.to_string(),
            ),
            ("brokerPermission", self.broker_permission.to_string()),
            ("regionId", self.region_id.clone()),
            ("traceOn", self.trace_on.to_string()),
            (
                "registerNameServerPeriod",
                self.register_period_ms.to_string(),
            ),
            (
                "flushConsumerOffsetInterval",
                self.flush_consumer_offset_interval_ms.to_string(),
            ),
            ("longPollingEnable", self.long_polling_enable.to_string()),
            (
                "shortPollingTimeMills",
                self.short_polling_time_ms.to_string(),
            ),
            ("storePathRootDir", st.root.display().to_string()),
            ("storePathCommitLog", st.commitlog_dir.display().to_string()),
            (
                "deleteWhen",
                format_delete_when(&st.retention.delete_when()),
            ),
            (
                "fileReservedTime",
                st.retention.file_reserved_hours().to_string(),
            ),
            (
                "diskMaxUsedSpaceRatio",
                st.retention.disk_max_used_space_ratio().to_string(),
            ),
            ("flushDiskType", st.flush_disk_type.name().into()),
            ("mappedFileSizeCommitLog", st.segment_size.to_string()),
            (
                "mappedFileSizeConsumeQueue",
                (st.cq_entries_per_file * 20).to_string(),
            ),
            ("maxMessageSize", st.max_message_size.to_string()),
            ("flushIntervalCommitLog", st.flush_interval_ms.to_string()),
            ("commitIntervalCommitLog", st.commit_interval_ms.to_string()),
            (
                "flushIntervalConsumeQueue",
                st.flush_cq_interval_ms.to_string(),
            ),
            (
                "flushConsumeQueueLeastPages",
                st.flush_cq_least_pages.to_string(),
            ),
            (
                "flushConsumeQueueThoroughInterval",
                st.flush_cq_thorough_interval_ms.to_string(),
            ),
            ("syncFlushTimeout", st.sync_flush_timeout_ms.to_string()),
            (
                "cleanResourceInterval",
                st.clean_resource_interval_ms.to_string(),
            ),
            ("messageIndexEnable", st.message_index_enable.to_string()),
            ("maxHashSlotNum", st.index_slots.to_string()),
            ("maxIndexNum", st.index_max_entries.to_string()),
            ("warmMapedFileEnable", st.warms_segments().to_string()),
            ("reuseCommitLogSegments", st.reuse_segments.to_string()),
            ("spareCommitLogSegments", st.spare_segments.to_string()),
            ("shards", st.shards.to_string()),
            ("pinShards", st.pin_shards.to_string()),
            ("shardSpinMicros", st.spin_before_park_us.to_string()),
        ];
        kv.iter().map(|(k, v)| format!("{k}={v}\n")).collect()
    }
}

/// Keys UPDATE_BROKER_CONFIG may change on a running broker (those [`apply_retention`]
/// sets); the others are read at start.
pub const LIVE_KEYS: &[&str] = &["deleteWhen", "fileReservedTime", "diskMaxUsedSpaceRatio"];

/// Sets `p` on `r` if it is one of the retention keys; `Ok(false)` if it is not.
fn apply_retention(r: &Retention, p: &Property, file: &str) -> Result<bool, ConfigError> {
    match p.key.as_str() {
        "deleteWhen" => {
            r.set_delete_when(&parse_delete_when(&p.value).map_err(|m| bad(p, file, m))?)
        }
        "fileReservedTime" => r.set_file_reserved_hours(value(p, file)?),
        "diskMaxUsedSpaceRatio" => r.set_disk_max_used_space_ratio(value::<u8>(p, file)?.min(100)),
        _ => return Ok(false),
    }
    Ok(true)
}

fn bad(p: &Property, file: &str, msg: String) -> ConfigError {
    ConfigError::Bad {
        file: file.to_string(),
        line: p.line,
        msg: format!("{}: {msg}", p.key),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_written_are_read_back_alike() {
        let mut c = BrokerConfig::default();
        let text = "brokerName=b1\nlistenPort=12000\ndeleteWhen=04;16\nfileReservedTime=5\n\
                    flushDiskType=SYNC_FLUSH\nbrokerRole=SYNC_MASTER\nshards=2\n\
                    namesrvAddr=127.0.0.1:1;127.0.0.1:2\nwarmMapedFileEnable=false\n\
                    reuseCommitLogSegments=false\nspareCommitLogSegments=3\n";
        c.apply(&parse_properties(text, "x").unwrap(), "x").unwrap();
        let out = c.to_properties();
        for line in text.lines() {
            assert!(out.lines().any(|l| l == line), "{line} not in\n{out}");
        }
        let mut d = BrokerConfig::default();
        d.apply(&parse_properties(&out, "y").unwrap(), "y").unwrap();
        assert_eq!(d.to_properties(), out);
    }

    #[test]
    fn live_update_changes_retention_for_every_clone_or_nothing() {
        let c = BrokerConfig::default();
        let shard_view = c.store.clone();
        let applied = c
            .update_live("fileReservedTime=0\ndeleteWhen=01;13\n")
            .unwrap();
        assert_eq!(applied, vec!["fileReservedTime=0", "deleteWhen=01;13"]);
        assert_eq!(shard_view.retention.file_reserved_hours(), 0);
        assert_eq!(shard_view.retention.delete_when(), vec![1, 13]);
        // A bad value or a key that needs a restart: nothing changes, and the reason names it.
        let e = c
            .update_live("fileReservedTime=7\ndeleteWhen=25\n")
            .unwrap_err();
        assert!(e.contains("deleteWhen"), "{e}");
        let e = c
            .update_live("fileReservedTime=7\nlistenPort=1\n")
            .unwrap_err();
        assert!(e.contains("listenPort") && e.contains("restart"), "{e}");
        assert_eq!(shard_view.retention.file_reserved_hours(), 0);
        assert_eq!(shard_view.retention.delete_when(), vec![1, 13]);
    }

    #[test]
    fn seed_properties_are_accepted() {
        let text =
            "brokerClusterName=DefaultCluster\nbrokerName=broker-b\nbrokerId=1\ndeleteWhen=04\n\
                    fileReservedTime=48\nbrokerRole=SLAVE\nflushDiskType=ASYNC_FLUSH\n\
                    namesrvAddr=192.168.239.67:9876;192.168.239.68:9876\nlistenPort=11911\n\
                    storePathRootDir=~/store-s\nstorePathCommitLog=~/store-s/commitlog\n\
                    storePathConsumeQueue=~/store-s/consumequeue\nstorePathIndex=~/store-s/index\n\
                    storeCheckpoint=~/store-s/checkpoint\nabortFile=~/store-s/abort\n";
        std::env::set_var("HOME", "/home/u");
        let mut c = BrokerConfig::default();
        c.apply(
            &parse_properties(text, "broker-b-s.properties").unwrap(),
            "f",
        )
        .unwrap();
        assert_eq!(c.broker_name, "broker-b");
        assert_eq!(c.broker_id, 1);
        assert_eq!(c.broker_role, BrokerRole::Slave);
        assert_eq!(c.namesrv_addrs.len(), 2);
        assert_eq!(c.listen_port, 11911);
        assert_eq!(c.store.root, Path::new("/home/u/store-s"));
        assert_eq!(
            c.store.commitlog_dir,
            Path::new("/home/u/store-s/commitlog")
        );
        assert_eq!(c.store.retention.file_reserved_hours(), 48);
    }

    #[test]
    fn shipped_cluster_files_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("conf/2m-2s-async");
        for f in ["broker-a", "broker-a-s", "broker-b", "broker-b-s"] {
            let c = BrokerConfig::load(&dir.join(format!("{f}.properties"))).unwrap();
            assert_eq!(c.broker_id == 0, !f.ends_with("-s"), "{f}");
        }
    }

    #[test]
    fn bad_values_name_file_line_and_key() {
        let mut c = BrokerConfig::default();
        let e = c
            .apply(
                &parse_properties("a=1\nflushDiskType=SOMETIMES\n", "x").unwrap(),
                "conf/b.properties",
            )
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("conf/b.properties:2: flushDiskType"), "{e}");
        let e = c
            .apply(
                &parse_properties("listenPort=abc\n", "x").unwrap(),
                "b.properties",
            )
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("b.properties:1") && e.contains("listenPort"),
            "{e}"
        );
    }
}
