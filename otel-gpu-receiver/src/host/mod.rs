//! Host metric families, one file each. Each family is a [`Source`]: it reads a typed
//! reading (from /proc on Linux, from sysinfo elsewhere) and converts it to points.
//!
//! /proc and /sys are reached through [`Roots`] ([`roots`]), so tests can point a family at a
//! fixture tree.

use crate::catalogue::Family;

pub mod cpu;
pub mod disk;
pub mod exclude;
pub mod filesystem;
pub mod load;
pub mod memory;
pub mod network;
pub mod paging;
pub mod process;
pub mod processes;
pub mod roots;
pub mod statvfs;
pub mod uptime;

/// The trait and error every family implements, at their old path (they live in
/// [`crate::source`], so that GPU and attribution sources need not depend on `host`).
pub use crate::source::{CollectError, Source};
pub use roots::Roots;

/// Where the host families read, and the settings of those that have any.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HostConfig {
    /// /proc, /sys and the host's root filesystem.
    pub roots: Roots,
    /// Excludes and `statvfs` deadlines of the filesystem family.
    pub filesystem: filesystem::FilesystemConfig,
    /// Excludes of the network family.
    pub network: network::NetworkConfig,
}

impl From<Roots> for HostConfig {
    fn from(roots: Roots) -> Self {
        Self {
            roots,
            ..Self::default()
        }
    }
}

/// Builds the source for a host family with the default settings; `None` for a family
/// that is not the host's (`Gpu`: the collector builds that one, so that `host` does not
/// depend on `gpu`).
pub fn source(family: Family, roots: &Roots) -> Option<Box<dyn Source>> {
    source_with(family, &HostConfig::from(roots.clone()))
}

/// Like [`source`], with the family settings of `cfg`.
pub fn source_with(family: Family, cfg: &HostConfig) -> Option<Box<dyn Source>> {
    let roots = &cfg.roots;
    Some(match family {
        Family::Cpu => Box::new(cpu::CpuSource::new(roots.clone())),
        Family::Memory => Box::new(memory::MemorySource::new(roots.clone())),
        Family::Paging => Box::new(paging::PagingSource::new(roots.clone())),
        Family::Disk => Box::new(disk::DiskSource::new(roots.clone())),
        Family::Filesystem => Box::new(filesystem::FilesystemSource::with_config(
            roots.clone(),
            cfg.filesystem.clone(),
        )),
        Family::Network => Box::new(network::NetworkSource::with_config(
            roots.clone(),
            cfg.network.clone(),
        )),
        Family::Load => Box::new(load::LoadSource::new(roots.clone())),
        Family::Processes => Box::new(processes::ProcessesSource::new(roots.clone())),
        Family::Uptime => Box::new(uptime::UptimeSource::new(roots.clone())),
        Family::Process => Box::new(process::ProcessSource::new(roots.clone())),
        Family::Gpu => return None,
    })
}
