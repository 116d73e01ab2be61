//! CONFIG.md against the code, both ways: the flags of the clap command, the variables
//! the settings resolver reads, the TOML file's keys, and the example file, which must
//! load with the real loader.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::io::Write as _;

use clap::CommandFactory as _;
use otel_gpu_receiver::config::{FileConfig, Flags, Settings};

use crate::common::run;

const DOC: &str = include_str!("../../CONFIG.md");

/// Variables the agent reads outside the settings resolver: (name, file, what in that
/// file reads it).
const OUTSIDE_THE_RESOLVER: &[(&str, &str, &str)] = &[
    ("RUST_LOG", "src/main.rs", "EnvFilter::try_from_default_env"),
    (
        "MALLOC_ARENA_MAX",
        "src/lib.rs",
        "var_os(\"MALLOC_ARENA_MAX\")",
    ),
    (
        "MALLOC_MMAP_THRESHOLD",
        "src/lib.rs",
        "var_os(\"MALLOC_MMAP_THRESHOLD_\")",
    ),
];

/// Every `--flag` the page names.
fn doc_flags() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let b = DOC.as_bytes();
    let mut i = 0;
    while let Some(at) = DOC[i..].find("--") {
        let start = i + at + 2;
        let end = start
            + DOC[start..]
                .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'))
                .unwrap_or(DOC.len() - start);
        // `--x`, not the middle of a word or of `---`.
        let before_ok = i + at == 0 || !b[i + at - 1].is_ascii_alphanumeric();
        if before_ok && end > start && b[start].is_ascii_lowercase() {
            out.insert(DOC[start..end].trim_end_matches('-').to_owned());
        }
        i = end.max(start);
    }
    out
}

/// Every environment variable the page names: upper-case words with an underscore.
fn doc_variables() -> BTreeSet<String> {
    DOC.split(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
        .filter(|w| w.contains('_') && w.starts_with(|c: char| c.is_ascii_uppercase()))
        .map(|w| w.trim_matches('_').to_owned())
        .collect()
}

/// The long flags of the clap command, hidden ones and --help/--version included.
fn clap_flags() -> BTreeSet<String> {
    let mut cmd = Flags::command();
    cmd.build();
    cmd.get_arguments()
        .filter_map(|a| a.get_long().map(str::to_owned))
        .collect()
}

/// Every variable the settings resolver looks up, with nothing set.
fn resolver_variables() -> BTreeSet<String> {
    let asked = RefCell::new(BTreeSet::new());
    Settings::resolve(Flags::default(), &|k| {
        asked.borrow_mut().insert(k.to_owned());
        None
    })
    .expect("the defaults are valid");
    asked.into_inner()
}

#[test]
fn every_flag_of_the_command_is_in_config_md_and_every_flag_there_exists() {
    let code = clap_flags();
    let doc = doc_flags();
    assert!(code.len() > 20, "{code:?}");
    let undocumented: Vec<_> = code.difference(&doc).collect();
    assert!(
        undocumented.is_empty(),
        "not in CONFIG.md: {undocumented:?}"
    );
    let unknown: Vec<_> = doc.difference(&code).collect();
    assert!(
        unknown.is_empty(),
        "CONFIG.md names flags the agent lacks: {unknown:?}"
    );
}

#[test]
fn every_variable_the_agent_reads_is_in_config_md_and_every_variable_there_is_read() {
    let mut code = resolver_variables();
    for (name, file, marker) in OUTSIDE_THE_RESOLVER {
        let path = format!("{}/{file}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains(marker),
            "{name}: {path} no longer has {marker}"
        );
        code.insert((*name).to_owned());
    }
    assert!(code.contains("OTEL_GPU_RECEIVER_INTERVAL"), "{code:?}");
    assert!(code.contains("OTEL_EXPORTER_OTLP_ENDPOINT"), "{code:?}");
    let doc = doc_variables();
    let undocumented: Vec<_> = code.difference(&doc).collect();
    assert!(
        undocumented.is_empty(),
        "not in CONFIG.md: {undocumented:?}"
    );
    let unknown: Vec<_> = doc.difference(&code).collect();
    assert!(
        unknown.is_empty(),
        "CONFIG.md names variables the agent never reads: {unknown:?}"
    );
}

/// The keys a `deny_unknown_fields` table accepts, from serde's error for an unknown one.
fn accepted_keys(toml_text: &str) -> BTreeSet<String> {
    let e = toml::from_str::<FileConfig>(toml_text)
        .expect_err("an unknown key is an error")
        .to_string();
    let list = e
        .split_once("expected one of ")
        .unwrap_or_else(|| panic!("serde's error no longer lists the keys: {e}"))
        .1;
    list.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// The TOML keys of the page's tables (the third column of every table whose header
/// has `TOML key` there), `otlp.`-prefixed for the `[otlp]` table.
fn doc_toml_keys() -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    let mut in_table = false;
    for line in DOC.lines() {
        if !line.starts_with('|') {
            in_table = false;
            continue;
        }
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        if cells.get(2) == Some(&"TOML key") {
            in_table = true;
            continue;
        }
        if !in_table || cells[0].starts_with("---") {
            continue;
        }
        for key in cells[2].split('`').skip(1).step_by(2) {
            let key = key.split(" = ").next().unwrap().trim();
            keys.insert(key.to_owned());
        }
    }
    keys
}

#[test]
fn every_toml_key_is_in_config_md_and_every_key_there_exists() {
    let mut code: BTreeSet<String> = accepted_keys("no_such_key = 1\n");
    assert!(code.remove("otlp"), "{code:?}");
    code.extend(
        accepted_keys("[otlp]\nno_such_key = 1\n")
            .into_iter()
            .map(|k| format!("otlp.{k}")),
    );
    let doc = doc_toml_keys();
    assert!(
        doc.contains("interval") && doc.contains("otlp.endpoint"),
        "{doc:?}"
    );
    let undocumented: Vec<_> = code.difference(&doc).collect();
    assert!(
        undocumented.is_empty(),
        "not in CONFIG.md: {undocumented:?}"
    );
    let unknown: Vec<_> = doc.difference(&code).collect();
    assert!(
        unknown.is_empty(),
        "CONFIG.md names TOML keys the file lacks: {unknown:?}"
    );
}

#[test]
fn the_example_file_in_config_md_loads_with_the_real_loader() {
    let blocks: Vec<&str> = DOC
        .split("```toml\n")
        .skip(1)
        .map(|b| b.split("```").next().unwrap())
        .collect();
    assert_eq!(blocks.len(), 1, "one TOML example");
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(blocks[0].as_bytes()).unwrap();
    let path = file.path().to_str().unwrap();

    // Through the library, to check that the values arrive ...
    let flags = Flags {
        config: Some(file.path().to_owned()),
        ..Flags::default()
    };
    let s = Settings::resolve(flags, &|_| None)
        .unwrap_or_else(|e| panic!("CONFIG.md's example does not load: {e}"));
    assert_eq!(s.interval, std::time::Duration::from_secs(10));
    assert_eq!(s.prometheus.unwrap().to_string(), "127.0.0.1:9464");
    let otlp = s.otlp.expect("otlp on");
    assert_eq!(otlp.endpoint, "https://collector.example:4317");
    assert!(otlp.compression.is_some());
    assert_eq!(s.instance_id.as_deref(), Some("gpu-node-1"));
    assert!(!s.families.iter().any(|f| f.as_str() == "paging"));
    assert!(s.families.iter().any(|f| f.as_str() == "gpu"));

    // ... and through the binary, as a user would check it.
    let out = run(&["--check-config", "--config", path], &[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("configuration ok"));
}

#[test]
fn the_scanners_find_what_they_look_for() {
    // The both-ways checks above are only as good as these.
    let flags = doc_flags();
    for f in ["no-otlp", "otlp-compression", "check-config", "help"] {
        assert!(flags.contains(f), "{f} not found in {flags:?}");
    }
    let vars = doc_variables();
    for v in [
        "OTEL_SERVICE_NAME",
        "OTEL_GPU_RECEIVER_ATTRIBUTION",
        "K8S_NODE_NAME",
    ] {
        assert!(vars.contains(v), "{v} not found in {vars:?}");
    }
}

#[test]
fn the_descriptions_say_the_agent_reads_gpus_now() {
    // The GPU family shipped: no description may call it future work.
    let about = Flags::command()
        .get_about()
        .map(ToString::to_string)
        .unwrap_or_default();
    let lib = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/lib.rs")).unwrap();
    let lib_intro: String = lib
        .lines()
        .take_while(|l| l.starts_with("//!"))
        .collect::<Vec<_>>()
        .join(" ");
    for (what, text) in [
        ("Cargo.toml's description", env!("CARGO_PKG_DESCRIPTION")),
        ("--help's about", about.as_str()),
        ("lib.rs's docs", lib_intro.as_str()),
    ] {
        assert!(text.contains("GPU"), "{what} does not mention GPUs: {text}");
        for stale in ["and, next", "(and GPU)", "(and, next"] {
            assert!(!text.contains(stale), "{what} still says {stale:?}: {text}");
        }
    }
}
