//! `system.uptime` from /proc/uptime (sysinfo elsewhere).

use opentelemetry_semantic_conventions::metric as sc;

use super::roots::Roots;
use crate::catalogue::Family;
use crate::snapshot::Points;
use crate::source::{CollectError, Source};

/// Seconds since boot.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct UptimeReading {
    /// Seconds since boot.
    pub seconds: f64,
}

impl UptimeReading {
    /// Converts the reading to points.
    pub fn points(&self, out: &mut Points) {
        out.push(sc::SYSTEM_UPTIME, vec![], self.seconds);
    }
}

/// Reads the uptime family.
#[derive(Debug)]
pub struct UptimeSource {
    roots: Roots,
}

impl UptimeSource {
    /// A source reading under `roots`.
    pub fn new(roots: Roots) -> Self {
        Self { roots }
    }

    /// Reads once.
    ///
    /// # Errors
    /// /proc/uptime cannot be read or parsed.
    #[cfg(target_os = "linux")]
    pub fn read(&mut self) -> Result<UptimeReading, CollectError> {
        let path = self.roots.proc("uptime");
        let text = super::roots::read(&path)?;
        let seconds = text
            .split_ascii_whitespace()
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| CollectError::parse(&path, format!("bad line {text:?}")))?;
        Ok(UptimeReading { seconds })
    }

    /// Reads once through sysinfo.
    ///
    /// # Errors
    /// sysinfo cannot tell the uptime here.
    #[cfg(not(target_os = "linux"))]
    pub fn read(&mut self) -> Result<UptimeReading, CollectError> {
        let _ = &self.roots;
        let s = sysinfo::System::uptime().map_err(|_| CollectError::Unsupported)?;
        Ok(UptimeReading { seconds: s as f64 })
    }
}

impl Source for UptimeSource {
    fn family(&self) -> Family {
        Family::Uptime
    }

    fn collect(&mut self, out: &mut Points) -> Result<(), CollectError> {
        self.read()?.points(out);
        Ok(())
    }
}
