//! The receiver's configuration: the input up to the first NUL is the TOML file, the
//! rest `NAME=value` lines of environment (OTEL_* and OTEL_GPU_RECEIVER_*), resolved
//! by `Settings::resolve` as `main` does; the same environment through the library's
//! own `OTEL_*` parser (`otel_instrument::config::Config::from_lookup`, what `init!()`
//! reads). Bad input must be an error, never a panic.
#![no_main]

use std::collections::HashMap;
use std::io::Write as _;

use libfuzzer_sys::fuzz_target;
use otel_gpu_receiver::config::{Flags, Settings};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (toml, env) = text.split_once('\0').unwrap_or((text, ""));
    let env: HashMap<String, String> = env
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let mut file = tempfile_path();
    let _ = file.1.write_all(toml.as_bytes());
    let flags = Flags {
        config: Some(file.0.clone()),
        ..Flags::default()
    };
    let _ = Settings::resolve(flags, &|k| env.get(k).cloned());
    let _ = otel_instrument::config::Config::from_lookup(
        &|k| env.get(k).cloned(),
        &otel_instrument::config::Overrides::default(),
    );
    let _ = std::fs::remove_file(&file.0);
});

fn tempfile_path() -> (std::path::PathBuf, std::fs::File) {
    let path = std::env::temp_dir().join(format!("otel-gpu-fuzz-{}.toml", std::process::id()));
    let file = std::fs::File::create(&path).expect("a temporary file");
    (path, file)
}
