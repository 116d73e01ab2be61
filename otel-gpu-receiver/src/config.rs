//! Flags, environment and TOML file in, one validated [`Settings`] out.
//!
//! Precedence: flags > environment (`OTEL_EXPORTER_OTLP_*`, `OTEL_GPU_RECEIVER_*`,
//! `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`) > TOML file (`--config`) > defaults.
//! Every source goes through the same validation here, and an error names the flag,
//! variable or key with the bad value.
//! The environment is read through an injectable lookup, so tests never set it.
//!
//! Every flag, variable and TOML key, with its default and meaning, and an example
//! file: `CONFIG.md` beside this crate's `Cargo.toml`, which `tests/host/config_doc.rs`
//! holds to [`Flags`], to the variables [`Settings::resolve`] reads and to
//! [`FileConfig`] both ways.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use otel_instrument::config::{Compression, ExporterConfig, Overrides, Signal};

use crate::catalogue::Family;
use crate::host::exclude::{Kind, Patterns};
use crate::host::filesystem::FilesystemConfig;
use crate::host::network::NetworkConfig;
use crate::host::{HostConfig, Roots};

/// Output format of `--once`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    /// A human-readable table.
    #[default]
    Table,
    /// A JSON array of `{name, unit, instrument, attributes, value}`.
    Json,
}

/// `--otlp-compression` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CompressionArg {
    /// gzip.
    Gzip,
    /// No compression.
    None,
}

/// Command-line flags: the raw, unvalidated first layer.
#[derive(Debug, Default, clap::Parser)]
#[command(
    name = "otel-gpu-receiver",
    version,
    about = "Host and NVIDIA GPU metrics over OTLP and Prometheus"
)]
pub struct Flags {
    /// TOML config file (unknown keys are errors). Env: OTEL_GPU_RECEIVER_CONFIG.
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Collection interval, also the OTLP export interval unless
    /// OTEL_METRIC_EXPORT_INTERVAL is set: `10s`, `500ms`, `1m`. Default: 10s.
    #[arg(long, value_name = "DURATION")]
    pub interval: Option<String>,
    /// When the first OTLP export goes out: `random` (a random offset within the export
    /// interval, so that a fleet started together does not push in step) or a duration
    /// from the start, at most the export interval (`0s`: at once).
    /// Env: OTEL_GPU_RECEIVER_FIRST_EXPORT_DELAY. Default: random.
    #[arg(long, value_name = "WHEN")]
    pub first_export_delay: Option<String>,
    /// OTLP gRPC endpoint. Default: `OTEL_EXPORTER_OTLP_[METRICS_]ENDPOINT`, else `http://localhost:4317`.
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// OTLP payload compression. Default: `OTEL_EXPORTER_OTLP_[METRICS_]COMPRESSION`, else none.
    #[arg(long, value_enum, value_name = "ALGORITHM")]
    pub otlp_compression: Option<CompressionArg>,
    /// Do not push over OTLP (for a pull-only setup).
    #[arg(long)]
    pub no_otlp: bool,
    /// Serve Prometheus `/metrics` and `/healthz` on this address (`9464` means
    /// 127.0.0.1:9464). Default: off.
    #[arg(long, value_name = "ADDR")]
    pub prometheus: Option<String>,
    /// Enable only these families (comma-separated). Default: all.
    #[arg(long, value_enum, value_delimiter = ',', value_name = "FAMILY")]
    pub families: Option<Vec<Family>>,
    /// Disable these families (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',', value_name = "FAMILY")]
    pub disable: Vec<Family>,
    /// procfs root (for containers that mount the host's /proc elsewhere). Default: /proc.
    #[arg(long, value_name = "PATH")]
    pub proc_root: Option<PathBuf>,
    /// sysfs root. Default: /sys.
    #[arg(long, value_name = "PATH")]
    pub sys_root: Option<PathBuf>,
    /// Where the host's root filesystem is mounted (read-only) in a container: mount
    /// points are statvfs'ed, and the hostname and machine id read, under it.
    /// Env: OTEL_GPU_RECEIVER_ROOTFS. Default: /.
    #[arg(long, value_name = "PATH")]
    pub rootfs: Option<PathBuf>,
    /// Time budget of one source per cycle. Default: half the interval, at most 5s.
    #[arg(long, value_name = "DURATION")]
    pub source_timeout: Option<String>,
    /// Filesystem types to leave out, comma-separated (`*` matches any characters); the
    /// list replaces the default one, and `none` keeps every type.
    /// Env: OTEL_GPU_RECEIVER_FS_TYPES_EXCLUDE. Default: overlay, tmpfs, squashfs,
    /// nsfs, proc, sysfs, cgroup* and other pseudo filesystems (see CATALOGUE.md).
    #[arg(long, value_name = "LIST")]
    pub fs_types_exclude: Option<String>,
    /// Mount points to leave out, comma-separated: a path excludes itself and what is
    /// under it, `*` matches any characters; the list replaces the default one, and
    /// `none` keeps every mount. Env: OTEL_GPU_RECEIVER_MOUNT_POINTS_EXCLUDE.
    /// Default: /dev, /proc, /sys, /var/lib/kubelet/pods/*, /run/containerd/*, … (see CATALOGUE.md).
    #[arg(long, value_name = "LIST")]
    pub mount_points_exclude: Option<String>,
    /// Network interfaces to leave out, comma-separated (`*` matches any characters);
    /// the list replaces the default one, and `none` keeps every interface.
    /// Env: OTEL_GPU_RECEIVER_INTERFACES_EXCLUDE. Default: veth*,cali*,flannel*,cni*,docker*.
    #[arg(long, value_name = "LIST")]
    pub interfaces_exclude: Option<String>,
    /// Deadline of one statvfs; a mount past it is skipped until it answers again.
    /// Env: OTEL_GPU_RECEIVER_STATVFS_TIMEOUT. Default: 1s (at most half the
    /// filesystem family's budget, which is 80% of --source-timeout).
    #[arg(long, value_name = "DURATION")]
    pub statvfs_timeout: Option<String>,
    /// service.instance.id. Default: K8S_NODE_NAME, else the host's hostname under
    /// --rootfs, else its machine id (stable across restarts on one host).
    #[arg(long, value_name = "ID")]
    pub instance_id: Option<String>,
    /// The NVML library to load (for example /usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1).
    /// Env: OTEL_GPU_RECEIVER_NVML_LIB. Default: libnvidia-ml.so from the loader's path.
    #[arg(long, value_name = "PATH")]
    pub nvml_lib: Option<PathBuf>,
    /// Report GPU memory and utilisation per process (series churn with pids).
    /// Env: OTEL_GPU_RECEIVER_PER_PROCESS=true. Default: off.
    #[arg(long)]
    pub per_process: bool,
    // --- attribution (issue 6) ---
    /// The kubelet pod-resources socket, for GPU attribution to pods.
    /// Env: OTEL_GPU_RECEIVER_KUBELET_SOCKET. Default: /var/lib/kubelet/pod-resources/kubelet.sock.
    #[arg(long, value_name = "PATH")]
    pub kubelet_socket: Option<PathBuf>,
    /// The kubelet's pod log directory, which names the pod behind a cgroup's pod UID.
    /// Env: OTEL_GPU_RECEIVER_POD_LOG_DIR. Default: /var/log/pods.
    #[arg(long, value_name = "PATH")]
    pub pod_log_dir: Option<PathBuf>,
    /// Turn GPU attribution (process → container → Kubernetes pod) off.
    /// Env: OTEL_GPU_RECEIVER_ATTRIBUTION=false. Default: on.
    #[arg(long)]
    pub no_attribution: bool,
    /// At most this many attributed GPU series per cycle; the excess is aggregated and counted.
    /// Env: OTEL_GPU_RECEIVER_ATTRIBUTION_MAX_SERIES. Default: 2000.
    #[arg(long, value_name = "N")]
    pub attribution_max_series: Option<String>,
    // --- end attribution ---
    /// Test-only (soak tests): accept an `--interval` below 100ms (`0.01ms`: cycles back
    /// to back), and a
    /// `--source-timeout` longer than the interval, so that a day of cycles runs in
    /// minutes. Hidden from `--help`: at such intervals the agent measures itself.
    #[arg(long, hide = true)]
    pub allow_short_interval: bool,
    /// Collect one snapshot, print it and exit.
    #[arg(long)]
    pub once: bool,
    /// Output format of --once.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Print the metric catalogue as a markdown table and exit.
    #[arg(long)]
    pub catalogue: bool,
    /// Validate the flags, environment and config file, then exit: 0 when they are
    /// valid, 2 with the error otherwise. Starts nothing. Host paths (--rootfs) are
    /// checked only when the agent starts, so a manifest's settings can be checked
    /// on any machine.
    #[arg(long)]
    pub check_config: bool,
}

/// The TOML file: the raw third layer. Every key is optional; unknown keys are errors.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Like `--interval`.
    pub interval: Option<String>,
    /// Like `--first-export-delay`.
    pub first_export_delay: Option<String>,
    /// Like `--prometheus`.
    pub prometheus: Option<String>,
    /// Like `--families`.
    pub families: Option<Vec<String>>,
    /// Like `--disable`.
    pub disable: Option<Vec<String>>,
    /// Like `--proc-root`.
    pub proc_root: Option<PathBuf>,
    /// Like `--sys-root`.
    pub sys_root: Option<PathBuf>,
    /// Like `--rootfs`.
    pub rootfs: Option<PathBuf>,
    /// Like `--source-timeout`.
    pub source_timeout: Option<String>,
    /// Like `--fs-types-exclude`, as a list.
    pub fs_types_exclude: Option<Vec<String>>,
    /// Like `--mount-points-exclude`, as a list.
    pub mount_points_exclude: Option<Vec<String>>,
    /// Like `--interfaces-exclude`, as a list.
    pub interfaces_exclude: Option<Vec<String>>,
    /// Like `--statvfs-timeout`.
    pub statvfs_timeout: Option<String>,
    /// Like `--instance-id`.
    pub instance_id: Option<String>,
    /// Like `--nvml-lib`.
    pub nvml_lib: Option<PathBuf>,
    /// Like `--per-process`.
    pub per_process: Option<bool>,
    /// Like `--kubelet-socket`.
    pub kubelet_socket: Option<PathBuf>,
    /// Like `--pod-log-dir`.
    pub pod_log_dir: Option<PathBuf>,
    /// GPU attribution on or off (`--no-attribution`).
    pub attribution: Option<bool>,
    /// Like `--attribution-max-series`.
    pub attribution_max_series: Option<u64>,
    /// OTLP exporter settings.
    pub otlp: Option<FileOtlp>,
}

/// The `[otlp]` table of the TOML file.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileOtlp {
    /// Push over OTLP at all. Default: true.
    pub enabled: Option<bool>,
    /// Endpoint URL.
    pub endpoint: Option<String>,
    /// Request headers.
    pub headers: Option<BTreeMap<String, String>>,
    /// Export timeout, e.g. `10s`.
    pub timeout: Option<String>,
    /// `gzip` or `none`.
    pub compression: Option<String>,
}

/// A configuration value that cannot be used. Exit code 2.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A value does not parse or is out of range.
    #[error("{culprit}: {value:?} is invalid: {reason}. Example of a valid value: {example}")]
    Invalid {
        /// The flag, variable or file key at fault.
        culprit: String,
        /// The value as given.
        value: String,
        /// Why it was rejected.
        reason: String,
        /// A value that would be accepted.
        example: String,
    },
    /// The config file cannot be read.
    #[error("cannot read config file {}", path.display())]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The config file is not valid TOML or has an unknown key or a wrong type.
    #[error("config file {}: {source}", path.display())]
    Toml {
        /// The file.
        path: PathBuf,
        /// The parser's error, which names the key.
        #[source]
        source: toml::de::Error,
    },
}

impl ConfigError {
    fn invalid(
        culprit: impl Into<String>,
        value: impl Into<String>,
        reason: impl Into<String>,
        example: impl Into<String>,
    ) -> Self {
        Self::Invalid {
            culprit: culprit.into(),
            value: value.into(),
            reason: reason.into(),
            example: example.into(),
        }
    }
}

/// When the agent's first OTLP export goes out; the later ones follow every export
/// interval from there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FirstExport {
    /// At a random offset within the export interval, different per agent, so that
    /// the agents of one rollout spread their pushes over the interval.
    #[default]
    Random,
    /// This long after the start (at most the export interval).
    After(Duration),
}

impl FirstExport {
    /// The delay of the first export for an agent with this export `interval`; `seed`
    /// (the agent's `service.instance.id`) varies the random offset between agents.
    pub fn delay(self, interval: Duration, seed: &str) -> Duration {
        match self {
            Self::Random => crate::otlp::first_export_offset(interval, seed),
            Self::After(d) => d,
        }
    }
}

/// Validated settings of one agent run.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Collection interval. Default: 10 s.
    pub interval: Duration,
    /// OTLP export interval. Default: the collection interval.
    pub export_interval: Duration,
    /// When the first OTLP export goes out. Default: [`FirstExport::Random`].
    pub first_export: FirstExport,
    /// The OTLP exporter; `None` when push is disabled. Default: enabled, localhost:4317.
    pub otlp: Option<ExporterConfig>,
    /// Prometheus pull address. Default: none.
    pub prometheus: Option<SocketAddr>,
    /// Enabled families. Default: all.
    pub families: Vec<Family>,
    /// /proc, /sys and the host's root filesystem. Default: `/proc`, `/sys`, `/`.
    pub roots: Roots,
    /// Time budget of one source per cycle. Default: half the interval, at most 5 s.
    pub source_timeout: Duration,
    /// The filesystem family's excludes and `statvfs` deadlines. Default: see
    /// [`FilesystemConfig`], with a budget of 80% of `source_timeout`.
    pub filesystem: FilesystemConfig,
    /// The network family's excludes. Default: see [`NetworkConfig`].
    pub network: NetworkConfig,
    /// The flag, variable or file key that set `roots.rootfs`, to name it in
    /// [`Settings::check_host_paths`]'s error. Default: none (the default `/`).
    pub rootfs_origin: Option<String>,
    /// `service.instance.id` when given; otherwise it is derived from the host's
    /// identity (see [`crate::identity`]). Default: none.
    pub instance_id: Option<String>,
    /// `k8s.node.name`, from `K8S_NODE_NAME`. Default: none.
    pub k8s_node_name: Option<String>,
    /// The NVML library. Default: none (libnvidia-ml.so from the loader's search path).
    pub nvml_lib: Option<PathBuf>,
    /// Per-process GPU series. Default: off.
    pub per_process: bool,
    /// GPU attribution to containers and pods; `None` when turned off. Default: on.
    pub attribution: Option<crate::attribution::AttributionConfig>,
    /// `service.name` from `OTEL_SERVICE_NAME`. Default: none (`service.name` from
    /// `OTEL_RESOURCE_ATTRIBUTES`, else `otel-gpu-receiver`).
    pub service_name: Option<String>,
    /// `OTEL_RESOURCE_ATTRIBUTES`, in order: they override the receiver's own resource
    /// attributes of the same key (see [`crate::telemetry::resource`]). Default: none.
    pub resource_attributes: Vec<(String, String)>,
    /// Print one snapshot and exit.
    pub once: bool,
    /// Format of `--once`.
    pub format: Format,
}

impl Default for Settings {
    fn default() -> Self {
        Self::resolve(Flags::default(), &|_| None).expect("defaults are valid")
    }
}

/// Environment variable prefix of the agent's own settings.
pub const ENV_PREFIX: &str = "OTEL_GPU_RECEIVER_";

fn env_name(suffix: &str) -> String {
    format!("{ENV_PREFIX}{suffix}")
}

/// Where a value came from, to name it in errors.
#[derive(Debug, Clone)]
enum Origin<'a> {
    Flag(&'static str),
    Env(String),
    File(&'a Path, &'static str),
}

impl fmt::Display for Origin<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Flag(n) => write!(f, "{n}"),
            Origin::Env(n) => write!(f, "{n}"),
            Origin::File(p, k) => write!(f, "key `{k}` in {}", p.display()),
        }
    }
}

impl Settings {
    /// Reads the TOML file named by the flags or `OTEL_GPU_RECEIVER_CONFIG`, then
    /// merges flags > env > file > defaults and validates everything.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the flag, variable or key and the bad value.
    pub fn resolve(
        flags: Flags,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let env = |suffix: &str| -> Option<(String, String)> {
            let name = env_name(suffix);
            lookup(&name)
                .filter(|v| !v.trim().is_empty())
                .map(|v| (name, v))
        };
        let config_path = flags
            .config
            .clone()
            .or_else(|| env("CONFIG").map(|(_, v)| PathBuf::from(v)));
        let file = match &config_path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::ReadFile {
                    path: p.clone(),
                    source,
                })?;
                toml::from_str::<FileConfig>(&text).map_err(|source| ConfigError::Toml {
                    path: p.clone(),
                    source,
                })?
            }
            None => FileConfig::default(),
        };
        let fpath = config_path.as_deref().unwrap_or(Path::new("config"));

        // Picks flag > env > file for a string setting, with its origin.
        let pick = |flag: Option<&String>,
                    fname: &'static str,
                    suffix: &str,
                    fval: Option<&String>,
                    key: &'static str|
         -> Option<(Origin<'_>, String)> {
            if let Some(v) = flag {
                return Some((Origin::Flag(fname), v.clone()));
            }
            if let Some((n, v)) = env(suffix) {
                return Some((Origin::Env(n), v));
            }
            fval.map(|v| (Origin::File(fpath, key), v.clone()))
        };

        let interval = match pick(
            flags.interval.as_ref(),
            "--interval",
            "INTERVAL",
            file.interval.as_ref(),
            "interval",
        ) {
            Some((o, v)) => parse_interval(&o.to_string(), &v, flags.allow_short_interval)?,
            None => Duration::from_secs(10),
        };

        let export_interval =
            match lookup("OTEL_METRIC_EXPORT_INTERVAL").filter(|v| !v.trim().is_empty()) {
                Some(v) => match v.trim().parse::<u64>() {
                    Ok(ms) if ms > 0 => Duration::from_millis(ms),
                    _ => {
                        return Err(ConfigError::invalid(
                            "OTEL_METRIC_EXPORT_INTERVAL",
                            v,
                            "expected a whole number of milliseconds greater than zero",
                            "10000",
                        ));
                    }
                },
                None => interval,
            };

        let first_export = match pick(
            flags.first_export_delay.as_ref(),
            "--first-export-delay",
            "FIRST_EXPORT_DELAY",
            file.first_export_delay.as_ref(),
            "first_export_delay",
        ) {
            Some((o, v)) => parse_first_export(&o.to_string(), &v, export_interval)?,
            None => FirstExport::Random,
        };

        let source_timeout = match pick(
            flags.source_timeout.as_ref(),
            "--source-timeout",
            "SOURCE_TIMEOUT",
            file.source_timeout.as_ref(),
            "source_timeout",
        ) {
            Some((o, v)) => {
                let d = parse_duration(&o.to_string(), &v, "2s")?;
                if d > interval && !flags.allow_short_interval {
                    return Err(ConfigError::invalid(
                        o.to_string(),
                        v,
                        format!(
                            "the source time budget must not exceed the interval ({interval:?})"
                        ),
                        "2s",
                    ));
                }
                d
            }
            None => (interval / 2).min(Duration::from_secs(5)),
        };

        let prometheus = match pick(
            flags.prometheus.as_ref(),
            "--prometheus",
            "PROMETHEUS",
            file.prometheus.as_ref(),
            "prometheus",
        ) {
            Some((o, v)) => Some(parse_listen(&o.to_string(), &v)?),
            None => None,
        };

        let families = resolve_families(&flags, &env, &file, fpath)?;
        let (filesystem, network) =
            resolve_host_families(&flags, &env, &file, fpath, source_timeout)?;

        let mut roots = Roots::default();
        if let Some(p) = flags
            .proc_root
            .clone()
            .or_else(|| env("PROC_ROOT").map(|(_, v)| PathBuf::from(v)))
            .or_else(|| file.proc_root.clone())
        {
            roots.proc = p;
        }
        if let Some(p) = flags
            .sys_root
            .clone()
            .or_else(|| env("SYS_ROOT").map(|(_, v)| PathBuf::from(v)))
            .or_else(|| file.sys_root.clone())
        {
            roots.sys = p;
        }
        let mut rootfs_origin = None;
        if let Some((o, p)) = flags
            .rootfs
            .clone()
            .map(|p| (Origin::Flag("--rootfs"), p))
            .or_else(|| env("ROOTFS").map(|(n, v)| (Origin::Env(n), PathBuf::from(v))))
            .or_else(|| {
                file.rootfs
                    .clone()
                    .map(|p| (Origin::File(fpath, "rootfs"), p))
            })
        {
            roots.rootfs = parse_rootfs(&o.to_string(), p)?;
            rootfs_origin = Some(o.to_string());
        }

        let instance_id = flags
            .instance_id
            .clone()
            .or_else(|| env("INSTANCE_ID").map(|(_, v)| v))
            .or_else(|| file.instance_id.clone());
        let k8s_node_name = lookup("K8S_NODE_NAME").filter(|v| !v.trim().is_empty());

        let nvml_lib = flags
            .nvml_lib
            .clone()
            .or_else(|| env("NVML_LIB").map(|(_, v)| PathBuf::from(v)))
            .or_else(|| file.nvml_lib.clone());
        let per_process = if flags.per_process {
            true
        } else if let Some((n, v)) = env("PER_PROCESS") {
            match v.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => true,
                "false" | "0" | "no" | "off" => false,
                _ => {
                    return Err(ConfigError::invalid(n, v, "expected true or false", "true"));
                }
            }
        } else {
            file.per_process.unwrap_or(false)
        };

        let attribution = resolve_attribution(
            &flags,
            &env,
            &file,
            fpath,
            &roots,
            per_process,
            source_timeout,
        )?;

        let otlp = resolve_otlp(&flags, lookup, file.otlp.as_ref(), fpath)?;
        let (service_name, resource_attributes) = resolve_resource(lookup)?;

        Ok(Self {
            interval,
            export_interval,
            first_export,
            otlp,
            prometheus,
            families,
            roots,
            source_timeout,
            filesystem,
            network,
            rootfs_origin,
            instance_id,
            k8s_node_name,
            nvml_lib,
            per_process,
            attribution,
            service_name,
            resource_attributes,
            once: flags.once,
            format: flags.format,
        })
    }
}

impl Settings {
    /// The host families' settings, for the collector.
    pub fn host(&self) -> HostConfig {
        HostConfig {
            roots: self.roots.clone(),
            filesystem: self.filesystem.clone(),
            network: self.network.clone(),
        }
    }
}

/// The filesystem and network families' excludes and the statvfs deadline:
/// flags > env > file > defaults.
fn resolve_host_families(
    flags: &Flags,
    env: &dyn Fn(&str) -> Option<(String, String)>,
    file: &FileConfig,
    fpath: &Path,
    source_timeout: Duration,
) -> Result<(FilesystemConfig, NetworkConfig), ConfigError> {
    let list = |kind: Kind,
                flag: Option<&String>,
                fname: &'static str,
                suffix: &str,
                fval: Option<&Vec<String>>,
                key: &'static str,
                example: &str|
     -> Result<Patterns, ConfigError> {
        let (culprit, value, items): (String, String, Vec<String>) = if let Some(v) = flag {
            (fname.to_owned(), v.clone(), split_list(v))
        } else if let Some((n, v)) = env(suffix) {
            let items = split_list(&v);
            (n, v, items)
        } else if let Some(items) = fval {
            (
                Origin::File(fpath, key).to_string(),
                format!("{items:?}"),
                items.clone(),
            )
        } else {
            return Ok(Patterns::default_for(kind));
        };
        if items.is_empty() || (items.len() == 1 && items[0].eq_ignore_ascii_case("none")) {
            return Ok(Patterns::none(kind));
        }
        Patterns::parse(kind, &items).map_err(|e| {
            ConfigError::invalid(
                culprit,
                value,
                format!(
                    "{e}; separate patterns with commas, use * for any characters, \
                     or give `none` to exclude nothing"
                ),
                example,
            )
        })
    };
    let fs_types_exclude = list(
        Kind::FsType,
        flags.fs_types_exclude.as_ref(),
        "--fs-types-exclude",
        "FS_TYPES_EXCLUDE",
        file.fs_types_exclude.as_ref(),
        "fs_types_exclude",
        "overlay,tmpfs,squashfs,nsfs,proc,sysfs,cgroup*",
    )?;
    let mount_points_exclude = list(
        Kind::MountPoint,
        flags.mount_points_exclude.as_ref(),
        "--mount-points-exclude",
        "MOUNT_POINTS_EXCLUDE",
        file.mount_points_exclude.as_ref(),
        "mount_points_exclude",
        "/dev,/proc,/sys,/var/lib/kubelet/pods/*,/run/containerd/*",
    )?;
    let interfaces_exclude = list(
        Kind::Interface,
        flags.interfaces_exclude.as_ref(),
        "--interfaces-exclude",
        "INTERFACES_EXCLUDE",
        file.interfaces_exclude.as_ref(),
        "interfaces_exclude",
        "veth*,cali*,flannel*,cni*,docker*",
    )?;

    // The filesystem family's calls get 80% of the source budget, so that the
    // collector never counts the family as timed out because of one hung mount.
    let budget = source_timeout.mul_f64(0.8);
    let statvfs_timeout = match (&flags.statvfs_timeout, env("STATVFS_TIMEOUT")) {
        (Some(v), _) => Some(("--statvfs-timeout".to_owned(), v.clone())),
        (None, Some((n, v))) => Some((n, v)),
        (None, None) => file
            .statvfs_timeout
            .clone()
            .map(|v| (Origin::File(fpath, "statvfs_timeout").to_string(), v)),
    };
    let statvfs_timeout = match statvfs_timeout {
        Some((culprit, v)) => {
            let d = parse_duration(&culprit, &v, "1s")?;
            if d > budget / 2 {
                return Err(ConfigError::invalid(
                    culprit,
                    v,
                    format!(
                        "the statvfs deadline must be at most half the filesystem budget \
                         ({:?}, 80% of the source time budget {source_timeout:?}), so that \
                         a hung mount leaves time for the others; lower it or raise \
                         --source-timeout",
                        budget / 2
                    ),
                    "1s",
                ));
            }
            d
        }
        None => Duration::from_secs(1).min(budget / 2),
    };
    Ok((
        FilesystemConfig {
            fs_types_exclude,
            mount_points_exclude,
            statvfs_timeout,
            budget,
            ..FilesystemConfig::default()
        },
        NetworkConfig { interfaces_exclude },
    ))
}

/// Splits a comma-separated list, dropping empty items.
fn split_list(v: &str) -> Vec<String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// GPU attribution settings (issue 6): flags > env > file > defaults.
fn resolve_attribution(
    flags: &Flags,
    env: &dyn Fn(&str) -> Option<(String, String)>,
    file: &FileConfig,
    fpath: &Path,
    roots: &Roots,
    per_process: bool,
    source_timeout: Duration,
) -> Result<Option<crate::attribution::AttributionConfig>, ConfigError> {
    let enabled = if flags.no_attribution {
        false
    } else if let Some((n, v)) = env("ATTRIBUTION") {
        match v.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => true,
            "false" | "0" | "no" | "off" => false,
            _ => {
                return Err(ConfigError::invalid(
                    n,
                    v,
                    "expected true or false",
                    "false",
                ));
            }
        }
    } else {
        file.attribution.unwrap_or(true)
    };
    if !enabled {
        return Ok(None);
    }
    let mut cfg = crate::attribution::AttributionConfig {
        proc_root: roots.proc.clone(),
        per_process,
        // The kubelet is asked inside the GPU source, after NVML (which gets 80% of the
        // source budget): its deadline fits in the rest.
        kubelet_timeout: crate::attribution::kubelet::DEFAULT_TIMEOUT
            .min(source_timeout.mul_f64(0.15))
            .max(Duration::from_millis(50)),
        ..Default::default()
    };
    if let Some(p) = flags
        .kubelet_socket
        .clone()
        .or_else(|| env("KUBELET_SOCKET").map(|(_, v)| PathBuf::from(v)))
        .or_else(|| file.kubelet_socket.clone())
    {
        cfg.kubelet_socket = p;
    }
    if let Some(p) = flags
        .pod_log_dir
        .clone()
        .or_else(|| env("POD_LOG_DIR").map(|(_, v)| PathBuf::from(v)))
        .or_else(|| file.pod_log_dir.clone())
    {
        cfg.pod_log_dir = p;
    }
    let max = match (&flags.attribution_max_series, env("ATTRIBUTION_MAX_SERIES")) {
        (Some(v), _) => Some(("--attribution-max-series".to_owned(), v.clone())),
        (None, Some((n, v))) => Some((n, v)),
        (None, None) => file.attribution_max_series.map(|n| {
            (
                format!("key `attribution_max_series` in {}", fpath.display()),
                n.to_string(),
            )
        }),
    };
    if let Some((culprit, v)) = max {
        cfg.max_series = match v.trim().parse::<usize>() {
            Ok(n) if n > 0 => n,
            _ => {
                return Err(ConfigError::invalid(
                    culprit,
                    v,
                    "expected a whole number of series greater than zero",
                    "2000",
                ));
            }
        };
    }
    Ok(Some(cfg))
}

fn resolve_families(
    flags: &Flags,
    env: &dyn Fn(&str) -> Option<(String, String)>,
    file: &FileConfig,
    fpath: &Path,
) -> Result<Vec<Family>, ConfigError> {
    let parse_list = |culprit: &str, items: &[String]| -> Result<Vec<Family>, ConfigError> {
        items
            .iter()
            .map(|s| {
                s.parse::<Family>().map_err(|()| {
                    ConfigError::invalid(
                        culprit,
                        s.clone(),
                        format!(
                            "unknown family; expected one of {}",
                            Family::ALL.map(Family::as_str).join(", ")
                        ),
                        "cpu,memory",
                    )
                })
            })
            .collect()
    };
    let split = |v: &str| -> Vec<String> {
        v.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let enabled: Vec<Family> = if let Some(f) = &flags.families {
        f.clone()
    } else if let Some((n, v)) = env("FAMILIES") {
        parse_list(&n, &split(&v))?
    } else if let Some(f) = &file.families {
        parse_list(&Origin::File(fpath, "families").to_string(), f)?
    } else {
        Family::ALL.to_vec()
    };
    let disabled: Vec<Family> = if !flags.disable.is_empty() {
        flags.disable.clone()
    } else if let Some((n, v)) = env("DISABLE") {
        parse_list(&n, &split(&v))?
    } else if let Some(f) = &file.disable {
        parse_list(&Origin::File(fpath, "disable").to_string(), f)?
    } else {
        Vec::new()
    };
    Ok(Family::ALL
        .into_iter()
        .filter(|f| enabled.contains(f) && !disabled.contains(f))
        .collect())
}

fn resolve_otlp(
    flags: &Flags,
    lookup: &dyn Fn(&str) -> Option<String>,
    file: Option<&FileOtlp>,
    fpath: &Path,
) -> Result<Option<ExporterConfig>, ConfigError> {
    let enabled = !flags.no_otlp && file.and_then(|f| f.enabled).unwrap_or(true);
    // The file's values act as generic OTEL_EXPORTER_OTLP_* variables under the
    // real environment, so the one parser in otel-instrument validates them all.
    let mut file_vars: BTreeMap<&'static str, (String, &'static str)> = BTreeMap::new();
    if let Some(f) = file {
        if let Some(e) = &f.endpoint {
            file_vars.insert("OTEL_EXPORTER_OTLP_ENDPOINT", (e.clone(), "otlp.endpoint"));
        }
        if let Some(h) = &f.headers {
            let joined = h
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",");
            file_vars.insert("OTEL_EXPORTER_OTLP_HEADERS", (joined, "otlp.headers"));
        }
        if let Some(t) = &f.timeout {
            let culprit = Origin::File(fpath, "otlp.timeout").to_string();
            let d = parse_duration(&culprit, t, "10s")?;
            file_vars.insert(
                "OTEL_EXPORTER_OTLP_TIMEOUT",
                (d.as_millis().to_string(), "otlp.timeout"),
            );
        }
        if let Some(c) = &f.compression {
            file_vars.insert(
                "OTEL_EXPORTER_OTLP_COMPRESSION",
                (c.clone(), "otlp.compression"),
            );
        }
    }
    let env_has = |k: &str| lookup(k).is_some_and(|v| !v.trim().is_empty());
    let merged = |k: &str| -> Option<String> {
        if env_has(k) {
            return lookup(k);
        }
        file_vars.get(k).map(|(v, _)| v.clone())
    };
    let overrides = Overrides {
        metrics_endpoint: flags.otlp_endpoint.clone(),
        compression: flags.otlp_compression.map(|c| match c {
            CompressionArg::Gzip => Some(Compression::Gzip),
            CompressionArg::None => None,
        }),
        ..Overrides::default()
    };
    let cfg = ExporterConfig::resolve(Signal::Metrics, &merged, &overrides).map_err(|e| {
        let ConfigError::Invalid {
            culprit: var,
            value,
            reason,
            example,
        } = from_instrument(e)
        else {
            unreachable!("from_instrument gives Invalid")
        };
        let culprit = if var == "endpoint" {
            "--otlp-endpoint".to_owned()
        } else if let Some((_, key)) = file_vars.get(var.as_str()).filter(|_| !env_has(&var)) {
            Origin::File(fpath, key).to_string()
        } else {
            var
        };
        ConfigError::invalid(culprit, value, reason, example)
    })?;
    Ok(enabled.then_some(cfg))
}

/// `OTEL_SERVICE_NAME`, and `OTEL_RESOURCE_ATTRIBUTES` in order.
type ResourceVars = (Option<String>, Vec<(String, String)>);

/// `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES`, read by otel-instrument's parser
/// (percent-decoding, and errors that name the variable), so that they mean here what
/// they mean to every instrumented service.
fn resolve_resource(lookup: &dyn Fn(&str) -> Option<String>) -> Result<ResourceVars, ConfigError> {
    const READ: [&str; 2] = ["OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES"];
    // Only these two: the exporter's variables are resolved above, for metrics alone.
    let only = |k: &str| READ.contains(&k).then(|| lookup(k)).flatten();
    let c = otel_instrument::config::Config::from_lookup(&only, &Overrides::default())
        .map_err(from_instrument)?;
    Ok((c.service_name, c.resource_attributes))
}

/// otel-instrument's error about a variable, as ours: the variable is the culprit.
fn from_instrument(e: otel_instrument::config::ConfigError) -> ConfigError {
    match e {
        otel_instrument::config::ConfigError::Invalid {
            var,
            value,
            reason,
            example,
        } => ConfigError::invalid(var, value, reason, example),
        other => ConfigError::invalid(other.variable(), "", other.to_string(), ""),
    }
}

/// Parses `10s`, `500ms`, `1m`, `1h` or a bare number of seconds.
fn parse_duration(culprit: &str, value: &str, example: &str) -> Result<Duration, ConfigError> {
    let v = value.trim();
    let (num, mult) = if let Some(n) = v.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = v.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (v, 1.0)
    };
    match num.trim().parse::<f64>() {
        Ok(x) if x.is_finite() && x > 0.0 && x * mult <= 86_400.0 => {
            Ok(Duration::from_secs_f64(x * mult))
        }
        Ok(_) => Err(ConfigError::invalid(
            culprit,
            value,
            "the duration must be greater than zero and at most a day",
            example,
        )),
        Err(_) => Err(ConfigError::invalid(
            culprit,
            value,
            "not a duration; use a number with ms, s, m or h",
            example,
        )),
    }
}

const ROOTFS_EXAMPLE: &str = "/host (with the host's / mounted there read-only: -v /:/host:ro)";

/// `--rootfs` must be an absolute path: a relative one would depend on the working
/// directory. Whether it exists is checked where the agent runs
/// ([`Settings::check_host_paths`]), so that a manifest's settings can be validated
/// anywhere.
fn parse_rootfs(culprit: &str, p: PathBuf) -> Result<PathBuf, ConfigError> {
    if !p.is_absolute() {
        return Err(ConfigError::invalid(
            culprit,
            p.display().to_string(),
            "the host's root filesystem must be an absolute path",
            ROOTFS_EXAMPLE,
        ));
    }
    Ok(p)
}

impl Settings {
    /// Checks, on the machine where the agent runs, that the paths the settings name
    /// are there: a missing `--rootfs` would make every mount point fail `statvfs` and
    /// the identity fall back, without a word.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the flag, variable or key and the fix.
    pub fn check_host_paths(&self) -> Result<(), ConfigError> {
        if !self.roots.rootfs.is_dir() {
            return Err(ConfigError::invalid(
                self.rootfs_origin.as_deref().unwrap_or("--rootfs"),
                self.roots.rootfs.display().to_string(),
                "not a directory here; mount the host's / into the container and name \
                 where it is mounted",
                ROOTFS_EXAMPLE,
            ));
        }
        Ok(())
    }
}

/// The shortest interval a user may set: shorter ones cost more CPU than they are worth.
/// `--allow-short-interval` (soak tests only) lifts it: any interval above zero, so that
/// cycles can run back to back.
pub const SHORTEST_INTERVAL: Duration = Duration::from_millis(100);

fn parse_interval(culprit: &str, value: &str, short: bool) -> Result<Duration, ConfigError> {
    let d = parse_duration(culprit, value, "10s")?;
    if short {
        return Ok(d);
    }
    if d < SHORTEST_INTERVAL {
        return Err(ConfigError::invalid(
            culprit,
            value,
            "the interval must be at least 100ms",
            "10s",
        ));
    }
    Ok(d)
}

/// Parses `--first-export-delay`: `random`, or a duration (zero allowed) of at most
/// the export interval, so that the first push never comes later than the interval
/// would bring it.
fn parse_first_export(
    culprit: &str,
    value: &str,
    export_interval: Duration,
) -> Result<FirstExport, ConfigError> {
    let v = value.trim();
    if v.eq_ignore_ascii_case("random") {
        return Ok(FirstExport::Random);
    }
    let zero = v
        .trim_end_matches("ms")
        .trim_end_matches(['s', 'm', 'h'])
        .trim()
        .parse::<f64>()
        .is_ok_and(|x| x == 0.0);
    let d = if zero {
        Duration::ZERO
    } else {
        parse_duration(culprit, value, "random").map_err(|_| {
            ConfigError::invalid(
                culprit,
                value,
                "expected `random` or a duration (a number with ms, s, m or h)",
                "random",
            )
        })?
    };
    if d > export_interval {
        return Err(ConfigError::invalid(
            culprit,
            value,
            format!(
                "the first export must come within one export interval ({export_interval:?}); use `random` or a shorter delay"
            ),
            "random",
        ));
    }
    Ok(FirstExport::After(d))
}

/// Parses a listen address; a bare port (`9464` or `:9464`) binds 127.0.0.1.
fn parse_listen(culprit: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    let v = value.trim();
    let port_only = v.strip_prefix(':').unwrap_or(v);
    if let Ok(port) = port_only.parse::<u16>() {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    if let Some(port) = v.strip_prefix("localhost:")
        && let Ok(port) = port.parse::<u16>()
    {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    v.parse::<SocketAddr>().map_err(|_| {
        ConfigError::invalid(
            culprit,
            value,
            "not a listen address; use IP:PORT or a port",
            "127.0.0.1:9464",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use std::collections::HashMap;

    fn resolve(args: &[&str], env: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let mut argv = vec!["otel-gpu-receiver"];
        argv.extend_from_slice(args);
        let flags = Flags::try_parse_from(argv).unwrap();
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Settings::resolve(flags, &|k| env.get(k).cloned())
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        use std::io::Write;
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    #[test]
    fn defaults_are_ten_seconds_all_families_and_local_otlp() {
        let s = resolve(&[], &[]).unwrap();
        assert_eq!(s.interval, Duration::from_secs(10));
        assert_eq!(s.export_interval, Duration::from_secs(10));
        assert_eq!(s.source_timeout, Duration::from_secs(5));
        assert_eq!(s.families, Family::ALL.to_vec());
        assert_eq!(s.otlp.unwrap().endpoint, "http://localhost:4317");
        assert!(s.prometheus.is_none());
    }

    #[test]
    fn flags_beat_env_which_beats_the_file() {
        let f = file(
            "interval = \"30s\"\nprometheus = \"9000\"\n[otlp]\nendpoint = \"http://file:4317\"\n",
        );
        let path = f.path().to_str().unwrap();
        let s = resolve(&["--config", path], &[]).unwrap();
        assert_eq!(s.interval, Duration::from_secs(30));
        assert_eq!(s.otlp.unwrap().endpoint, "http://file:4317");
        assert_eq!(s.prometheus.unwrap().to_string(), "127.0.0.1:9000");

        let env = [
            ("OTEL_GPU_RECEIVER_INTERVAL", "20s"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://env:4317"),
        ];
        let s = resolve(&["--config", path], &env).unwrap();
        assert_eq!(s.interval, Duration::from_secs(20));
        assert_eq!(s.otlp.unwrap().endpoint, "http://env:4317");

        let s = resolve(
            &[
                "--config",
                path,
                "--interval",
                "5s",
                "--otlp-endpoint",
                "http://flag:4317",
            ],
            &env,
        )
        .unwrap();
        assert_eq!(s.interval, Duration::from_secs(5));
        assert_eq!(s.otlp.unwrap().endpoint, "http://flag:4317");
    }

    #[test]
    fn metric_export_interval_env_overrides_the_interval_for_export_only() {
        let s = resolve(
            &["--interval", "2s"],
            &[("OTEL_METRIC_EXPORT_INTERVAL", "15000")],
        )
        .unwrap();
        assert_eq!(s.interval, Duration::from_secs(2));
        assert_eq!(s.export_interval, Duration::from_secs(15));
    }

    #[test]
    fn a_bad_env_interval_names_the_variable() {
        let e = resolve(&[], &[("OTEL_GPU_RECEIVER_INTERVAL", "soon")]).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("OTEL_GPU_RECEIVER_INTERVAL") && msg.contains("soon"),
            "{msg}"
        );
    }

    #[test]
    fn a_bad_file_endpoint_names_the_key() {
        let f = file("[otlp]\nendpoint = \"ftp://x\"\n");
        let e = resolve(&["--config", f.path().to_str().unwrap()], &[]).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("otlp.endpoint") && msg.contains("ftp://x"),
            "{msg}"
        );
    }

    #[test]
    fn families_can_be_enabled_and_disabled_from_every_layer() {
        let s = resolve(&["--families", "cpu,memory,disk", "--disable", "disk"], &[]).unwrap();
        assert_eq!(s.families, vec![Family::Cpu, Family::Memory]);
        let s = resolve(&[], &[("OTEL_GPU_RECEIVER_DISABLE", "filesystem")]).unwrap();
        assert!(!s.families.contains(&Family::Filesystem));
        let e = resolve(&[], &[("OTEL_GPU_RECEIVER_FAMILIES", "cpu,gpus")]).unwrap_err();
        assert!(e.to_string().contains("OTEL_GPU_RECEIVER_FAMILIES"));
    }

    #[test]
    fn no_otlp_disables_push_and_a_bare_port_binds_localhost() {
        let s = resolve(&["--no-otlp", "--prometheus", ":9464"], &[]).unwrap();
        assert!(s.otlp.is_none());
        assert_eq!(s.prometheus.unwrap().to_string(), "127.0.0.1:9464");
    }

    #[test]
    fn rootfs_comes_from_flag_env_or_file_and_must_be_an_existing_absolute_directory() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().to_str().unwrap();
        assert_eq!(resolve(&[], &[]).unwrap().roots.rootfs, Path::new("/"));
        let s = resolve(&[], &[("OTEL_GPU_RECEIVER_ROOTFS", dir)]).unwrap();
        assert_eq!(s.roots.rootfs, d.path());
        let f = file(&format!("rootfs = \"{dir}\"\n"));
        let s = resolve(&["--config", f.path().to_str().unwrap()], &[]).unwrap();
        assert_eq!(s.roots.rootfs, d.path());

        let e = resolve(&["--rootfs", "host"], &[]).unwrap_err().to_string();
        assert!(e.contains("--rootfs") && e.contains("absolute"), "{e}");
        // A path that is not here parses (a manifest can be checked anywhere), and
        // the check where the agent runs names where it came from.
        assert!(resolve(&[], &[]).unwrap().check_host_paths().is_ok());
        let missing = d.path().join("nope");
        let s = resolve(
            &[],
            &[("OTEL_GPU_RECEIVER_ROOTFS", missing.to_str().unwrap())],
        )
        .unwrap();
        let e = s.check_host_paths().unwrap_err().to_string();
        assert!(
            e.contains("OTEL_GPU_RECEIVER_ROOTFS") && e.contains("not a directory"),
            "{e}"
        );
        let f = file("rootfs = \"/definitely/not/here\"\n");
        let s = resolve(&["--config", f.path().to_str().unwrap()], &[]).unwrap();
        let e = s.check_host_paths().unwrap_err().to_string();
        assert!(e.contains("key `rootfs`"), "{e}");
    }

    #[test]
    fn exclude_lists_come_from_flag_env_or_file_and_replace_the_defaults() {
        let s = resolve(&[], &[]).unwrap();
        assert!(s.filesystem.fs_types_exclude.matches("overlay"));
        assert!(
            s.filesystem
                .mount_points_exclude
                .matches("/var/lib/kubelet/pods/x")
        );
        assert!(s.network.interfaces_exclude.matches("veth1"));
        assert_eq!(s.filesystem.statvfs_timeout, Duration::from_secs(1));
        assert_eq!(s.filesystem.budget, Duration::from_secs(4));

        let s = resolve(&["--interfaces-exclude", "lo,eth*"], &[]).unwrap();
        assert!(s.network.interfaces_exclude.matches("eth0"));
        assert!(!s.network.interfaces_exclude.matches("veth1"));
        let s = resolve(&[], &[("OTEL_GPU_RECEIVER_FS_TYPES_EXCLUDE", "none")]).unwrap();
        assert!(!s.filesystem.fs_types_exclude.matches("overlay"));
        let s = resolve(&["--mount-points-exclude", ""], &[]).unwrap();
        assert!(!s.filesystem.mount_points_exclude.matches("/proc"));
        let f = file("mount_points_exclude = [\"/srv\"]\nstatvfs_timeout = \"250ms\"\n");
        let s = resolve(&["--config", f.path().to_str().unwrap()], &[]).unwrap();
        assert!(s.filesystem.mount_points_exclude.matches("/srv/x"));
        assert!(!s.filesystem.mount_points_exclude.matches("/proc"));
        assert_eq!(s.filesystem.statvfs_timeout, Duration::from_millis(250));
        // The env beats the file, the flag beats the env.
        let s = resolve(
            &["--config", f.path().to_str().unwrap()],
            &[("OTEL_GPU_RECEIVER_MOUNT_POINTS_EXCLUDE", "/data")],
        )
        .unwrap();
        assert!(s.filesystem.mount_points_exclude.matches("/data"));
        assert!(!s.filesystem.mount_points_exclude.matches("/srv"));
    }

    #[test]
    fn bad_exclude_patterns_and_statvfs_timeouts_name_the_flag_variable_or_key() {
        let e = resolve(&["--mount-points-exclude", "/proc,var/lib"], &[])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--mount-points-exclude") && e.contains("var/lib") && e.contains("absolute"),
            "{e}"
        );
        let e = resolve(&[], &[("OTEL_GPU_RECEIVER_FS_TYPES_EXCLUDE", "ext4 xfs")])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("OTEL_GPU_RECEIVER_FS_TYPES_EXCLUDE") && e.contains("commas"),
            "{e}"
        );
        let f = file("interfaces_exclude = [\"eth 0\"]\n");
        let e = resolve(&["--config", f.path().to_str().unwrap()], &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("key `interfaces_exclude`"), "{e}");
        let e = resolve(&["--statvfs-timeout", "3s"], &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--statvfs-timeout") && e.contains("half"), "{e}");
        let e = resolve(&[], &[("OTEL_GPU_RECEIVER_STATVFS_TIMEOUT", "soon")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("OTEL_GPU_RECEIVER_STATVFS_TIMEOUT"), "{e}");
        // A short interval shrinks the default deadline with it.
        let s = resolve(&["--interval", "1s"], &[]).unwrap();
        assert_eq!(s.filesystem.statvfs_timeout, Duration::from_millis(200));
    }

    #[test]
    fn service_name_and_resource_attributes_come_from_the_standard_variables() {
        let s = resolve(&[], &[]).unwrap();
        assert_eq!(s.service_name, None);
        assert!(s.resource_attributes.is_empty());
        let s = resolve(
            &[],
            &[
                ("OTEL_SERVICE_NAME", "gpu-fleet"),
                ("OTEL_RESOURCE_ATTRIBUTES", "team=gpu%20infra, env=prod"),
            ],
        )
        .unwrap();
        assert_eq!(s.service_name.as_deref(), Some("gpu-fleet"));
        assert_eq!(
            s.resource_attributes,
            vec![
                ("team".to_owned(), "gpu infra".to_owned()),
                ("env".to_owned(), "prod".to_owned())
            ]
        );
        let e = resolve(&[], &[("OTEL_RESOURCE_ATTRIBUTES", "novalue")]).unwrap_err();
        assert!(e.to_string().contains("OTEL_RESOURCE_ATTRIBUTES"), "{e}");
    }

    #[test]
    fn source_timeout_cannot_exceed_the_interval() {
        let e = resolve(&["--interval", "1s", "--source-timeout", "2s"], &[]).unwrap_err();
        assert!(e.to_string().contains("--source-timeout"));
    }

    #[test]
    fn the_first_export_is_random_by_default_and_a_flag_env_or_file_fixes_it() {
        assert_eq!(resolve(&[], &[]).unwrap().first_export, FirstExport::Random);
        let f = file("first_export_delay = \"3s\"\n");
        let path = f.path().to_str().unwrap();
        let s = resolve(&["--config", path], &[]).unwrap();
        assert_eq!(s.first_export, FirstExport::After(Duration::from_secs(3)));
        let env = [("OTEL_GPU_RECEIVER_FIRST_EXPORT_DELAY", "0s")];
        let s = resolve(&["--config", path], &env).unwrap();
        assert_eq!(s.first_export, FirstExport::After(Duration::ZERO));
        let s = resolve(&["--config", path, "--first-export-delay", "random"], &env).unwrap();
        assert_eq!(s.first_export, FirstExport::Random);
        let s = resolve(&["--first-export-delay", "500ms"], &[]).unwrap();
        assert_eq!(
            s.first_export.delay(s.export_interval, "x"),
            Duration::from_millis(500)
        );
    }

    #[test]
    fn a_first_export_delay_past_the_export_interval_or_not_a_duration_is_an_error() {
        let e = resolve(&["--interval", "5s", "--first-export-delay", "6s"], &[]).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("--first-export-delay") && msg.contains("6s") && msg.contains("random"),
            "{msg}"
        );
        // The export interval counts, not the collection interval.
        let env = [("OTEL_METRIC_EXPORT_INTERVAL", "20000")];
        let s = resolve(&["--interval", "5s", "--first-export-delay", "15s"], &env).unwrap();
        assert_eq!(s.first_export, FirstExport::After(Duration::from_secs(15)));
        let e = resolve(&[], &[("OTEL_GPU_RECEIVER_FIRST_EXPORT_DELAY", "soonish")]).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("OTEL_GPU_RECEIVER_FIRST_EXPORT_DELAY")
                && msg.contains("soonish")
                && msg.contains("`random` or a duration"),
            "{msg}"
        );
        let f = file("first_export_delay = \"-1s\"\n");
        let e = resolve(&["--config", f.path().to_str().unwrap()], &[]).unwrap_err();
        assert!(e.to_string().contains("key `first_export_delay`"), "{e}");
    }

    #[test]
    fn only_the_hidden_test_flag_allows_intervals_below_100ms() {
        let e = resolve(&["--interval", "1ms"], &[]).unwrap_err();
        assert!(e.to_string().contains("at least 100ms"), "{e}");
        let s = resolve(
            &[
                "--allow-short-interval",
                "--interval",
                "1ms",
                "--source-timeout",
                "2s",
            ],
            &[],
        )
        .unwrap();
        assert_eq!(s.interval, Duration::from_millis(1));
        assert_eq!(s.source_timeout, Duration::from_secs(2));
        let e = resolve(&["--allow-short-interval", "--interval", "0ms"], &[]).unwrap_err();
        assert!(e.to_string().contains("--interval"), "{e}");
    }
}
