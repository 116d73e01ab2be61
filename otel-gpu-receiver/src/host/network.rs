//! `system.network.*` from /proc/net/dev (one file, instead of sysinfo's many
//! /sys/class/net reads; sysinfo elsewhere).

use std::path::Path;

use opentelemetry::KeyValue;
use opentelemetry_semantic_conventions::attribute::{NETWORK_INTERFACE_NAME, NETWORK_IO_DIRECTION};
use opentelemetry_semantic_conventions::metric as sc;

use super::roots::Roots;
use crate::catalogue::Family;
use crate::snapshot::Points;
use crate::source::{CollectError, Source};

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
    #[cfg(not(target_os = "linux"))]
    networks: Option<sysinfo::Networks>,
}

impl NetworkSource {
    /// A source reading under `roots`.
    pub fn new(roots: Roots) -> Self {
        Self {
            roots,
            #[cfg(not(target_os = "linux"))]
            networks: sysinfo::Networks::new_with_refreshed_list().ok(),
        }
    }

    /// Reads once.
    ///
    /// # Errors
    /// /proc/net/dev cannot be read or parsed.
    #[cfg(target_os = "linux")]
    pub fn read(&mut self) -> Result<NetworkReading, CollectError> {
        let path = self.roots.proc("net/dev");
        parse_net_dev(&path, &super::roots::read(&path)?)
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
        self.read()?.points(out);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
