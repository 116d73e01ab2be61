//! The documentation's settings hold against the real parser: every `OTEL_*`
//! assignment in a shell block, and every example in the README's
//! configuration table, must be accepted by `Config::from_lookup` (and
//! `RUST_LOG` by `EnvFilter`). The Rust blocks are compiled as doc tests in the
//! demo crate.

use std::collections::HashMap;
use std::path::Path;

use otel_instrument::config::{Config, Overrides};

const DOCS: [&str; 3] = ["../README.md", "MONITORED.md", "README.md"];

fn read(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The lines of the fenced blocks whose info string is `sh`, `bash` or `console`.
fn shell_lines(markdown: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut inside = false;
    for line in markdown.lines() {
        let t = line.trim_start();
        if let Some(info) = t.strip_prefix("```") {
            inside = !inside && matches!(info.trim(), "sh" | "bash" | "console" | "shell");
            continue;
        }
        if inside {
            out.push(t.to_owned());
        }
    }
    out
}

/// The `NAME=value` words that start a shell command line (the environment
/// of that command), for names a user of this crate sets.
fn assignments(line: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for word in line.split_whitespace() {
        let Some((name, value)) = word.split_once('=') else {
            break;
        };
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
        {
            break;
        }
        out.push((name.to_owned(), value.trim_matches(['"', '\'']).to_owned()));
    }
    out
}

/// Checks one set of variables the way `init!()` reads them.
fn check(vars: &[(String, String)]) -> Result<(), String> {
    let map: HashMap<&str, &str> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    if let Some(filter) = map.get("RUST_LOG") {
        tracing_subscriber::EnvFilter::try_new(filter)
            .map_err(|e| format!("RUST_LOG={filter:?}: {e}"))?;
    }
    let lookup = |k: &str| map.get(k).map(|v| (*v).to_owned());
    Config::from_lookup(&lookup, &Overrides::default())
        .map(drop)
        .map_err(|e| e.to_string())
}

fn check_shell_blocks(markdown: &str) -> Vec<String> {
    shell_lines(markdown)
        .iter()
        .map(|l| assignments(l))
        .filter(|vars| {
            vars.iter()
                .any(|(k, _)| k.starts_with("OTEL_") || k == "RUST_LOG")
        })
        .filter_map(|vars| check(&vars).err())
        .collect()
}

#[test]
fn every_variable_set_in_a_shell_block_parses() {
    let mut seen = 0;
    for doc in DOCS {
        let text = read(doc);
        seen += shell_lines(&text)
            .iter()
            .filter(|l| assignments(l).iter().any(|(k, _)| k.starts_with("OTEL_")))
            .count();
        let errors = check_shell_blocks(&text);
        assert!(errors.is_empty(), "{doc}: {errors:#?}");
    }
    assert!(
        seen > 0,
        "the READMEs show OTEL_* variables in shell blocks"
    );
}

#[test]
fn the_shell_block_check_rejects_a_bad_value() {
    let doc = "```sh\nOTEL_EXPORTER_OTLP_ENDPOINT=127.0.0.1:4317 cargo run\n```\n";
    let errors = check_shell_blocks(doc);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains("OTEL_EXPORTER_OTLP_ENDPOINT"),
        "{errors:?}"
    );
}

/// `OTEL_EXPORTER_OTLP_{,TRACES_}TIMEOUT` → both names.
fn expand(pattern: &str) -> Vec<String> {
    let (Some(open), Some(close)) = (pattern.find('{'), pattern.find('}')) else {
        return vec![pattern.to_owned()];
    };
    let (head, tail) = (&pattern[..open], &pattern[close + 1..]);
    pattern[open + 1..close]
        .split(',')
        .flat_map(|alt| expand(&format!("{head}{alt}{tail}")))
        .collect()
}

/// The backticked words of a table cell, split on ` / `.
fn ticked(cell: &str) -> Vec<String> {
    cell.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// Rows of the README's configuration table: variable names and examples.
fn table_rows(markdown: &str) -> Vec<(Vec<String>, Vec<String>)> {
    let start = markdown
        .find("| variable | default | example |")
        .expect("the table");
    markdown[start..]
        .lines()
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|l| {
            // `|` inside a cell is escaped as `\|`.
            let cells: Vec<&str> = l.split(" |").map(str::trim).collect();
            (
                ticked(cells[0]),
                ticked(cells.get(2).copied().unwrap_or("")),
            )
        })
        .collect()
}

#[test]
fn every_example_in_the_configuration_table_parses() {
    let mut checked = 0;
    for (names, examples) in table_rows(&read("../README.md")) {
        // Paths to PEM files that this machine does not have; their parsing is
        // covered by the TLS tests.
        // `OTEL_TRACES_SAMPLER` / `_ARG`: a name that starts with `_` extends the one before.
        let mut full: Vec<String> = Vec::new();
        for n in names {
            match (n.strip_prefix('_'), full.last()) {
                (Some(_), Some(prev)) => full.push(format!("{prev}{n}")),
                _ => full.push(n),
            }
        }
        let names: Vec<String> = full
            .iter()
            .flat_map(|n| expand(n))
            .filter(|n| n.starts_with("OTEL_") || n == "RUST_LOG")
            .filter(|n| !n.contains("CERTIFICATE") && !n.contains("CLIENT_KEY"))
            .collect();
        if names.is_empty() {
            continue;
        }
        // `OTEL_TRACES_SAMPLER` / `_ARG` pair with `a` / `b`; otherwise each
        // example is tried under every name of the row.
        let examples: Vec<String> = examples
            .iter()
            .map(|e| match e.split_once('=') {
                Some((n, v)) if names.contains(&n.to_owned()) => v.to_owned(),
                _ => e.clone(),
            })
            .collect();
        let pairs: Vec<(String, String)> =
            if names.len() == 2 && examples.len() == 2 && names[1].ends_with("_ARG") {
                names
                    .iter()
                    .cloned()
                    .zip(examples.iter().cloned())
                    .collect()
            } else {
                names
                    .iter()
                    .flat_map(|n| examples.iter().map(move |e| (n.clone(), e.clone())))
                    .collect()
            };
        if names.len() == 2 && names[1].ends_with("_ARG") {
            check(&pairs).unwrap_or_else(|e| panic!("{pairs:?}: {e}"));
            checked += 1;
            continue;
        }
        for pair in pairs {
            check(std::slice::from_ref(&pair)).unwrap_or_else(|e| panic!("{pair:?}: {e}"));
            checked += 1;
        }
    }
    assert!(checked > 20, "only {checked} examples were checked");
}
