//! Records the compiler's version for the `process.runtime.version` and
//! `process.runtime.description` resource attributes.

fn main() {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    let description = std::process::Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    // "rustc 1.95.0 (59807616e 2026-04-14)"
    let version = description.split_whitespace().nth(1).unwrap_or("unknown");
    println!("cargo:rustc-env=OTEL_INSTRUMENT_RUSTC_VERSION={version}");
    println!("cargo:rustc-env=OTEL_INSTRUMENT_RUSTC_DESCRIPTION={description}");
    println!("cargo:rerun-if-env-changed=RUSTC");
    println!("cargo:rerun-if-changed=build.rs");
}
