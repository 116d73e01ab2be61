//! `system.network.*` from `<proc>/1/net/dev` (one file, instead of sysinfo's many
//! /sys/class/net reads; sysinfo elsewhere).
//!
//! `/proc/net` is a link to `/proc/self/net`: the agent's own network namespace, which in
//! a container is the bridge's `eth0` and `lo`. `/proc/1/net/dev` is pid 1's namespace,
//! the host's whenever the agent sees the host's processes (`pid: host`, `hostPID: true`,
//! or the host's /proc mounted at `--proc-root`), whatever namespace the agent itself
//! runs in. Only if that file cannot be read does the agent fall back to its own
//! namespace, and it says so once.

use std::path::Path;

use opentelemetry::KeyValue;
use opentelemetry_semantic_conventions::attribute::{NETWORK_INTERFACE_NAME, NETWORK_IO_DIRECTION};
use opentelemetry_semantic_conventions::metric as sc;

use super::exclude::{Kind, Patterns};
use super::roots::Roots;
use crate::catalogue::Family;
use crate::snapshot::Points;
use crate::source::{CollectError, Source};

/// Settings of the network family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkConfig {
    /// Interfaces left out. Default: [`super::exclude::DEFAULT_INTERFACES`] (veth, cali,
    /// flannel, cni, docker).
    pub interfaces_exclude: Patterns,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            interfaces_exclude: Patterns::default_for(Kind::Interface),
        }
    }
}

/// Counters of one interface since it came up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InterfaceStats {
    /// Interface name.
    pub name: String,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Packets received.
    pub rx_packets: u64,
    /// Receive errors.
    pub rx_errors: u64,
    /// Received packets dropped.
    pub rx_dropped: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Packets sent.
    pub tx_packets: u64,
    /// Transmit errors.
    pub tx_errors: u64,
    /// Outgoing packets dropped.
    pub tx_dropped: u64,
}

/// One cycle's network reading.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkReading {
    /// Per interface.
    pub interfaces: Vec<InterfaceStats>,
}

impl NetworkReading {
    /// Converts the reading to points.
    pub fn points(&self, out: &mut Points) {
        for i in &self.interfaces {
            let attrs = |dir: &'static str| {
                vec![
                    KeyValue::new(NETWORK_INTERFACE_NAME, i.name.clone()),
                    KeyValue::new(NETWORK_IO_DIRECTION, dir),
                ]
            };
            for (dir, bytes, packets, errors, dropped) in [
                (
                    "receive",
                    i.rx_bytes,
                    i.rx_packets,
                    i.rx_errors,
                    i.rx_dropped,
                ),
                (
                    "transmit",
                    i.tx_bytes,
                    i.tx_packets,
                    i.tx_errors,
                    i.tx_dropped,
                ),
            ] {
                out.push(sc::SYSTEM_NETWORK_IO, attrs(dir), bytes);
                out.push(sc::SYSTEM_NETWORK_PACKET_COUNT, attrs(dir), packets);
                out.push(sc::SYSTEM_NETWORK_ERRORS, attrs(dir), errors);
                out.push(sc::SYSTEM_NETWORK_PACKET_DROPPED, attrs(dir), dropped);
            }
        }
    }
}

/// Parses /proc/net/dev.
///
/// # Errors
/// A line with too few or non-numeric fields.
pub fn parse_net_dev(path: &Path, text: &str) -> Result<NetworkReading, CollectError> {
    let mut interfaces = Vec::new();
    // Two header lines, then `name: rx(8 fields) tx(8 fields)`.
    for line in text.lines().skip(2) {
        let Some((name, rest)) = line.split_once(':') else {
            continue;
        };
        let f: Vec<&str> = rest.split_ascii_whitespace().collect();
        let n = |i: usize| super::roots::field(path, line, f.get(i).copied());
        interfaces.push(InterfaceStats {
            name: name.trim().to_owned(),
            rx_bytes: n(0)?,
            rx_packets: n(1)?,
            rx_errors: n(2)?,
            rx_dropped: n(3)?,
            tx_bytes: n(8)?,
            tx_packets: n(9)?,
            tx_errors: n(10)?,
            tx_dropped: n(11)?,
        });
    }
    Ok(NetworkReading { interfaces })
}

/// Reads the network family.
#[derive(Debug)]
pub struct NetworkSource {
    roots: Roots,
    cfg: NetworkConfig,
    /// The fallback to the agent's own namespace was logged.
    warned: bool,
    #[cfg(not(target_os = "linux"))]
    networks: Option<sysinfo::Networks>,
}

impl NetworkSource {
    /// A source reading under `roots`, with the default excludes.
    pub fn new(roots: Roots) -> Self {
        Self::with_config(roots, NetworkConfig::default())
    }

    /// A source reading under `roots` with `cfg`.
    pub fn with_config(roots: Roots, cfg: NetworkConfig) -> Self {
        Self {
            roots,
            cfg,
            warned: false,
            #[cfg(not(target_os = "linux"))]
            networks: sysinfo::Networks::new_with_refreshed_list().ok(),
        }
    }

    /// Reads once: pid 1's (the host's) namespace, else the agent's own.
    ///
    /// # Errors
    /// Neither `<proc>/1/net/dev` nor `<proc>/net/dev` can be read, or it cannot be parsed.
    #[cfg(target_os = "linux")]
    pub fn read(&mut self) -> Result<NetworkReading, CollectError> {
        let host = self.roots.proc("1/net/dev");
        match super::roots::read(&host) {
            Ok(text) => {
                if self.warned {
                    self.warned = false;
                    tracing::info!(path = %host.display(), "reading the host's interfaces again");
                }
                parse_net_dev(&host, &text)
            }
            Err(e) => {
                let own = self.roots.proc("net/dev");
                let reading = parse_net_dev(&own, &super::roots::read(&own)?)?;
                if !self.warned {
                    self.warned = true;
                    tracing::warn!(
                        error = ?e,
                        fallback = %own.display(),
                        "cannot read the host's network namespace through pid 1; reporting \
                         the agent's own interfaces instead (run with the host's pid \
                         namespace, or mount the host's /proc at --proc-root)"
                    );
                }
                Ok(reading)
            }
        }
    }

    /// Reads once through sysinfo.
    ///
    /// # Errors
    /// sysinfo does not support this platform.
    #[cfg(not(target_os = "linux"))]
    pub fn read(&mut self) -> Result<NetworkReading, CollectError> {
        let _ = &self.roots;
        let networks = self.networks.as_mut().ok_or(CollectError::Unsupported)?;
        networks.refresh(true);
        let interfaces = networks
            .iter()
            .map(|(name, d)| InterfaceStats {
                name: name.to_string_lossy().into_owned(),
                rx_bytes: d.total_received(),
                rx_packets: d.total_packets_received(),
                rx_errors: d.total_errors_on_received(),
                rx_dropped: 0,
                tx_bytes: d.total_transmitted(),
                tx_packets: d.total_packets_transmitted(),
                tx_errors: d.total_errors_on_transmitted(),
                tx_dropped: 0,
            })
            .collect();
        Ok(NetworkReading { interfaces })
    }
}

impl Source for NetworkSource {
    fn family(&self) -> Family {
        Family::Network
    }

    fn collect(&mut self, out: &mut Points) -> Result<(), CollectError> {
        let mut r = self.read()?;
        r.interfaces
            .retain(|i| !self.cfg.interfaces_exclude.matches(&i.name));
        r.points(out);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "Inter-|   Receive                            |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n";

    fn names(r: &NetworkReading) -> Vec<&str> {
        r.interfaces.iter().map(|i| i.name.as_str()).collect()
    }

    /// A /proc where the agent's own namespace (`net/dev`) differs from pid 1's.
    fn namespaced_proc() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("1/net")).unwrap();
        std::fs::create_dir_all(d.path().join("net")).unwrap();
        std::fs::write(
            d.path().join("net/dev"),
            format!("{HEADER}    lo: 1 1 0 0 0 0 0 0 1 1 0 0 0 0 0 0\n  eth0: 9 9 0 0 0 0 0 0 9 9 0 0 0 0 0 0\n"),
        )
        .unwrap();
        std::fs::write(
            d.path().join("1/net/dev"),
            format!("{HEADER}    lo: 5 5 0 0 0 0 0 0 5 5 0 0 0 0 0 0\n  eno1: 700 7 0 0 0 0 0 0 800 8 0 0 0 0 0 0\n  ens2f0: 1 1 0 0 0 0 0 0 1 1 0 0 0 0 0 0\n"),
        )
        .unwrap();
        d
    }

    fn source(proc: &std::path::Path) -> NetworkSource {
        NetworkSource::new(Roots {
            proc: proc.to_owned(),
            ..Roots::default()
        })
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn pod_interfaces_are_excluded_by_default_and_the_list_is_configurable() {
        let d = namespaced_proc();
        std::fs::write(
            d.path().join("1/net/dev"),
            format!("{HEADER}    lo: 5 5 0 0 0 0 0 0 5 5 0 0 0 0 0 0\n  eno1: 7 7 0 0 0 0 0 0 8 8 0 0 0 0 0 0\n  veth3f2a: 1 1 0 0 0 0 0 0 1 1 0 0 0 0 0 0\n  cali8d1e: 1 1 0 0 0 0 0 0 1 1 0 0 0 0 0 0\n  flannel.1: 1 1 0 0 0 0 0 0 1 1 0 0 0 0 0 0\n  cni0: 1 1 0 0 0 0 0 0 1 1 0 0 0 0 0 0\n  docker0: 1 1 0 0 0 0 0 0 1 1 0 0 0 0 0 0\n"),
        )
        .unwrap();
        let ifaces = |s: &mut NetworkSource| -> Vec<String> {
            let mut out = Points::default();
            s.collect(&mut out).unwrap();
            let snap = crate::snapshot::Snapshot::new(out);
            let mut v: Vec<String> = snap
                .points(sc::SYSTEM_NETWORK_IO)
                .iter()
                .filter(|p| p.attributes.iter().any(|kv| kv.value.as_str() == "receive"))
                .flat_map(|p| p.attributes.iter())
                .filter(|kv| kv.key.as_str() == NETWORK_INTERFACE_NAME)
                .map(|kv| kv.value.as_str().into_owned())
                .collect();
            v.sort();
            v
        };
        assert_eq!(ifaces(&mut source(d.path())), ["eno1", "lo"]);
        let cfg = NetworkConfig {
            interfaces_exclude: Patterns::parse(Kind::Interface, &["lo", "docker*"]).unwrap(),
        };
        let mut s = NetworkSource::with_config(
            Roots {
                proc: d.path().to_owned(),
                ..Roots::default()
            },
            cfg,
        );
        assert_eq!(
            ifaces(&mut s),
            ["cali8d1e", "cni0", "eno1", "flannel.1", "veth3f2a"]
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn interfaces_come_from_pid_1s_namespace_not_the_agents_own() {
        let d = namespaced_proc();
        let r = source(d.path()).read().unwrap();
        assert_eq!(names(&r), ["lo", "eno1", "ens2f0"]);
        assert_eq!(r.interfaces[1].rx_bytes, 700);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn without_pid_1s_file_the_agents_own_namespace_is_reported_and_it_recovers() {
        let d = namespaced_proc();
        let host = std::fs::read(d.path().join("1/net/dev")).unwrap();
        std::fs::remove_file(d.path().join("1/net/dev")).unwrap();
        let mut s = source(d.path());
        assert_eq!(names(&s.read().unwrap()), ["lo", "eth0"]);
        assert!(s.warned);
        std::fs::write(d.path().join("1/net/dev"), host).unwrap();
        assert_eq!(names(&s.read().unwrap()), ["lo", "eno1", "ens2f0"]);
        assert!(!s.warned);
        // Neither readable: an I/O error naming the agent's own file.
        std::fs::remove_file(d.path().join("1/net/dev")).unwrap();
        std::fs::remove_file(d.path().join("net/dev")).unwrap();
        let e = s.read().unwrap_err();
        assert_eq!(e.kind(), "io");
        assert!(e.to_string().contains("net/dev"), "{e}");
    }

    #[test]
    fn net_dev_is_parsed_per_interface() {
        let text = "Inter-|   Receive                            |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    lo: 100 2 0 0 0 0 0 0 100 2 0 0 0 0 0 0\n  eth0: 5000 40 1 2 0 0 0 0 7000 50 3 4 0 0 0 0\n";
        let r = parse_net_dev("dev".as_ref(), text).unwrap();
        assert_eq!(r.interfaces.len(), 2);
        assert_eq!(r.interfaces[1].name, "eth0");
        assert_eq!(r.interfaces[1].tx_dropped, 4);
        assert_eq!(r.interfaces[1].rx_errors, 1);
    }
}
