//! What `Telemetry` puts on the resource besides the service: a per-process
//! `service.instance.id`, the host, the OS, the process, and the container and
//! Kubernetes pod it runs in.
//!
//! Detection has the lowest precedence: `OTEL_RESOURCE_ATTRIBUTES` beats it,
//! and the builder beats both.
//!
//! | attribute | source |
//! |---|---|
//! | `service.instance.id` | a random UUID (v4) per process, as the semantic conventions recommend; OTLP → Prometheus makes it `instance`, so replicas never collide |
//! | `host.name` | `/proc/sys/kernel/hostname`, else `HOSTNAME` |
//! | `host.arch`, `os.type` | the target the binary was built for, in semconv's spelling (`amd64`, `arm64`; `linux`, `darwin`, ...) |
//! | `process.pid`, `process.executable.name`, `process.runtime.{name,version,description}` | this process; the runtime is `rust`, at the version of the compiler that built it |
//! | `container.id` | this process's cgroup ([`cgroup`]: docker, containerd, CRI-O, podman, kubelet) |
//! | `k8s.pod.uid` | the cgroup, else `K8S_POD_UID` |
//! | `k8s.pod.name`, `k8s.namespace.name`, `k8s.node.name`, `k8s.container.name` | the downward-API variables `K8S_POD_NAME`, `K8S_NAMESPACE_NAME`, `K8S_NODE_NAME`, `K8S_CONTAINER_NAME` |

pub mod cgroup;

use opentelemetry::KeyValue;

/// The downward-API variables read for `k8s.*`, and their attributes.
pub const K8S_VARIABLES: &[(&str, &str)] = &[
    ("K8S_POD_NAME", "k8s.pod.name"),
    ("K8S_POD_UID", "k8s.pod.uid"),
    ("K8S_NAMESPACE_NAME", "k8s.namespace.name"),
    ("K8S_NODE_NAME", "k8s.node.name"),
    ("K8S_CONTAINER_NAME", "k8s.container.name"),
];

/// Detects the attributes in the table above; `lookup` reads the environment.
pub fn detect(lookup: &dyn Fn(&str) -> Option<String>) -> Vec<KeyValue> {
    let non_empty = |v: Option<String>| v.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty());
    let mut out = vec![
        KeyValue::new("service.instance.id", uuid_v4(random_u128())),
        KeyValue::new("host.arch", host_arch(std::env::consts::ARCH)),
        KeyValue::new("os.type", os_type(std::env::consts::OS)),
        KeyValue::new("process.pid", i64::from(std::process::id())),
        KeyValue::new("process.runtime.name", "rust"),
        KeyValue::new(
            "process.runtime.version",
            env!("OTEL_INSTRUMENT_RUSTC_VERSION"),
        ),
        KeyValue::new(
            "process.runtime.description",
            env!("OTEL_INSTRUMENT_RUSTC_DESCRIPTION"),
        ),
    ];
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .and_then(|h| non_empty(Some(h)))
        .or_else(|| non_empty(lookup("HOSTNAME")));
    if let Some(h) = hostname {
        out.push(KeyValue::new("host.name", h));
    }
    if let Some(name) = std::env::current_exe()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
    {
        out.push(KeyValue::new("process.executable.name", name));
    }
    let placement = cgroup::CgroupReader::default()
        .read(std::process::id())
        .unwrap_or_default();
    if let Some(id) = placement.container_id {
        out.push(KeyValue::new("container.id", id));
    }
    let mut pod_uid = placement.pod_uid;
    for (var, key) in K8S_VARIABLES {
        if let Some(v) = non_empty(lookup(var)) {
            if *key == "k8s.pod.uid" {
                pod_uid.get_or_insert(v);
            } else {
                out.push(KeyValue::new(*key, v));
            }
        }
    }
    if let Some(uid) = pod_uid {
        out.push(KeyValue::new("k8s.pod.uid", uid));
    }
    out
}

/// 128 random bits, from the SDK's own id generator.
fn random_u128() -> u128 {
    use opentelemetry_sdk::trace::IdGenerator as _;
    let id = opentelemetry_sdk::trace::RandomIdGenerator::default().new_trace_id();
    u128::from_be_bytes(id.to_bytes())
}

/// Formats 128 random bits as an RFC 9562 version 4 UUID.
fn uuid_v4(bits: u128) -> String {
    let b = (bits & !(0xf << 76) | (0x4 << 76)) & !(0b11 << 62) | (0b10 << 62);
    let hex = format!("{b:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// `host.arch` as the semantic conventions spell it.
fn host_arch(arch: &str) -> &str {
    match arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm32",
        "powerpc" => "ppc32",
        "powerpc64" => "ppc64",
        other => other,
    }
}

/// `os.type` as the semantic conventions spell it.
fn os_type(os: &str) -> &str {
    match os {
        "macos" | "ios" => "darwin",
        "dragonfly" => "dragonflybsd",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_ids_are_version_4_uuids_and_differ() {
        let a = uuid_v4(random_u128());
        let b = uuid_v4(random_u128());
        assert_ne!(a, b);
        for id in [&a, &b, &uuid_v4(u128::MAX), &uuid_v4(0)] {
            let parts: Vec<&str> = id.split('-').collect();
            assert_eq!(
                parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
                [8, 4, 4, 4, 12],
                "{id}"
            );
            assert!(parts[2].starts_with('4'), "version 4: {id}");
            assert!(
                matches!(&parts[3][..1], "8" | "9" | "a" | "b"),
                "RFC variant: {id}"
            );
        }
    }

    #[test]
    fn arch_and_os_use_the_semconv_spelling() {
        assert_eq!(host_arch("x86_64"), "amd64");
        assert_eq!(host_arch("aarch64"), "arm64");
        assert_eq!(os_type("macos"), "darwin");
        assert_eq!(os_type("linux"), "linux");
    }

    #[test]
    fn k8s_attributes_come_from_the_downward_api_variables() {
        let env = |k: &str| match k {
            "K8S_POD_NAME" => Some("web-7d9f".to_owned()),
            "K8S_NAMESPACE_NAME" => Some("shop".to_owned()),
            "K8S_NODE_NAME" => Some(" gpu-node-3 ".to_owned()),
            "K8S_CONTAINER_NAME" => Some(String::new()),
            _ => None,
        };
        let got: std::collections::BTreeMap<String, String> = detect(&env)
            .into_iter()
            .map(|kv| (kv.key.to_string(), kv.value.to_string()))
            .collect();
        assert_eq!(got["k8s.pod.name"], "web-7d9f");
        assert_eq!(got["k8s.namespace.name"], "shop");
        assert_eq!(got["k8s.node.name"], "gpu-node-3");
        assert!(!got.contains_key("k8s.container.name"), "empty means unset");
        assert_eq!(got["process.pid"], std::process::id().to_string());
        assert_eq!(got["process.runtime.name"], "rust");
        assert!(
            got["process.runtime.version"]
                .split('.')
                .all(|p| p.chars().next().is_some_and(|c| c.is_ascii_digit())),
            "{}",
            got["process.runtime.version"]
        );
    }
}
