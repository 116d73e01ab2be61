use std::io::Write as _;

use crate::common::run;

/// Runs the agent with `args`/`env` and returns its stderr, asserting exit code 2.
fn fails_with_2(args: &[&str], env: &[(&str, &str)]) -> String {
    let out = run(args, env);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "exit code for {args:?}: {err}");
    err
}

fn toml_file(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

#[test]
fn an_unknown_flag_value_exits_2_naming_the_flag_and_value() {
    let err = fails_with_2(&["--once", "--format", "xml"], &[]);
    assert!(err.contains("--format") && err.contains("xml"), "{err}");
    let err = fails_with_2(&["--once", "--families", "cpu,gpus"], &[]);
    assert!(err.contains("--families") && err.contains("gpus"), "{err}");
}

#[test]
fn a_bad_interval_exits_2_naming_the_flag_and_value() {
    let err = fails_with_2(&["--once", "--interval", "soon"], &[]);
    assert!(err.contains("--interval") && err.contains("soon"), "{err}");
    let err = fails_with_2(&["--once", "--interval", "0s"], &[]);
    assert!(err.contains("--interval") && err.contains("0s"), "{err}");
    let err = fails_with_2(&["--once"], &[("OTEL_GPU_RECEIVER_INTERVAL", "-3s")]);
    assert!(
        err.contains("OTEL_GPU_RECEIVER_INTERVAL") && err.contains("-3s"),
        "{err}"
    );
}

#[test]
fn an_unparsable_endpoint_exits_2_naming_the_flag_or_variable() {
    let err = fails_with_2(&["--once", "--otlp-endpoint", "not a url"], &[]);
    assert!(
        err.contains("--otlp-endpoint") && err.contains("not a url"),
        "{err}"
    );
    let err = fails_with_2(
        &["--once"],
        &[(
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
            "ftp://collector:4317",
        )],
    );
    assert!(
        err.contains("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT") && err.contains("ftp://collector:4317"),
        "{err}"
    );
}

#[test]
fn an_unknown_toml_key_exits_2_naming_the_key() {
    let f = toml_file("interval = \"5s\"\ncolour = \"blue\"\n");
    let err = fails_with_2(&["--once", "--config", f.path().to_str().unwrap()], &[]);
    assert!(err.contains("colour"), "{err}");
    let f = toml_file("[otlp]\nendpoint = \"http://x:4317\"\ncompresion = \"gzip\"\n");
    let err = fails_with_2(&["--once", "--config", f.path().to_str().unwrap()], &[]);
    assert!(err.contains("compresion"), "{err}");
}

#[test]
fn a_wrong_toml_type_exits_2_naming_the_key_and_value() {
    let f = toml_file("families = \"cpu\"\n");
    let err = fails_with_2(&["--once", "--config", f.path().to_str().unwrap()], &[]);
    assert!(err.contains("families") && err.contains("\"cpu\""), "{err}");
    let f = toml_file("[otlp]\nenabled = \"yes\"\n");
    let err = fails_with_2(&["--once", "--config", f.path().to_str().unwrap()], &[]);
    assert!(err.contains("enabled") && err.contains("yes"), "{err}");
}

#[test]
fn a_bad_value_in_the_toml_file_names_the_key() {
    let f = toml_file("prometheus = \"somewhere\"\n");
    let err = fails_with_2(&["--once", "--config", f.path().to_str().unwrap()], &[]);
    assert!(
        err.contains("key `prometheus`") && err.contains("somewhere"),
        "{err}"
    );
}

#[test]
fn a_bad_exclude_list_or_statvfs_timeout_exits_2_naming_the_flag_and_the_fix() {
    let err = fails_with_2(
        &["--once", "--mount-points-exclude", "/proc,var/lib/kubelet"],
        &[],
    );
    assert!(
        err.contains("--mount-points-exclude")
            && err.contains("var/lib/kubelet")
            && err.contains("absolute"),
        "{err}"
    );
    let err = fails_with_2(
        &["--once"],
        &[("OTEL_GPU_RECEIVER_INTERFACES_EXCLUDE", "veth* cali*")],
    );
    assert!(
        err.contains("OTEL_GPU_RECEIVER_INTERFACES_EXCLUDE") && err.contains("commas"),
        "{err}"
    );
    let f = toml_file("fs_types_exclude = [\"overlay\", \"ext4/xfs\"]\n");
    let err = fails_with_2(&["--once", "--config", f.path().to_str().unwrap()], &[]);
    assert!(err.contains("key `fs_types_exclude`"), "{err}");
    let err = fails_with_2(&["--once", "--statvfs-timeout", "10s"], &[]);
    assert!(
        err.contains("--statvfs-timeout") && err.contains("--source-timeout"),
        "{err}"
    );
}

#[test]
fn an_unusable_certificate_or_temporality_exits_2_at_start_naming_the_variable() {
    let not_pem = toml_file("this is not a certificate\n");
    let path = not_pem.path().to_str().unwrap();
    let err = fails_with_2(
        &["--interval", "1s"],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://127.0.0.1:4317"),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", path),
        ],
    );
    assert!(
        err.contains("OTEL_EXPORTER_OTLP_CERTIFICATE") && err.contains("PEM"),
        "{err}"
    );
    let err = fails_with_2(
        &["--interval", "1s"],
        &[(
            "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE",
            "sometimes",
        )],
    );
    assert!(
        err.contains("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE")
            && err.contains("sometimes"),
        "{err}"
    );
}
