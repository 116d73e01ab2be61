//! Builds the fake libnvidia-ml (`fake_nvml.c`) with the `cc` crate, once per test
//! binary, and gives each test its own copy with its own script: a copy loaded from
//! another path is a separate library instance, so tests in one process do not share
//! the fake's state. The fake reads `fake_nvml.script` beside itself.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The fake compiled once for this test binary.
fn built() -> &'static Path {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fake_nvml/fake_nvml.c");
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "fake_nvml-{}-{}",
            std::process::id(),
            std::thread::current()
                .name()
                .unwrap_or("t")
                .replace("::", "_")
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("libnvidia-ml.so.1");
        let target = format!("{}-unknown-linux-gnu", std::env::consts::ARCH);
        let compiler = cc::Build::new()
            .target(&target)
            .host(&target)
            .opt_level(1)
            .cargo_metadata(false)
            .cargo_warnings(false)
            .out_dir(&dir)
            .pic(true)
            .get_compiler();
        let status = compiler
            .to_command()
            // `nodelete`: nvml-wrapper unloads the library when nvmlInit_v2 fails, and the
            // agent loads it again at its next attempt. The fake's state (how many attempts
            // it has refused, which cycle it is in) stands for the driver's, which outlives
            // any one load of the library.
            .args(["-shared", "-fPIC", "-Wl,-z,nodelete", "-o"])
            .arg(&out)
            .arg(&src)
            .args(["-lpthread", "-ldl"])
            .status()
            .expect("run the C compiler");
        assert!(status.success(), "compiling {} failed", src.display());
        out
    })
}

/// One test's copy of the fake library, with its script.
#[derive(Debug)]
pub struct FakeNvml {
    pub dir: tempfile::TempDir,
    pub lib: PathBuf,
    pub stats: PathBuf,
}

impl FakeNvml {
    /// Copies the fake into a fresh directory and writes `script` beside it. A `stats`
    /// line is added so that the test can read the call counts.
    pub fn new(script: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let lib = dir.path().join("libnvidia-ml.so.1");
        std::fs::copy(built(), &lib).unwrap();
        let stats = dir.path().join("stats.txt");
        std::fs::write(
            dir.path().join("fake_nvml.script"),
            format!("stats {}\n{script}\n", stats.display()),
        )
        .unwrap();
        Self { dir, lib, stats }
    }

    /// Like [`FakeNvml::new`] without the call counts: the fake then writes no file
    /// per cycle, for soak runs of a hundred thousand cycles.
    pub fn without_stats(script: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let lib = dir.path().join("libnvidia-ml.so.1");
        std::fs::copy(built(), &lib).unwrap();
        std::fs::write(dir.path().join("fake_nvml.script"), format!("{script}\n")).unwrap();
        let stats = dir.path().join("stats.txt");
        Self { dir, lib, stats }
    }

    /// Calls per (NVML function, device index) up to the start of the latest cycle
    /// (the fake writes them when a cycle starts and at shutdown).
    pub fn calls(&self) -> HashMap<(String, i64), u64> {
        let text = std::fs::read_to_string(&self.stats).unwrap_or_default();
        text.lines()
            .filter_map(|l| {
                let mut it = l.split_whitespace();
                let f = it.next()?.to_owned();
                let d = it.next()?.parse().ok()?;
                let n = it.next()?.parse().ok()?;
                Some(((f, d), n))
            })
            .collect()
    }

    /// Calls of `function` on device `dev` so far.
    pub fn count(&self, function: &str, dev: i64) -> u64 {
        self.calls()
            .get(&(function.to_owned(), dev))
            .copied()
            .unwrap_or(0)
    }
}
