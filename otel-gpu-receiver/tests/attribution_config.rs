//! Attribution settings: defaults, precedence (flag > env > file > default), and errors that
//! name the culprit.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;

use otel_gpu_receiver::attribution::kubelet::DEFAULT_SOCKET;
use otel_gpu_receiver::config::{Flags, Settings};

fn resolve(flags: Flags, env: &[(&str, &str)]) -> Result<Settings, String> {
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    Settings::resolve(flags, &|k| env.get(k).cloned()).map_err(|e| e.to_string())
}

#[test]
fn attribution_is_on_by_default_with_the_kubelet_socket_and_the_proc_root() {
    let s = resolve(Flags::default(), &[]).unwrap();
    let a = s.attribution.expect("on by default");
    assert_eq!(a.kubelet_socket, PathBuf::from(DEFAULT_SOCKET));
    assert_eq!(a.pod_log_dir, PathBuf::from("/var/log/pods"));
    assert_eq!(a.max_series, 2000);
    assert_eq!(a.proc_root, s.roots.proc);
    assert!(!a.per_process);
    assert!(a.kubelet);
    assert!(
        a.kubelet_timeout < s.source_timeout,
        "the kubelet deadline fits in the source budget"
    );
}

#[test]
fn flags_beat_env_and_env_beats_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("agent.toml");
    std::fs::write(
        &file,
        "kubelet_socket = \"/file.sock\"\n\
         pod_log_dir = \"/file/pods\"\n\
         attribution_max_series = 10\n\
         per_process = true\n",
    )
    .unwrap();
    let with_file = || Flags {
        config: Some(file.clone()),
        ..Flags::default()
    };

    let a = resolve(with_file(), &[]).unwrap().attribution.unwrap();
    assert_eq!(a.kubelet_socket, PathBuf::from("/file.sock"));
    assert_eq!(a.pod_log_dir, PathBuf::from("/file/pods"));
    assert_eq!(a.max_series, 10);
    assert!(
        a.per_process,
        "--per-process switches attribution to per-process series"
    );

    let env = [
        ("OTEL_GPU_RECEIVER_KUBELET_SOCKET", "/env.sock"),
        ("OTEL_GPU_RECEIVER_ATTRIBUTION_MAX_SERIES", "20"),
    ];
    let a = resolve(with_file(), &env).unwrap().attribution.unwrap();
    assert_eq!(a.kubelet_socket, PathBuf::from("/env.sock"));
    assert_eq!(a.max_series, 20);

    let flags = Flags {
        kubelet_socket: Some("/flag.sock".into()),
        attribution_max_series: Some("30".into()),
        ..with_file()
    };
    let a = resolve(flags, &env).unwrap().attribution.unwrap();
    assert_eq!(a.kubelet_socket, PathBuf::from("/flag.sock"));
    assert_eq!(a.max_series, 30);
}

#[test]
fn the_flag_the_env_and_the_file_can_each_turn_attribution_off() {
    let flags = Flags {
        no_attribution: true,
        ..Flags::default()
    };
    assert_eq!(resolve(flags, &[]).unwrap().attribution, None);
    let env = [("OTEL_GPU_RECEIVER_ATTRIBUTION", "false")];
    assert_eq!(resolve(Flags::default(), &env).unwrap().attribution, None);

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("agent.toml");
    std::fs::write(&file, "attribution = false\n").unwrap();
    let flags = Flags {
        config: Some(file),
        ..Flags::default()
    };
    assert_eq!(resolve(flags, &[]).unwrap().attribution, None);
}

#[test]
fn bad_values_name_the_flag_variable_or_key_and_the_value() {
    let flags = Flags {
        attribution_max_series: Some("0".into()),
        ..Flags::default()
    };
    let e = resolve(flags, &[]).unwrap_err();
    assert!(
        e.contains("--attribution-max-series") && e.contains("\"0\""),
        "{e}"
    );

    let e = resolve(
        Flags::default(),
        &[("OTEL_GPU_RECEIVER_ATTRIBUTION_MAX_SERIES", "many")],
    )
    .unwrap_err();
    assert!(
        e.contains("OTEL_GPU_RECEIVER_ATTRIBUTION_MAX_SERIES") && e.contains("many"),
        "{e}"
    );

    let e = resolve(
        Flags::default(),
        &[("OTEL_GPU_RECEIVER_ATTRIBUTION", "maybe")],
    )
    .unwrap_err();
    assert!(
        e.contains("OTEL_GPU_RECEIVER_ATTRIBUTION") && e.contains("maybe"),
        "{e}"
    );

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("agent.toml");
    std::fs::write(&file, "attribution_max_series = \"lots\"\n").unwrap();
    let flags = Flags {
        config: Some(file),
        ..Flags::default()
    };
    let e = resolve(flags, &[]).unwrap_err();
    assert!(e.contains("attribution_max_series"), "{e}");
}

#[test]
fn the_binary_exits_2_on_a_bad_cap() {
    let out = Command::new(env!("CARGO_BIN_EXE_otel-gpu-receiver"))
        .args(["--once", "--no-otlp", "--attribution-max-series=-5"])
        .env_clear()
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--attribution-max-series"), "{stderr}");
}

#[test]
fn the_daemonset_in_deploy_kubernetes_passes_flags_the_agent_accepts() {
    use clap::Parser as _;
    // The manifest that KUBERNETES.md points to (`kubectl apply -k deploy/kubernetes`);
    // `cargo test -p e2e --test kubernetes` checks the rendered whole.
    let yaml = include_str!("../../deploy/kubernetes/base/daemonset.yaml");
    for needed in [
        "hostPID: true",
        "readOnly: true",
        "/var/lib/kubelet/pod-resources",
    ] {
        assert!(yaml.contains(needed), "the manifest lacks {needed}");
    }
    let args: Vec<&str> = yaml
        .lines()
        .map(str::trim)
        .filter_map(|l| l.strip_prefix("- --"))
        .collect();
    assert!(args.len() >= 3, "{args:?}");
    let argv = std::iter::once("otel-gpu-receiver".to_owned())
        .chain(args.iter().map(|a| format!("--{a}")));
    let flags = Flags::try_parse_from(argv).expect("the manifest's args parse");
    let s = resolve(flags, &[]).unwrap();
    let a = s.attribution.expect("attribution on");
    assert_eq!(
        a.kubelet_socket,
        PathBuf::from("/var/lib/kubelet/pod-resources/kubelet.sock")
    );
    assert_eq!(a.proc_root, PathBuf::from("/host/proc"));
    assert_eq!(a.pod_log_dir, PathBuf::from("/var/log/pods"));
}
