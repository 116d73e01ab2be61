//! Host metric families, one file each. Each family is a [`Source`]: it reads a typed
//! reading (from /proc on Linux, from sysinfo elsewhere) and converts it to points.
//!
//! /proc and /sys are reached through [`Roots`] ([`roots`]), so tests can point a family at a
//! fixture tree.

use crate::catalogue::Family;

pub mod cpu;
pub mod disk;
pub mod filesystem;
pub mod load;
pub mod memory;
pub mod network;
pub mod paging;
pub mod process;
pub mod processes;
pub mod roots;
pub mod uptime;

/// The trait and error every family implements, at their old path (they live in
/// [`crate::source`], so that GPU and attribution sources need not depend on `host`).
pub use crate::source::{CollectError, Source};
pub use roots::Roots;

/// Builds the source for a host family; `None` for a family that is not the host's
/// (`Gpu`: the collector builds that one, so that `host` does not depend on `gpu`).
pub fn source(family: Family, roots: &Roots) -> Option<Box<dyn Source>> {
    Some(match family {
        Family::Cpu => Box::new(cpu::CpuSource::new(roots.clone())),
        Family::Memory => Box::new(memory::MemorySource::new(roots.clone())),
        Family::Paging => Box::new(paging::PagingSource::new(roots.clone())),
        Family::Disk => Box::new(disk::DiskSource::new(roots.clone())),
        Family::Filesystem => Box::new(filesystem::FilesystemSource::new(roots.clone())),
        Family::Network => Box::new(network::NetworkSource::new(roots.clone())),
        Family::Load => Box::new(load::LoadSource::new(roots.clone())),
        Family::Processes => Box::new(processes::ProcessesSource::new(roots.clone())),
        Family::Uptime => Box::new(uptime::UptimeSource::new(roots.clone())),
        Family::Process => Box::new(process::ProcessSource::new(roots.clone())),
        Family::Gpu => return None,
    })
}
