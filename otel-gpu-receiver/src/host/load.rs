//! Load averages from /proc/loadavg (sysinfo elsewhere). The conventions define no
//! load metric; the names are the Collector hostmetrics receiver's.

use super::roots::Roots;
use crate::catalogue::Family;
use crate::names;
use crate::snapshot::Points;
use crate::source::{CollectError, Source};

/// One cycle's load averages.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LoadReading {
    /// Over 1 minute.
    pub one: f64,
    /// Over 5 minutes.
    pub five: f64,
    /// Over 15 minutes.
    pub fifteen: f64,
}

impl LoadReading {
    /// Converts the reading to points.
    pub fn points(&self, out: &mut Points) {
        out.push(names::SYSTEM_CPU_LOAD_AVERAGE_1M, vec![], self.one);
        out.push(names::SYSTEM_CPU_LOAD_AVERAGE_5M, vec![], self.five);
        out.push(names::SYSTEM_CPU_LOAD_AVERAGE_15M, vec![], self.fifteen);
    }
}

/// Reads the load family.
#[derive(Debug)]
pub struct LoadSource {
    roots: Roots,
}

impl LoadSource {
    /// A source reading under `roots`.
    pub fn new(roots: Roots) -> Self {
        Self { roots }
    }

    /// Reads once.
    ///
    /// # Errors
    /// /proc/loadavg cannot be read or parsed.
    #[cfg(target_os = "linux")]
    pub fn read(&mut self) -> Result<LoadReading, CollectError> {
        let path = self.roots.proc("loadavg");
        let text = super::roots::read(&path)?;
        let mut it = text.split_ascii_whitespace().map(str::parse::<f64>);
        let mut next = || {
            it.next()
                .and_then(Result::ok)
                .ok_or_else(|| CollectError::parse(&path, format!("bad line {text:?}")))
        };
        Ok(LoadReading {
            one: next()?,
            five: next()?,
            fifteen: next()?,
        })
    }

    /// Reads once through sysinfo.
    ///
    /// # Errors
    /// sysinfo has no load average on this platform.
    #[cfg(not(target_os = "linux"))]
    pub fn read(&mut self) -> Result<LoadReading, CollectError> {
        let _ = &self.roots;
        let l = sysinfo::System::load_average().map_err(|_| CollectError::Unsupported)?;
        Ok(LoadReading {
            one: l.one,
            five: l.five,
            fifteen: l.fifteen,
        })
    }
}

impl Source for LoadSource {
    fn family(&self) -> Family {
        Family::Load
    }

    fn collect(&mut self, out: &mut Points) -> Result<(), CollectError> {
        self.read()?.points(out);
        Ok(())
    }
}
