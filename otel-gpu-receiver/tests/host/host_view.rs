//! The host's view from a container: pid 1's network namespace and mount table, the
//! host's root filesystem under `--rootfs`, the node name from `K8S_NODE_NAME`, and a
//! `service.instance.id` that stays the same across restarts.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use otel_instrument::testing::OtlpSink;

use crate::common::{BIN, run, start_agent};

const HEADER: &str = "Inter-|   Receive                            |  Transmit\n face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n";

/// A /proc and a rootfs in which the agent's own namespaces (`net/dev`, `mounts`) are a
/// container's and pid 1's (`1/net/dev`, `1/mountinfo`) the host's.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        let w = |rel: &str, text: &str| {
            let path = p.join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        };
        // The container's own view.
        w(
            "proc/net/dev",
            &format!(
                "{HEADER}    lo: 1 1 0 0 0 0 0 0 1 1 0 0 0 0 0 0\n  eth0: 2 2 0 0 0 0 0 0 2 2 0 0 0 0 0 0\n"
            ),
        );
        w(
            "proc/mounts",
            "overlay / overlay rw,lowerdir=/a,upperdir=/b 0 0\n/dev/vda1 /etc/hosts ext4 rw 0 0\n",
        );
        // The host's, through pid 1.
        w(
            "proc/1/net/dev",
            &format!(
                "{HEADER}    lo: 5 5 0 0 0 0 0 0 5 5 0 0 0 0 0 0\n  bond0: 123456 100 0 0 0 0 0 0 654321 200 0 0 0 0 0 0\n  ib0: 7 7 0 0 0 0 0 0 7 7 0 0 0 0 0 0\n"
            ),
        );
        w(
            "proc/1/mountinfo",
            "22 1 253:1 / / rw,relatime - ext4 /dev/mapper/root rw\n\
             40 22 259:2 / /srv/otel-fixture-scratch rw,noatime - xfs /dev/nvme0n1p2 rw\n\
             41 22 259:3 / /srv/otel-fixture-absent rw - xfs /dev/nvme1n1 rw\n",
        );
        // The host's root filesystem, with one of its mount points and its identity.
        w("rootfs/etc/hostname", "gpu-node-42\n");
        w(
            "rootfs/etc/machine-id",
            "5f1c0ffee0ddba11ad5eed0000000042\n",
        );
        std::fs::create_dir_all(p.join("rootfs/srv/otel-fixture-scratch")).unwrap();
        Self { dir }
    }

    fn proc(&self) -> String {
        self.dir.path().join("proc").display().to_string()
    }

    fn rootfs(&self) -> String {
        self.dir.path().join("rootfs").display().to_string()
    }
}

fn once_rows(args: &[&str], env: &[(&str, &str)]) -> Vec<serde_json::Value> {
    let mut all = vec!["--once", "--format", "json", "--no-otlp"];
    all.extend_from_slice(args);
    let out = run(&all, env);
    assert!(
        out.status.success(),
        "--once failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).expect("JSON rows")
}

fn attr_values(rows: &[serde_json::Value], metric: &str, key: &str) -> BTreeSet<String> {
    rows.iter()
        .filter(|r| r["name"] == metric)
        .filter_map(|r| r["attributes"][key].as_str().map(str::to_owned))
        .collect()
}

#[test]
fn a_container_reports_pid_1s_interfaces_and_mounts_statvfsed_under_the_rootfs() {
    let f = Fixture::new();
    let rows = once_rows(
        &[
            "--families",
            "network,filesystem",
            "--proc-root",
            &f.proc(),
            "--rootfs",
            &f.rootfs(),
        ],
        &[],
    );
    let ifaces = attr_values(&rows, "system.network.io", "network.interface.name");
    assert_eq!(
        ifaces,
        BTreeSet::from(["lo".into(), "bond0".into(), "ib0".into()]),
        "the host's interfaces, not the container's eth0"
    );
    let rx = rows
        .iter()
        .find(|r| {
            r["name"] == "system.network.io"
                && r["attributes"]["network.interface.name"] == "bond0"
                && r["attributes"]["network.io.direction"] == "receive"
        })
        .expect("bond0 receive bytes");
    assert_eq!(rx["value"], 123456);

    let mounts = attr_values(
        &rows,
        "system.filesystem.limit",
        "system.filesystem.mountpoint",
    );
    // The host's mount table; /srv/otel-fixture-scratch exists only under the rootfs
    // (so it was statvfs'ed there); the absent one is skipped; the container's overlay
    // and /etc/hosts are nowhere.
    assert_eq!(
        mounts,
        BTreeSet::from(["/".into(), "/srv/otel-fixture-scratch".into()])
    );
    let devices = attr_values(&rows, "system.filesystem.limit", "system.device");
    assert_eq!(
        devices,
        BTreeSet::from(["/dev/mapper/root".into(), "/dev/nvme0n1p2".into()])
    );
}

#[test]
fn a_rootfs_that_is_not_a_directory_exits_2_naming_the_flag_and_the_variable() {
    let out = run(&["--once", "--rootfs", "/definitely/not/a/rootfs"], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--rootfs") && err.contains("/definitely/not/a/rootfs"),
        "{err}"
    );
    let out = run(&["--once"], &[("OTEL_GPU_RECEIVER_ROOTFS", "relative/dir")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("OTEL_GPU_RECEIVER_ROOTFS") && err.contains("absolute"),
        "{err}"
    );
}

/// The resource of the first export of an agent started with `args` and `env`.
fn resource_of_agent(
    args: &[&str],
    env: &[(&str, &str)],
) -> std::collections::BTreeMap<String, String> {
    let sink = OtlpSink::start().unwrap();
    let endpoint = sink.endpoint();
    let mut all = vec![
        "--interval",
        "500ms",
        "--families",
        "uptime",
        "--otlp-endpoint",
        &endpoint,
    ];
    all.extend_from_slice(args);
    let _agent = start_agent(&all, env);
    let got = sink
        .wait_for_metric("system.uptime", Duration::from_secs(20))
        .expect("an export with system.uptime");
    got.resource
}

#[test]
fn the_identity_is_the_hosts_under_rootfs_and_stays_the_same_across_restarts() {
    let f = Fixture::new();
    let rootfs = f.rootfs();
    let first = resource_of_agent(&["--rootfs", &rootfs], &[]);
    assert_eq!(first["host.name"], "gpu-node-42");
    assert_eq!(first["host.id"], "5f1c0ffee0ddba11ad5eed0000000042");
    assert_eq!(first["service.instance.id"], "gpu-node-42");
    // A restart (a new container, a new process): the same instance.
    let second = resource_of_agent(&[], &[("OTEL_GPU_RECEIVER_ROOTFS", &rootfs)]);
    assert_eq!(second["service.instance.id"], first["service.instance.id"]);
    assert_eq!(second["host.id"], first["host.id"]);

    // On Kubernetes the node name is the instance, and k8s.node.name is set.
    let k8s = resource_of_agent(
        &["--rootfs", &rootfs],
        &[("K8S_NODE_NAME", "node-pool-a-7")],
    );
    assert_eq!(k8s["service.instance.id"], "node-pool-a-7");
    assert_eq!(k8s["k8s.node.name"], "node-pool-a-7");
    assert_eq!(k8s["host.name"], "gpu-node-42");
}

/// Interface names of a /proc/net/dev text.
fn interfaces(text: &str) -> BTreeSet<String> {
    text.lines()
        .skip(2)
        .filter_map(|l| Some(l.split_once(':')?.0.trim().to_owned()))
        .collect()
}

/// Why `unshare -n` cannot be used here, if it cannot.
fn unshare_refused() -> Option<String> {
    match Command::new("unshare").args(["-n", "true"]).output() {
        Err(e) => Some(format!("cannot run unshare: {e}")),
        Ok(o) if !o.status.success() => Some(format!(
            "unshare -n is refused here ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Ok(_) => None,
    }
}

#[test]
fn under_unshare_n_the_real_binary_still_reports_the_hosts_interfaces() {
    if let Some(why) = unshare_refused() {
        println!("SKIPPED: {why}");
        return;
    }
    let host: BTreeSet<String> =
        interfaces(&std::fs::read_to_string("/proc/1/net/dev").expect("read /proc/1/net/dev"));
    if host.len() < 2 {
        println!("SKIPPED: pid 1's namespace here has no interface but lo: {host:?}");
        return;
    }
    // The premise: in a new network namespace, the process's own view is `lo` alone.
    let own = Command::new("unshare")
        .args(["-n", "cat", "/proc/net/dev"])
        .output()
        .expect("unshare -n cat");
    assert_eq!(
        interfaces(&String::from_utf8_lossy(&own.stdout)),
        BTreeSet::from(["lo".to_owned()]),
        "a fresh network namespace should only have lo"
    );
    let out = Command::new("unshare")
        .args(["-n", BIN, "--once", "--format", "json", "--no-otlp"])
        .args(["--families", "network"])
        .env_clear()
        .env("RUST_LOG", "info")
        .output()
        .expect("run the agent under unshare -n");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("JSON rows");
    let seen = attr_values(&rows, "system.network.io", "network.interface.name");
    println!("under unshare -n the agent reports: {seen:?} (pid 1's namespace: {host:?})");
    assert!(
        seen.len() > 1,
        "only the agent's own namespace was read: {seen:?}"
    );
    // Every host interface the default excludes keep is there.
    let kept: BTreeSet<String> = host
        .iter()
        .filter(|i| !excluded_by_default(i))
        .cloned()
        .collect();
    assert_eq!(seen, kept);
}

/// The default interface excludes (veth, cali, flannel, cni, docker).
fn excluded_by_default(name: &str) -> bool {
    ["veth", "cali", "flannel", "cni", "docker"]
        .iter()
        .any(|p| name.starts_with(p))
}
