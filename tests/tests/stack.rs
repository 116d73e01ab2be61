//! The compose stack, checked without a Docker engine: the Compose specification,
//! references between services, volumes and files, the collector's pipelines, and
//! the Prometheus config and alert rules with promtool.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use e2e::{key_paths, repo_root, run_ok, tool, yaml};
use serde_yaml_ng::Value;

const COMPOSE_FILES: [&str; 2] = ["docker-compose.yml", "compose.gpu.yaml"];

fn map_keys(v: &Value) -> BTreeSet<String> {
    v.as_mapping()
        .map(|m| {
            m.keys()
                .filter_map(|k| k.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn str_list(v: &Value) -> Vec<String> {
    match v {
        Value::Sequence(s) => s
            .iter()
            .filter_map(|x| x.as_str().map(str::to_owned))
            .collect(),
        Value::Mapping(m) => m
            .keys()
            .filter_map(|k| k.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

#[test]
fn compose_files_follow_the_compose_specification() {
    let python = tool("python3", "python3");
    let probe = Command::new(&python)
        .args(["-m", "check_jsonschema", "--version"])
        .output();
    assert!(
        probe.is_ok_and(|o| o.status.success()),
        "check-jsonschema is not installed: run ./test.sh, which installs it from PyPI"
    );
    let root = repo_root();
    run_ok(
        Command::new(python)
            .current_dir(&root)
            .args([
                "-m",
                "check_jsonschema",
                "--builtin-schema",
                "vendor.compose-spec",
            ])
            .args(COMPOSE_FILES),
    );
}

#[test]
fn every_image_is_pinned_to_a_version() {
    for file in COMPOSE_FILES {
        let doc = yaml(file);
        for (name, svc) in doc["services"].as_mapping().unwrap() {
            let name = name.as_str().unwrap();
            let Some(image) = svc["image"].as_str() else {
                assert!(
                    file != "docker-compose.yml" || !svc["build"].is_null(),
                    "{file}: service {name} has neither image nor build"
                );
                continue;
            };
            let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or("");
            assert!(
                !tag.is_empty()
                    && tag != "latest"
                    && !tag.contains('/')
                    && tag.chars().any(|c| c.is_ascii_digit()),
                "{file}: service {name} uses an unpinned image {image:?}"
            );
        }
    }
}

#[test]
fn depends_on_volumes_and_mounted_files_refer_to_defined_things() {
    let root = repo_root();
    let base = yaml("docker-compose.yml");
    let services = map_keys(&base["services"]);
    let volumes = map_keys(&base["volumes"]);
    for file in COMPOSE_FILES {
        let doc = yaml(file);
        for (name, svc) in doc["services"].as_mapping().unwrap() {
            let name = name.as_str().unwrap();
            assert!(
                services.contains(name),
                "{file}: service {name} is not in docker-compose.yml"
            );
            for dep in str_list(&svc["depends_on"]) {
                assert!(
                    services.contains(&dep),
                    "{file}: {name} depends on undefined service {dep}"
                );
            }
            for vol in str_list(&svc["volumes"]) {
                let source = vol.split(':').next().unwrap();
                if source.starts_with("./") {
                    assert!(
                        root.join(source).exists(),
                        "{file}: {name} mounts {source}, which is not in the repository"
                    );
                } else if !source.starts_with('/') {
                    assert!(
                        volumes.contains(source),
                        "{file}: {name} uses undeclared volume {source}"
                    );
                }
            }
            if let Some(build) = svc["build"].as_mapping() {
                let ctx = build.get("context").and_then(Value::as_str).unwrap_or(".");
                let dockerfile = build
                    .get("dockerfile")
                    .and_then(Value::as_str)
                    .unwrap_or("Dockerfile");
                assert!(
                    root.join(ctx).join(dockerfile).is_file(),
                    "{file}: {name} builds from a missing {dockerfile}"
                );
            }
        }
    }
}

#[test]
fn host_ports_bind_to_loopback_and_come_from_env() {
    let doc = yaml("docker-compose.yml");
    for (name, svc) in doc["services"].as_mapping().unwrap() {
        for port in str_list(&svc["ports"]) {
            assert!(
                port.starts_with("127.0.0.1:${"),
                "service {name:?} publishes {port:?}: bind to 127.0.0.1 with the host port from an env var"
            );
        }
    }
}

#[test]
fn the_base_stack_needs_no_gpu_and_the_override_adds_one() {
    let base = std::fs::read_to_string(repo_root().join("docker-compose.yml")).unwrap();
    assert!(!base.contains("driver: nvidia") && !base.contains("runtime: nvidia"));
    let gpu = yaml("compose.gpu.yaml");
    let devices =
        &gpu["services"]["otel-gpu-receiver"]["deploy"]["resources"]["reservations"]["devices"][0];
    assert_eq!(devices["driver"].as_str(), Some("nvidia"));
    let env = &gpu["services"]["otel-gpu-receiver"]["environment"];
    assert_eq!(env["NVIDIA_DRIVER_CAPABILITIES"].as_str(), Some("utility"));
}

#[test]
fn collector_pipelines_use_only_defined_components_and_compose_endpoints() {
    let col = yaml("stack/otel-collector.yaml");
    let compose = yaml("docker-compose.yml");
    let services = map_keys(&compose["services"]);
    for (kind, section) in [
        ("receivers", "receivers"),
        ("processors", "processors"),
        ("exporters", "exporters"),
    ] {
        let defined = map_keys(&col[section]);
        for (pipeline, def) in col["service"]["pipelines"].as_mapping().unwrap() {
            let used = str_list(&def[kind]);
            assert!(
                !used.is_empty() || kind == "processors",
                "pipeline {pipeline:?} has no {kind}"
            );
            for u in used {
                assert!(
                    defined.contains(&u),
                    "pipeline {pipeline:?} uses undefined {kind} {u}"
                );
            }
        }
    }
    for ext in str_list(&col["service"]["extensions"]) {
        assert!(
            map_keys(&col["extensions"]).contains(&ext),
            "undefined extension {ext}"
        );
    }
    // Receivers listen on all interfaces inside the network, on the published ports.
    let grpc = col["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"]
        .as_str()
        .unwrap();
    let http = col["receivers"]["otlp"]["protocols"]["http"]["endpoint"]
        .as_str()
        .unwrap();
    assert_eq!(grpc, "0.0.0.0:4317");
    assert_eq!(http, "0.0.0.0:4318");
    let published = str_list(&compose["services"]["otel-collector"]["ports"]);
    assert!(
        published.iter().any(|p| p.ends_with(":4317"))
            && published.iter().any(|p| p.ends_with(":4318"))
    );
    // Exporters point at compose services on the ports those services serve
    // (the debug exporter sends nowhere).
    for (name, exp) in col["exporters"].as_mapping().unwrap() {
        let Some(endpoint) = exp["endpoint"].as_str() else {
            assert!(
                name.as_str().is_some_and(|n| n.starts_with("debug")),
                "exporter {name:?} has no endpoint"
            );
            continue;
        };
        let hostport = endpoint
            .trim_start_matches("http://")
            .trim_start_matches("https://");
        let host = hostport.split([':', '/']).next().unwrap();
        assert!(
            services.contains(host),
            "exporter {name:?} sends to {host}, not a compose service"
        );
    }
    assert_eq!(
        col["exporters"]["otlp_grpc/jaeger"]["endpoint"].as_str(),
        Some("jaeger:4317")
    );
    assert_eq!(
        col["exporters"]["otlp_http/prometheus"]["endpoint"].as_str(),
        Some("http://prometheus:9090/api/v1/otlp")
    );
    // otel-instrument exports logs by default: the collector must take them,
    // or every export fails with UNIMPLEMENTED.
    assert_eq!(
        str_list(&col["service"]["pipelines"]["logs"]["receivers"]),
        ["otlp"]
    );
    let prom_cmd = str_list(&compose["services"]["prometheus"]["command"]);
    assert!(prom_cmd.iter().any(|c| c == "--web.enable-otlp-receiver"));
    // Every service that exports OTLP sends it to the collector.
    for (name, svc) in compose["services"].as_mapping().unwrap() {
        if let Some(ep) = svc["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"].as_str() {
            assert_eq!(ep, "http://otel-collector:4317", "service {name:?}");
        }
    }
}

#[test]
fn prometheus_promotes_resource_attributes_and_keeps_out_of_order_samples() {
    let prom = yaml("stack/prometheus.yml");
    let promoted = str_list(&prom["otlp"]["promote_resource_attributes"]);
    for attr in [
        "service.name",
        "service.instance.id",
        "host.name",
        "k8s.pod.name",
        "k8s.namespace.name",
    ] {
        assert!(promoted.iter().any(|a| a == attr), "{attr} is not promoted");
    }
    assert!(
        prom["storage"]["tsdb"]["out_of_order_time_window"]
            .as_str()
            .is_some()
    );
    assert!(!str_list(&prom["rule_files"]).is_empty());
}

#[test]
fn prometheus_config_passes_promtool_apart_from_the_3x_otlp_block() {
    // Debian's promtool (2.42) predates the `otlp:` block and out-of-order storage
    // settings of Prometheus 3; everything else is checked as written.
    let promtool = tool("promtool", "Debian's prometheus package");
    let mut prom = yaml("stack/prometheus.yml");
    let map = prom.as_mapping_mut().unwrap();
    map.remove("otlp");
    map.remove("storage");
    let rules = repo_root().join("stack/rules");
    map.insert(
        Value::from("rule_files"),
        Value::Sequence(vec![Value::from(format!("{}/*.yml", rules.display()))]),
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("prometheus.yml");
    std::fs::write(&path, serde_yaml_ng::to_string(&prom).unwrap()).unwrap();
    run_ok(Command::new(promtool).args(["check", "config"]).arg(&path));
}

#[test]
fn alert_rules_pass_promtool_and_every_alert_has_a_unit_test() {
    let promtool = tool("promtool", "Debian's prometheus package");
    let root = repo_root();
    run_ok(Command::new(&promtool).current_dir(&root).args([
        "check",
        "rules",
        "stack/rules/alerts.yml",
    ]));
    run_ok(
        Command::new(&promtool)
            .current_dir(root.join("stack/rules/tests"))
            .args(["test", "rules", "alerts_test.yml"]),
    );
    let rules = yaml("stack/rules/alerts.yml");
    let tests = yaml("stack/rules/tests/alerts_test.yml");
    let tested: BTreeSet<String> = tests["tests"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|t| {
            t["alert_rule_test"]
                .as_sequence()
                .cloned()
                .unwrap_or_default()
        })
        .filter(|c| c["exp_alerts"].as_sequence().is_some_and(|a| !a.is_empty()))
        .filter_map(|c| c["alertname"].as_str().map(str::to_owned))
        .collect();
    let mut alerts = Vec::new();
    for group in rules["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            if let Some(a) = rule["alert"].as_str() {
                alerts.push(a.to_owned());
            }
        }
    }
    assert!(
        alerts.len() >= 10,
        "expected the full alert set, found {alerts:?}"
    );
    for a in &alerts {
        assert!(
            tested.contains(a),
            "alert {a} has no promtool test case that fires it"
        );
    }
    let required = [
        "GpuFailed",
        "GpuXidErrors",
        "GpuThermalThrottling",
        "GpuPowerThrottling",
        "GpuEccUncorrectedErrors",
        "GpuMemoryNearlyFull",
        "FunctionErrorBudgetBurn",
        "FunctionLatencyBudgetBurn",
        "GpuReceiverDown",
        "GpuReceiverCycleStale",
        "TelemetryDropped",
        "CollectorRefusingTelemetry",
        "CollectorExportFailing",
        "CollectorDroppingTelemetry",
        "CollectorSendingQueueFilling",
    ];
    for r in required {
        assert!(alerts.iter().any(|a| a == r), "missing alert {r}");
    }
}

/// otel-instrument adds exemplars to `function.calls.duration` in its OTLP metrics, so
/// the chain from a latency point to its trace must hold end to end: Prometheus stores
/// exemplars, the Prometheus datasource links their `trace_id` to the Jaeger datasource,
/// and the latency panel asks for them.
#[test]
fn exemplars_link_the_latency_panel_to_jaeger() {
    let compose = yaml("docker-compose.yml");
    let prom_cmd = str_list(&compose["services"]["prometheus"]["command"]);
    assert!(
        prom_cmd
            .iter()
            .any(|c| c == "--enable-feature=exemplar-storage"),
        "Prometheus drops the exemplars it is sent: {prom_cmd:?}"
    );
    let datasources = yaml("grafana/provisioning/datasources/datasources.yaml");
    let all = datasources["datasources"].as_sequence().unwrap();
    let jaeger_uid = all
        .iter()
        .find(|d| d["type"].as_str() == Some("jaeger"))
        .and_then(|d| d["uid"].as_str())
        .expect("a Jaeger datasource");
    let prometheus = all
        .iter()
        .find(|d| d["type"].as_str() == Some("prometheus"))
        .expect("a Prometheus datasource");
    let links = prometheus["jsonData"]["exemplarTraceIdDestinations"]
        .as_sequence()
        .expect("exemplarTraceIdDestinations on the Prometheus datasource");
    assert!(
        links.iter().any(|l| l["name"].as_str() == Some("trace_id")
            && l["datasourceUid"].as_str() == Some(jaeger_uid)),
        "no trace_id link to {jaeger_uid}: {links:?}"
    );
    let text =
        std::fs::read_to_string(repo_root().join("grafana/dashboards/functions.json")).unwrap();
    let d: serde_json::Value = serde_json::from_str(&text).unwrap();
    let panel = d["panels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["title"].as_str() == Some("Latency p50 / p95 / p99"))
        .expect("the latency panel");
    assert!(
        panel["targets"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["exemplar"] == true
                && t["expr"]
                    .as_str()
                    .is_some_and(|e| e.contains("function_calls_duration_seconds_bucket"))),
        "the latency panel asks for no exemplars"
    );
}

/// Grafana's basic roles, weakest first.
const ROLES: [&str; 3] = ["Viewer", "Editor", "Admin"];

fn role_rank(role: &str) -> usize {
    ROLES
        .iter()
        .position(|r| *r == role)
        .unwrap_or_else(|| panic!("unknown Grafana role {role:?}"))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).expect("bad percent escape"));
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap()
}

/// Every link a dashboard carries: its own links, panel links and data links
/// (field defaults and overrides), as (where, link object).
fn dashboard_links(d: &serde_json::Value) -> Vec<(String, serde_json::Value)> {
    let mut out = Vec::new();
    for l in d["links"].as_array().into_iter().flatten() {
        out.push(("dashboard links".to_owned(), l.clone()));
    }
    let mut panels: Vec<&serde_json::Value> =
        d["panels"].as_array().into_iter().flatten().collect();
    while let Some(p) = panels.pop() {
        panels.extend(p["panels"].as_array().into_iter().flatten());
        let title = p["title"].as_str().unwrap_or("?").to_owned();
        for l in p["links"].as_array().into_iter().flatten() {
            out.push((format!("panel {title:?}"), l.clone()));
        }
        let fc = &p["fieldConfig"];
        for l in fc["defaults"]["links"].as_array().into_iter().flatten() {
            out.push((format!("panel {title:?} data link"), l.clone()));
        }
        for o in fc["overrides"].as_array().into_iter().flatten() {
            for prop in o["properties"].as_array().into_iter().flatten() {
                if prop["id"] == "links" {
                    for l in prop["value"].as_array().into_iter().flatten() {
                        out.push((format!("panel {title:?} override link"), l.clone()));
                    }
                }
            }
        }
    }
    out
}

/// The datasources an Explore URL opens, as (uid, plugin type where the URL states it):
/// each pane's datasource and each of its queries'.
fn explore_datasources(url: &str) -> Vec<(String, Option<String>)> {
    let (_, query) = url.split_once('?').unwrap_or((url, ""));
    let mut out = Vec::new();
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k != "panes" && k != "left" {
            continue;
        }
        let state: serde_json::Value = serde_json::from_str(&percent_decode(v))
            .unwrap_or_else(|e| panic!("{url:?}: {k} is not JSON: {e}"));
        let states: Vec<&serde_json::Value> = if k == "panes" {
            state.as_object().unwrap().values().collect()
        } else {
            vec![&state]
        };
        for pane in states {
            let uid = pane["datasource"].as_str().unwrap_or_default();
            out.push((uid.to_owned(), None));
            for q in pane["queries"].as_array().into_iter().flatten() {
                if let Some(uid) = q["datasource"]["uid"].as_str() {
                    let kind = q["datasource"]["type"].as_str().map(str::to_owned);
                    out.push((uid.to_owned(), kind));
                }
            }
        }
    }
    out
}

/// The variable a datasource uid refers to, if it is a reference: `${name}` or
/// `$name`. A format (`${name:text}`) is not one: Grafana then interpolates the
/// datasource's name or an escaped value, where a uid belongs.
fn variable_reference(uid: &str) -> Option<&str> {
    let name = match uid.strip_prefix("${") {
        Some(rest) => rest.strip_suffix('}')?,
        None => uid.strip_prefix('$')?,
    };
    let plain = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    plain.then_some(name)
}

/// A dashboard's datasource variables: name -> the plugin type they list (`query`).
fn datasource_variables(d: &serde_json::Value) -> BTreeMap<String, String> {
    d["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["type"] == "datasource")
        .filter_map(|v| {
            Some((
                v["name"].as_str()?.to_owned(),
                v["query"].as_str()?.to_owned(),
            ))
        })
        .collect()
}

/// The role a relative Grafana URL needs, checking that what it opens exists:
/// `/d/<uid>` needs Viewer and one of our dashboards; `/explore` needs Editor
/// (Grafana 12+ has no `viewers_can_edit`) and datasources the stack provisions
/// (`datasources`: uid -> type), named directly or through one of the dashboard's
/// datasource `variables` (name -> type) whose type the stack provisions.
fn role_needed_by(
    url: &str,
    dashboard_uids: &BTreeSet<String>,
    datasources: &BTreeMap<String, String>,
    variables: &BTreeMap<String, String>,
) -> &'static str {
    assert!(
        url.starts_with('/'),
        "{url:?}: use a path inside Grafana; an absolute URL breaks when the host port changes"
    );
    let path = url.split_once('?').map_or(url, |(path, _)| path);
    if let Some(rest) = path.strip_prefix("/d/") {
        let uid = rest.split('/').next().unwrap();
        assert!(
            dashboard_uids.contains(uid),
            "{url:?} opens unknown dashboard {uid}"
        );
        return "Viewer";
    }
    if path == "/dashboards" {
        return "Viewer";
    }
    assert_eq!(
        path, "/explore",
        "{url:?}: a Grafana route this test does not know"
    );
    let opened = explore_datasources(url);
    assert!(
        !opened.is_empty(),
        "{url:?} opens Explore without a datasource"
    );
    for (uid, _) in opened {
        match variable_reference(&uid) {
            Some(var) => {
                let kind = variables.get(var).unwrap_or_else(|| {
                    panic!("{url:?} explores ${{{var}}}, which is no datasource variable")
                });
                assert!(
                    datasources.values().any(|t| t == kind),
                    "{url:?} explores a {kind} datasource, and none is provisioned"
                );
            }
            None => assert!(
                datasources.contains_key(&uid),
                "{url:?} explores datasource {uid:?}, which is not provisioned"
            ),
        }
    }
    "Editor"
}

/// Every dashboard under grafana/dashboards, parsed.
fn dashboard_files() -> Vec<(std::path::PathBuf, serde_json::Value)> {
    let mut dashboards = Vec::new();
    for entry in std::fs::read_dir(repo_root().join("grafana/dashboards")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            let d: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            dashboards.push((path, d));
        }
    }
    dashboards.sort_by(|a, b| a.0.cmp(&b.0));
    dashboards
}

/// The README promises that anonymous users can follow every link; the compose file
/// and provisioning must grant what those links need, and nothing more than a
/// localhost-bound stack can afford.
#[test]
fn anonymous_users_can_open_every_dashboard_link() {
    let compose = yaml("docker-compose.yml");
    let grafana = &compose["services"]["grafana"];
    let env = &grafana["environment"];
    assert_eq!(env["GF_AUTH_ANONYMOUS_ENABLED"].as_str(), Some("true"));
    let granted = env["GF_AUTH_ANONYMOUS_ORG_ROLE"]
        .as_str()
        .expect("GF_AUTH_ANONYMOUS_ORG_ROLE is set");
    assert!(
        role_rank(granted) < role_rank("Admin"),
        "anonymous users must not administer Grafana"
    );
    if role_rank(granted) > role_rank("Viewer") {
        // More than Viewer is only safe on loopback, with dashboards that stay as the
        // files say.
        for port in str_list(&grafana["ports"]) {
            assert!(
                port.starts_with("127.0.0.1:"),
                "Grafana published on {port}"
            );
        }
        let providers = yaml("grafana/provisioning/dashboards/dashboards.yaml");
        for p in providers["providers"].as_sequence().unwrap() {
            assert_eq!(
                p["allowUiUpdates"].as_bool(),
                Some(false),
                "{:?}",
                p["name"]
            );
            assert_eq!(
                p["disableDeletion"].as_bool(),
                Some(true),
                "{:?}",
                p["name"]
            );
        }
    }

    let datasources = yaml("grafana/provisioning/datasources/datasources.yaml");
    let datasource_uids: BTreeMap<String, String> = datasources["datasources"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|d| {
            Some((
                d["uid"].as_str()?.to_owned(),
                d["type"].as_str()?.to_owned(),
            ))
        })
        .collect();
    let dashboards = dashboard_files();
    let dashboard_uids: BTreeSet<String> = dashboards
        .iter()
        .filter_map(|(_, d)| d["uid"].as_str().map(str::to_owned))
        .collect();
    let tags: BTreeSet<String> = dashboards
        .iter()
        .flat_map(|(_, d)| d["tags"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t.as_str().map(str::to_owned))
        .collect();

    let mut checked = 0;
    for (path, d) in &dashboards {
        let name = path.file_name().unwrap().to_string_lossy();
        let variables = datasource_variables(d);
        for (place, link) in dashboard_links(d) {
            let needed = if link["type"] == "dashboards" {
                let wanted = str_list(&serde_yaml_ng::to_value(&link["tags"]).unwrap());
                assert!(
                    wanted.iter().any(|t| tags.contains(t)),
                    "{name}: {place} lists dashboards tagged {wanted:?}, and none is"
                );
                "Viewer"
            } else {
                let url = link["url"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{name}: {place} has no url"));
                role_needed_by(url, &dashboard_uids, &datasource_uids, &variables)
            };
            assert!(
                role_rank(granted) >= role_rank(needed),
                "{name}: {place} ({}) needs {needed}; anonymous users are {granted}",
                link["title"]
            );
            checked += 1;
        }
    }
    // Datasource links (exemplar or derived-field trace links) land in Explore too.
    for ds in datasources["datasources"].as_sequence().unwrap() {
        for key in ["exemplarTraceIdDestinations", "derivedFields"] {
            for l in ds["jsonData"][key].as_sequence().into_iter().flatten() {
                let target = l["datasourceUid"].as_str().unwrap_or_default();
                assert!(
                    datasource_uids.contains_key(target),
                    "{:?} links to {target:?}",
                    ds["name"]
                );
                assert!(
                    role_rank(granted) >= role_rank("Editor"),
                    "{:?}: {key} needs Editor",
                    ds["name"]
                );
                checked += 1;
            }
        }
    }
    assert!(
        checked > 0,
        "no dashboard link was checked: the link finder is broken"
    );

    // The link checker can fail: an Explore link for a Viewer, and a link to a
    // dashboard that does not exist.
    let (explore, variables) = dashboards
        .iter()
        .flat_map(|(_, d)| {
            let variables = datasource_variables(d);
            dashboard_links(d)
                .into_iter()
                .map(move |(_, l)| (l, variables.clone()))
        })
        .filter_map(|(l, vars)| Some((l["url"].as_str()?.to_owned(), vars)))
        .find(|(u, _)| u.starts_with("/explore"))
        .expect("the functions dashboard links to traces in Explore");
    assert!(
        role_rank("Viewer")
            < role_rank(role_needed_by(
                &explore,
                &dashboard_uids,
                &datasource_uids,
                &variables
            ))
    );
    let missing = std::panic::catch_unwind(|| {
        role_needed_by(
            "/d/no-such-dashboard",
            &dashboard_uids,
            &datasource_uids,
            &variables,
        )
    });
    assert!(missing.is_err(), "a link to a missing dashboard passed");
    // A datasource variable of a type the stack does not provision fails too.
    let mut tempo = variables.clone();
    for kind in tempo.values_mut() {
        *kind = "tempo".to_owned();
    }
    let unprovisioned = std::panic::catch_unwind(|| {
        role_needed_by(&explore, &dashboard_uids, &datasource_uids, &tempo)
    });
    assert!(
        unprovisioned.is_err(),
        "an Explore link to an unprovisioned datasource type passed"
    );
}

/// Pseudo-datasources every Grafana has under these uids.
const BUILT_IN_DATASOURCES: [&str; 3] = ["-- Grafana --", "-- Mixed --", "-- Dashboard --"];

/// Every datasource a dashboard names below `at`, as (where, uid, type where
/// stated): `datasource` fields (objects, or legacy strings), `datasourceUid`s, and
/// the panes of Explore links. The variables' selections (`current`, `options`) are
/// left out: they are defaults that Grafana replaces when they do not exist.
fn datasource_refs(
    v: &serde_json::Value,
    at: &str,
    out: &mut Vec<(String, String, Option<String>)>,
) {
    use serde_json::Value as J;
    match v {
        J::Object(m) => {
            for (k, child) in m {
                let here = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                if at.starts_with("templating") && (k == "current" || k == "options") {
                    continue;
                }
                match (k.as_str(), child) {
                    ("datasource" | "datasourceUid", J::String(uid)) => {
                        out.push((here.clone(), uid.clone(), None));
                    }
                    ("datasource", J::Object(ds)) => {
                        if let Some(uid) = ds.get("uid").and_then(J::as_str) {
                            let kind = ds.get("type").and_then(J::as_str).map(str::to_owned);
                            out.push((here.clone(), uid.to_owned(), kind));
                        }
                    }
                    ("url", J::String(url)) if url.contains("/explore") => {
                        for (uid, kind) in explore_datasources(url) {
                            out.push((here.clone(), uid, kind));
                        }
                    }
                    _ => {}
                }
                datasource_refs(child, &here, out);
            }
        }
        J::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                datasource_refs(x, &format!("{at}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// What in a dashboard names a datasource other than through one of its datasource
/// variables (of the type the reference states), one line per place.
fn hard_coded_datasources(d: &serde_json::Value) -> Vec<String> {
    let variables = datasource_variables(d);
    let mut refs = Vec::new();
    datasource_refs(d, "", &mut refs);
    let mut problems = Vec::new();
    for (at, uid, kind) in refs {
        if BUILT_IN_DATASOURCES.contains(&uid.as_str()) {
            continue;
        }
        let Some((var, listed)) =
            variable_reference(&uid).and_then(|n| Some((n, variables.get(n)?)))
        else {
            problems.push(format!(
                "{at}: {uid:?} is not a reference to a datasource variable"
            ));
            continue;
        };
        if let Some(kind) = kind
            && kind != *listed
        {
            problems.push(format!(
                "{at}: a {kind} datasource through ${{{var}}}, which lists {listed} datasources"
            ));
        }
    }
    problems
}

/// The dashboards import as they are: a Grafana whose datasources have other uids
/// than this stack's still runs every query and follows every link, because panels,
/// queries, variables and links name datasources only through datasource variables.
/// The trace link opens Explore on the Jaeger datasource the `traces` variable picks.
#[test]
fn dashboards_name_datasources_only_through_their_variables() {
    let dashboards = dashboard_files();
    let mut refs = 0;
    for (path, d) in &dashboards {
        let problems = hard_coded_datasources(d);
        assert!(
            problems.is_empty(),
            "{}: hard-coded datasources: {problems:#?}",
            path.display()
        );
        let mut found = Vec::new();
        datasource_refs(d, "", &mut found);
        refs += found.len();
    }
    assert!(
        refs > 0,
        "no datasource reference found: the finder is broken"
    );

    let (_, functions) = dashboards
        .iter()
        .find(|(_, d)| d["uid"] == "otel-gpu-functions")
        .expect("the functions dashboard");
    let variables = datasource_variables(functions);
    let links = functions["links"].as_array().expect("dashboard links");
    let i = links
        .iter()
        .position(|l| l["title"] == "Traces in Jaeger")
        .expect("the functions dashboard's \"Traces in Jaeger\" link");
    let url = links[i]["url"].as_str().expect("the trace link's url");
    let opened = explore_datasources(url);
    assert!(!opened.is_empty(), "{url:?} names no datasource");
    for (uid, _) in &opened {
        let var = variable_reference(uid)
            .unwrap_or_else(|| panic!("the trace link hard-codes datasource {uid:?}"));
        assert_eq!(
            variables.get(var).map(String::as_str),
            Some("jaeger"),
            "the trace link's ${{{var}}} is no Jaeger datasource variable"
        );
    }

    // The check can fail: the trace link as it was (uid `jaeger`), a panel pinned
    // to the stack's Prometheus uid, a format that interpolates the name, and a
    // Prometheus query through the Jaeger variable.
    let pinned_link = {
        let mut d = functions.clone();
        d["links"][i]["url"] = url.replace("${traces}", "jaeger").into();
        d
    };
    let pinned_panel = {
        let mut d = functions.clone();
        d["panels"][1]["datasource"]["uid"] = "prometheus".into();
        d
    };
    let by_name = {
        let mut d = functions.clone();
        d["links"][i]["url"] = url.replace("${traces}", "${traces:text}").into();
        d
    };
    let wrong_type = {
        let mut d = functions.clone();
        d["panels"][1]["datasource"]["uid"] = "${traces}".into();
        d
    };
    for (case, d, place) in [
        ("the link with uid jaeger", pinned_link, "links["),
        (
            "a panel with uid prometheus",
            pinned_panel,
            "panels[1].datasource",
        ),
        ("the link with ${traces:text}", by_name, "links["),
        (
            "a prometheus panel on ${traces}",
            wrong_type,
            "panels[1].datasource",
        ),
    ] {
        let problems = hard_coded_datasources(&d);
        assert!(
            problems.iter().any(|p| p.starts_with(place)),
            "{case} passed: {problems:?}"
        );
    }
}

/// A compose memory size (`512M`, `1G`, `64m`, `1gb`, bytes) in bytes.
fn compose_bytes(s: &str) -> u64 {
    let s = s.trim().to_ascii_lowercase();
    let s = s.strip_suffix('b').unwrap_or(&s);
    let (num, mult) = match s.chars().last() {
        Some('k') => (&s[..s.len() - 1], 1u64 << 10),
        Some('m') => (&s[..s.len() - 1], 1 << 20),
        Some('g') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    let n: f64 = num
        .parse()
        .unwrap_or_else(|e| panic!("bad memory size {s:?}: {e}"));
    (n * mult as f64) as u64
}

/// Go's GOMEMLIMIT (`410MiB`, `1GiB`, bytes) in bytes.
fn go_bytes(s: &str) -> u64 {
    for (suffix, mult) in [
        ("KiB", 1u64 << 10),
        ("MiB", 1 << 20),
        ("GiB", 1 << 30),
        ("B", 1),
    ] {
        if let Some(n) = s.strip_suffix(suffix) {
            return n.parse::<u64>().expect("GOMEMLIMIT number") * mult;
        }
    }
    s.parse().expect("GOMEMLIMIT in bytes")
}

fn memory_limit(svc: &Value) -> Option<u64> {
    svc["deploy"]["resources"]["limits"]["memory"]
        .as_str()
        .or_else(|| svc["mem_limit"].as_str())
        .map(compose_bytes)
}

/// The receiver's largest RSS in BENCHMARKS.md: the RSS column of the export-path
/// tables, on the agent's rows (`pull, …` and `OTLP push, …`).
fn receiver_rss_from_benchmarks() -> u64 {
    let text = std::fs::read_to_string(repo_root().join("BENCHMARKS.md")).unwrap();
    let rss: Vec<f64> = text
        .lines()
        .filter_map(|l| {
            let cells: Vec<String> = l.split('|').map(|c| c.replace('*', "")).collect();
            let first = cells.get(1)?.trim().to_owned();
            (first.starts_with("pull") || first.starts_with("OTLP push")).then_some(cells)
        })
        .filter_map(|cells| cells.get(3)?.trim().strip_suffix(" MB")?.parse().ok())
        .collect();
    assert!(
        !rss.is_empty(),
        "BENCHMARKS.md has no `| pull, … | <ms> | <n> MB |` row for the receiver"
    );
    (rss.iter().cloned().fold(0.0, f64::max) * 1e6) as u64
}

#[test]
fn every_service_has_a_memory_limit_and_memory_limiter_stays_below_the_collectors() {
    let compose = yaml("docker-compose.yml");
    let services = compose["services"].as_mapping().unwrap();
    for (name, svc) in services {
        let limit = memory_limit(svc).unwrap_or_else(|| {
            panic!("service {name:?} has no memory limit (deploy.resources.limits.memory)")
        });
        assert!(
            limit >= 32 << 20,
            "service {name:?}: {limit} bytes is too small to start"
        );
    }

    // The receiver: several times what BENCHMARKS.md measured, not an arbitrary number.
    let receiver = memory_limit(&compose["services"]["otel-gpu-receiver"]).unwrap();
    let measured = receiver_rss_from_benchmarks();
    assert!(
        receiver >= 4 * measured && receiver <= 16 * measured,
        "receiver limit {receiver} bytes vs {measured} bytes measured RSS: keep it 4-16x"
    );

    // The collector: memory_limiter in absolute MiB below the container's limit, and
    // first in every pipeline so it refuses before anything else allocates.
    let collector = memory_limit(&compose["services"]["otel-collector"]).unwrap();
    let col = yaml("stack/otel-collector.yaml");
    let ml = &col["processors"]["memory_limiter"];
    for pct in ["limit_percentage", "spike_limit_percentage"] {
        assert!(
            ml[pct].is_null(),
            "memory_limiter: use limit_mib; {pct} is relative to a limit nobody checks"
        );
    }
    let limit_mib = ml["limit_mib"].as_u64().expect("memory_limiter.limit_mib");
    let spike_mib = ml["spike_limit_mib"]
        .as_u64()
        .expect("memory_limiter.spike_limit_mib");
    assert!(ml["check_interval"].as_str().is_some());
    let limiter = limit_mib << 20;
    assert!(
        limiter < collector && limiter * 100 <= collector * 85,
        "memory_limiter.limit_mib {limit_mib} MiB must stay under 85% of the collector's {collector} bytes"
    );
    assert!(
        spike_mib > 0 && spike_mib * 100 <= limit_mib * 30,
        "spike_limit_mib {spike_mib} should be up to 30% of limit_mib {limit_mib}"
    );
    if let Some(gomem) = compose["services"]["otel-collector"]["environment"]["GOMEMLIMIT"].as_str()
    {
        let gomem = go_bytes(gomem);
        assert!(
            gomem >= limiter && gomem < collector,
            "GOMEMLIMIT {gomem} should sit between memory_limiter ({limiter}) and the container limit ({collector})"
        );
    }
    for (pipeline, def) in col["service"]["pipelines"].as_mapping().unwrap() {
        assert_eq!(
            str_list(&def["processors"]).first().map(String::as_str),
            Some("memory_limiter"),
            "pipeline {pipeline:?}: memory_limiter must come first"
        );
    }
    // The parsers agree with the units they claim.
    assert_eq!(compose_bytes("512M"), 512 << 20);
    assert_eq!(compose_bytes("1gb"), 1 << 30);
    assert_eq!(go_bytes("410MiB"), 410 << 20);
}

/// Whether `.dockerignore` patterns exclude `path` (or a folder above it), with
/// Docker's semantics for what this repository uses: root-relative paths, `**/`
/// prefixes, `*` within a name, `!` exceptions, last match wins.
fn docker_ignores(patterns: &[String], path: &str) -> bool {
    fn glob(pat: &str, name: &str) -> bool {
        match pat.split_once('*') {
            None => pat == name,
            Some((pre, post)) => {
                name.len() >= pre.len() + post.len()
                    && name.starts_with(pre)
                    && name.ends_with(post)
            }
        }
    }
    fn matches(pat: &[&str], path: &[&str]) -> bool {
        match (pat.first(), path.first()) {
            (None, _) => true, // a folder above the path matched
            (Some(&"**"), _) => (0..=path.len()).any(|i| matches(&pat[1..], &path[i..])),
            (Some(p), Some(n)) => glob(p, n) && matches(&pat[1..], &path[1..]),
            (Some(_), None) => false,
        }
    }
    let parts: Vec<&str> = path.split('/').collect();
    let mut ignored = false;
    for raw in patterns {
        let (negated, pat) = match raw.strip_prefix('!') {
            Some(p) => (true, p),
            None => (false, raw.as_str()),
        };
        let pat: Vec<&str> = pat.trim_matches('/').split('/').collect();
        if matches(&pat, &parts) {
            ignored = !negated;
        }
    }
    ignored
}

/// The Dockerfile's instructions, continuation lines joined, comments dropped.
fn dockerfile_instructions(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && cur.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(part) => {
                cur.push_str(part);
                cur.push(' ');
            }
            None => {
                cur.push_str(trimmed);
                if !cur.trim().is_empty() {
                    out.push(cur.trim().to_owned());
                }
                cur.clear();
            }
        }
    }
    out
}

#[test]
fn image_builds_send_a_lean_context_cache_dependencies_and_build_each_image_once() {
    let root = repo_root();
    let patterns: Vec<String> = std::fs::read_to_string(root.join(".dockerignore"))
        .expect(".dockerignore exists")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect();
    // Heavy or irrelevant paths stay out of the build context...
    for heavy in [
        ".git",
        "target",
        "target/release/otel-gpu-receiver",
        "demo/target",
        "grafana/schema-check/node_modules",
        "grafana/schema-check/node_modules/@grafana/schema/package.json",
        "grafana/schema-check/generated",
        "node_modules",
        "otel-instrument/default_1.profraw",
        "grafana/dashboards/host.json",
        "tests/tests/dashboards.rs",
    ] {
        assert!(
            docker_ignores(&patterns, heavy),
            ".dockerignore lets {heavy} into the build context"
        );
    }
    // ...and what the images build from stays in.
    let compose = yaml("docker-compose.yml");
    let mut needed = vec![
        "Cargo.lock".to_owned(),
        "proto/demo/v1/inventory.proto".to_owned(),
    ];
    for member in str_list(&yaml_toml_members()) {
        needed.push(format!("{member}/Cargo.toml"));
        needed.push(format!("{member}/src/lib.rs"));
    }
    let mut dockerfiles = BTreeSet::new();
    for (_, svc) in compose["services"].as_mapping().unwrap() {
        if let Some(b) = svc["build"].as_mapping() {
            dockerfiles.insert(
                b.get("dockerfile")
                    .and_then(Value::as_str)
                    .unwrap()
                    .to_owned(),
            );
        }
    }
    needed.extend(dockerfiles.iter().cloned());
    for path in &needed {
        if root.join(path).exists() {
            assert!(
                !docker_ignores(&patterns, path),
                ".dockerignore drops {path}, which the build needs"
            );
        }
    }
    // The matcher itself can say no.
    assert!(!docker_ignores(
        &["target".to_owned()],
        "demo/src/target.rs"
    ));
    assert!(!docker_ignores(
        &["stack".to_owned(), "!stack/Dockerfile".to_owned()],
        "stack/Dockerfile"
    ));

    // Each image is built by one service; services that share it only name it.
    let mut built: BTreeSet<String> = BTreeSet::new();
    for (name, svc) in compose["services"].as_mapping().unwrap() {
        let image = svc["image"].as_str().unwrap_or_default().to_owned();
        if svc["build"].is_mapping() {
            assert!(
                built.insert(image.clone()),
                "{name:?} builds {image} again: build it once and name the image elsewhere"
            );
        }
    }
    for (name, svc) in compose["services"].as_mapping().unwrap() {
        let image = svc["image"].as_str().unwrap_or_default();
        if built.contains(image) && !svc["build"].is_mapping() {
            assert_eq!(
                svc["pull_policy"].as_str(),
                Some("never"),
                "{name:?} runs the locally built {image}: it must never be pulled"
            );
        }
    }
    let demo: Vec<_> = ["demo-backend", "demo-gateway", "demo-load"]
        .iter()
        .map(|s| compose["services"][*s]["image"].as_str().unwrap())
        .collect();
    assert!(demo.iter().all(|i| *i == demo[0]), "the demo is one image");

    // Dependencies compile before any source is copied in: the first `cargo build`
    // sees only manifests (or a stub skeleton copied from an earlier stage), and the
    // sources arrive later for a second `cargo build`.
    for dockerfile in &dockerfiles {
        let text = std::fs::read_to_string(root.join(dockerfile)).unwrap();
        let steps = dockerfile_instructions(&text);
        let builds: Vec<usize> = steps
            .iter()
            .enumerate()
            .filter(|(_, s)| s.starts_with("RUN") && s.contains("cargo build"))
            .map(|(i, _)| i)
            .collect();
        assert!(
            builds.len() >= 2,
            "{dockerfile}: expected a dependency build and a source build, found {builds:?}"
        );
        let stage_start = steps[..builds[0]]
            .iter()
            .rposition(|s| s.starts_with("FROM"))
            .unwrap();
        let from = &steps[stage_start];
        assert!(
            from.contains("rust:"),
            "{dockerfile}: the dependency build starts from {from:?}, not a plain Rust image"
        );
        for step in &steps[stage_start..builds[0]] {
            if let Some(args) = step.strip_prefix("COPY") {
                let args: Vec<&str> = args.split_whitespace().collect();
                let from_stage = args.iter().any(|a| a.starts_with("--from="));
                let sources = &args[..args.len() - 1];
                let manifests_only = sources
                    .iter()
                    .filter(|a| !a.starts_with("--"))
                    .all(|a| a.ends_with("Cargo.toml") || a.ends_with("Cargo.lock"));
                assert!(
                    from_stage || manifests_only,
                    "{dockerfile}: {step:?} copies sources before the dependency build"
                );
            }
        }
        let source_copy = (stage_start..steps.len())
            .find(|&i| steps[i] == "COPY . ." || steps[i].starts_with("COPY . /"))
            .unwrap_or_else(|| panic!("{dockerfile}: no source COPY after the dependency stage"));
        assert!(
            builds[0] < source_copy && builds.iter().any(|&b| b > source_copy),
            "{dockerfile}: the sources must be copied after the dependency build and built after it"
        );
        // Every target compose asks for exists.
        for (_, svc) in compose["services"].as_mapping().unwrap() {
            if let Some(target) = svc["build"]["target"].as_str() {
                assert!(
                    steps
                        .iter()
                        .any(|s| s.starts_with("FROM") && s.ends_with(&format!(" AS {target}"))),
                    "{dockerfile} has no stage {target}"
                );
            }
        }
    }
}

/// The workspace members, from the root Cargo.toml (as a YAML sequence).
fn yaml_toml_members() -> Value {
    let text = std::fs::read_to_string(repo_root().join("Cargo.toml")).unwrap();
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("members"))
        .expect("Cargo.toml lists its members");
    let list = line.split_once('=').unwrap().1.trim();
    serde_yaml_ng::from_str(list).expect("members is a flow list")
}

/// `stack/smoke.sh` needs a Docker engine, which these machines lack: it must say so
/// and exit 2 at once, before building or starting anything.
#[test]
fn smoke_script_fails_cleanly_without_a_docker_engine() {
    let root = repo_root();
    let script = root.join("stack/smoke.sh");
    run_ok(Command::new("bash").arg("-n").arg(&script));
    match Command::new("shellcheck").arg(&script).output() {
        Ok(out) => assert!(
            out.status.success(),
            "shellcheck:\n{}",
            String::from_utf8_lossy(&out.stdout)
        ),
        Err(_) => eprintln!("shellcheck is not installed: skipped (bash -n passed)"),
    }
    let dir = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    // An engine address where nothing listens, whatever this machine has.
    let out = Command::new(&script)
        .current_dir(dir.path())
        .env(
            "DOCKER_HOST",
            format!("unix://{}/docker.sock", dir.path().display()),
        )
        .output()
        .expect("run stack/smoke.sh");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    if String::from_utf8_lossy(
        &Command::new("sh")
            .args(["-c", "command -v docker || true"])
            .output()
            .unwrap()
            .stdout,
    )
    .trim()
    .is_empty()
    {
        assert!(stderr.contains("no docker client"), "{stderr}");
    } else {
        assert!(
            stderr.contains("no Docker engine is reachable") && stderr.contains("./test.sh"),
            "unclear message: {stderr}"
        );
    }
    assert_eq!(
        out.status.code(),
        Some(2),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    assert!(
        !stdout.contains("building") && !stderr.contains("compose"),
        "it went on without an engine: {stdout}{stderr}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
}

/// `docker compose up --wait` waits on healthchecks, so each must run with what its
/// image has: busybox wget in Jaeger's (Alpine) and Prometheus's images, curl in
/// Grafana's, bash in our debian-slim demo image. The collector's image is distroless
/// and the receiver and load client listen on nothing: they have none, and say why.
#[test]
fn healthchecks_use_tools_their_images_have() {
    let tools = [
        ("jaegertracing/jaeger:", "wget"),
        ("prom/prometheus:", "wget"),
        ("prom/alertmanager:", "wget"),
        ("grafana/grafana:", "curl"),
        ("otel-gpu/demo:", "bash"),
    ];
    let exempt = [
        "otel-collector",
        "otel-collector-queue-init",
        "loki",
        "otel-gpu-receiver",
        "demo-load",
    ];
    let compose = yaml("docker-compose.yml");
    let text = std::fs::read_to_string(repo_root().join("docker-compose.yml")).unwrap();
    for (name, svc) in compose["services"].as_mapping().unwrap() {
        let name = name.as_str().unwrap();
        let image = svc["image"].as_str().unwrap_or_default();
        let test = str_list(&svc["healthcheck"]["test"]);
        if exempt.contains(&name) {
            assert!(
                test.is_empty(),
                "{name} now has a healthcheck: update this test"
            );
            let block = text.split(&format!("\n  {name}:\n")).nth(1).unwrap();
            let block = block.split("\n\n").next().unwrap();
            assert!(
                block.contains("# No healthcheck:"),
                "{name}: say why it has no healthcheck"
            );
            continue;
        }
        assert_eq!(
            test.first().map(String::as_str),
            Some("CMD"),
            "{name}: healthcheck test must be an exec form [\"CMD\", ...]"
        );
        let tool = tools
            .iter()
            .find(|(prefix, _)| image.starts_with(prefix))
            .map(|(_, t)| *t)
            .unwrap_or_else(|| panic!("{name}: which tools does {image} have?"));
        assert_eq!(
            test.get(1).map(String::as_str),
            Some(tool),
            "{name}: {image} has {tool}"
        );
        assert!(
            test.iter().any(|a| a.contains("127.0.0.1")),
            "{name}: check the service itself, on loopback inside its container"
        );
    }
}

/// The Loki image the stack pins, and the keys of its configuration that
/// stack/loki.yml may use: each one found in the configuration reference of that
/// version (`docs/sources/shared/configuration.md` at tag v3.7.6 of grafana/loki,
/// which is generated from the config structs). A key added to stack/loki.yml must be
/// looked up there and added here, for the image's version.
const LOKI_IMAGE: &str = "grafana/loki:3.7.6";
const LOKI_3_7_6_KEYS: &[&str] = &[
    "analytics",
    "analytics.reporting_enabled",
    "auth_enabled",
    "common",
    "common.instance_addr",
    "common.path_prefix",
    "common.replication_factor",
    "common.ring",
    "common.ring.kvstore",
    "common.ring.kvstore.store",
    "common.storage",
    "common.storage.filesystem",
    "common.storage.filesystem.chunks_directory",
    "common.storage.filesystem.rules_directory",
    "compactor",
    "compactor.delete_request_store",
    "compactor.retention_enabled",
    "compactor.working_directory",
    "limits_config",
    "limits_config.allow_structured_metadata",
    "limits_config.retention_period",
    "schema_config",
    "schema_config.configs",
    "schema_config.configs.from",
    "schema_config.configs.index",
    "schema_config.configs.index.period",
    "schema_config.configs.index.prefix",
    "schema_config.configs.object_store",
    "schema_config.configs.schema",
    "schema_config.configs.store",
    "server",
    "server.grpc_listen_port",
    "server.http_listen_port",
    "server.log_level",
];

#[test]
fn loki_config_uses_only_keys_of_the_pinned_version_and_stores_on_its_volume() {
    let compose = yaml("docker-compose.yml");
    let loki = &compose["services"]["loki"];
    assert_eq!(
        loki["image"].as_str(),
        Some(LOKI_IMAGE),
        "a new Loki version: check stack/loki.yml's keys against its configuration reference"
    );
    let text = std::fs::read_to_string(repo_root().join("stack/loki.yml")).unwrap();
    let version = LOKI_IMAGE.rsplit_once(':').unwrap().1;
    assert!(
        text.contains(&format!("grafana/loki:{version}")) && text.contains(&format!("v{version}")),
        "stack/loki.yml names the version it was written for"
    );
    let cfg = yaml("stack/loki.yml");
    let mut paths = BTreeSet::new();
    key_paths(&cfg, "", &mut paths);
    let unknown: Vec<_> = paths
        .iter()
        .filter(|p| !LOKI_3_7_6_KEYS.contains(&p.as_str()))
        .collect();
    assert!(
        unknown.is_empty(),
        "keys not in Loki {version}'s configuration reference (or not yet checked there): {unknown:?}"
    );
    // The check can fail: a misspelt key.
    let mut typo = BTreeSet::new();
    key_paths(
        &serde_yaml_ng::from_str("limits_config:\n  retention_periode: 1h\n").unwrap(),
        "",
        &mut typo,
    );
    assert!(typo.iter().any(|p| !LOKI_3_7_6_KEYS.contains(&p.as_str())));

    // One process, filesystem storage under the path the loki-data volume holds, and
    // the port the collector sends to.
    assert_eq!(cfg["auth_enabled"].as_bool(), Some(false));
    assert_eq!(cfg["server"]["http_listen_port"].as_u64(), Some(3100));
    let prefix = cfg["common"]["path_prefix"].as_str().unwrap();
    let mounts = str_list(&loki["volumes"]);
    assert!(
        mounts.iter().any(|m| m == &format!("loki-data:{prefix}")),
        "{mounts:?}"
    );
    for dir in [
        cfg["common"]["storage"]["filesystem"]["chunks_directory"].as_str(),
        cfg["common"]["storage"]["filesystem"]["rules_directory"].as_str(),
        cfg["compactor"]["working_directory"].as_str(),
    ] {
        assert!(
            dir.unwrap().starts_with(prefix),
            "{dir:?} is off the volume"
        );
    }
    let config_flag = str_list(&loki["command"]).join(" ");
    let mounted = mounts
        .iter()
        .find(|m| m.starts_with("./stack/loki.yml:"))
        .expect("stack/loki.yml is mounted");
    let target = mounted.split(':').nth(1).unwrap();
    assert!(
        config_flag.contains(&format!("-config.file={target}")),
        "{config_flag}"
    );
    // OTLP logs keep trace_id only as structured metadata, and v13 tsdb is the
    // schema that has it.
    assert_eq!(
        cfg["limits_config"]["allow_structured_metadata"].as_bool(),
        Some(true)
    );
    assert_eq!(
        cfg["schema_config"]["configs"][0]["schema"].as_str(),
        Some("v13")
    );
    assert_eq!(
        cfg["schema_config"]["configs"][0]["store"].as_str(),
        Some("tsdb")
    );
}

/// Logs reach Loki over OTLP, and link to traces both ways: a log line's `trace_id`
/// (structured metadata in Loki) opens the trace in Jaeger, and a span in Jaeger
/// opens its service's lines with its trace id. The functions dashboard shows them.
#[test]
fn logs_go_to_loki_and_link_to_traces_both_ways() {
    let col = yaml("stack/otel-collector.yaml");
    let loki = &col["exporters"]["otlp_http/loki"];
    // otlp_http appends /v1/logs: Loki 3's OTLP route is /otlp/v1/logs.
    assert_eq!(loki["endpoint"].as_str(), Some("http://loki:3100/otlp"));
    let pipelines = col["service"]["pipelines"].as_mapping().unwrap();
    let mut logs_pipelines = 0;
    for (name, p) in pipelines {
        if name.as_str().unwrap().split('/').next() == Some("logs") {
            logs_pipelines += 1;
            assert_eq!(
                str_list(&p["exporters"]),
                ["otlp_http/loki"],
                "pipeline {name:?}"
            );
        }
    }
    assert!(logs_pipelines >= 1);
    assert!(
        col["exporters"]
            .as_mapping()
            .unwrap()
            .keys()
            .all(|k| !k.as_str().unwrap().starts_with("debug")),
        "logs no longer end in a debug exporter"
    );

    let datasources = yaml("grafana/provisioning/datasources/datasources.yaml");
    let all = datasources["datasources"].as_sequence().unwrap();
    let by_type = |t: &str| {
        all.iter()
            .find(|d| d["type"].as_str() == Some(t))
            .unwrap_or_else(|| panic!("no {t} datasource"))
    };
    let (loki_ds, jaeger_ds) = (by_type("loki"), by_type("jaeger"));
    assert_eq!(loki_ds["url"].as_str(), Some("http://loki:3100"));
    let compose = yaml("docker-compose.yml");
    let grafana_deps = str_list(&compose["services"]["grafana"]["depends_on"]);
    assert!(grafana_deps.iter().any(|d| d == "loki"), "{grafana_deps:?}");
    // Log -> trace: the derived field reads the `trace_id` label (structured
    // metadata counts as one), as Loki names it for an OTLP log record.
    let fields = loki_ds["jsonData"]["derivedFields"].as_sequence().unwrap();
    assert!(
        fields
            .iter()
            .any(|f| f["matcherType"].as_str() == Some("label")
            && f["matcherRegex"].as_str() == Some("trace_id")
            && f["datasourceUid"] == jaeger_ds["uid"]
            // An internal link: the value is the trace id, `$$` escapes provisioning's
            // own variable expansion.
            && f["url"].as_str() == Some("$${__value.raw}")),
        "{fields:?}"
    );
    // Trace -> logs: Grafana's Loki query for the span, by service and trace id.
    let t2l = &jaeger_ds["jsonData"]["tracesToLogsV2"];
    assert_eq!(t2l["datasourceUid"], loki_ds["uid"]);
    assert_eq!(t2l["filterByTraceID"].as_bool(), Some(true));
    assert_eq!(t2l["customQuery"].as_bool(), Some(false));
    let tags = t2l["tags"].as_sequence().unwrap();
    assert!(
        tags.iter()
            .any(|t| t["key"] == "service.name" && t["value"] == "service_name"),
        "Loki indexes service.name as service_name: {tags:?}"
    );
    for shift in ["spanStartTimeShift", "spanEndTimeShift"] {
        assert!(t2l[shift].as_str().is_some(), "{shift}");
    }

    // The functions dashboard's logs panel: Loki through its variable, the services
    // the dashboard's `job` selects.
    let text =
        std::fs::read_to_string(repo_root().join("grafana/dashboards/functions.json")).unwrap();
    let d: serde_json::Value = serde_json::from_str(&text).unwrap();
    let panel = d["panels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["type"] == "logs")
        .expect("a logs panel on the functions dashboard");
    let expr = panel["targets"][0]["expr"].as_str().unwrap();
    assert!(
        expr.starts_with("{service_name=~\".+\"") && expr.contains("service_name=~\"$job\""),
        "{expr}"
    );
    assert_eq!(
        datasource_variables(&d).get("logs").map(String::as_str),
        Some("loki")
    );
}

/// The exporters' sending queues are on disk and retried until they fill: a backend
/// outage or a collector restart loses nothing the queue holds. Each queue is a
/// file_storage extension the service starts, on a named volume mounted into the
/// collector and made writable for its user by the one-shot init service.
#[test]
fn exporters_queue_on_disk_and_retry_until_the_queue_is_full() {
    let col = yaml("stack/otel-collector.yaml");
    let compose = yaml("docker-compose.yml");
    let collector = &compose["services"]["otel-collector"];
    let started = str_list(&col["service"]["extensions"]);
    let mut total = 0u64;
    for (name, exp) in col["exporters"].as_mapping().unwrap() {
        let name = name.as_str().unwrap();
        let q = &exp["sending_queue"];
        assert_eq!(q["enabled"].as_bool(), Some(true), "{name}: no queue");
        let storage = q["storage"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: the queue is in memory"));
        assert!(
            storage.starts_with("file_storage") && started.iter().any(|e| e == storage),
            "{name}: storage {storage} is not a started file_storage extension"
        );
        assert_eq!(q["sizer"].as_str(), Some("bytes"), "{name}: size the disk");
        let size = q["queue_size"].as_u64().expect("queue_size");
        assert!(size >= 64 << 20, "{name}: {size} bytes is minutes at most");
        total += size;
        let retry = &exp["retry_on_failure"];
        assert_eq!(retry["enabled"].as_bool(), Some(true), "{name}");
        assert_eq!(
            retry["max_elapsed_time"].as_u64(),
            Some(0),
            "{name}: retry until the queue is full, not for a fixed time"
        );
        let dir = col["extensions"][storage]["directory"].as_str().unwrap();
        let mounts = str_list(&collector["volumes"]);
        let volume = mounts
            .iter()
            .find_map(|m| m.strip_suffix(&format!(":{dir}")))
            .unwrap_or_else(|| panic!("{dir} is not a volume of the collector: {mounts:?}"));
        assert!(
            map_keys(&compose["volumes"]).contains(volume),
            "{volume} is not a named volume"
        );
        // The init service owns that volume for the collector's uid before it starts.
        let init = &compose["services"]["otel-collector-queue-init"];
        assert!(
            str_list(&init["volumes"]).contains(&format!("{volume}:{dir}")),
            "the init service does not prepare {volume}"
        );
        let chown = str_list(&init["command"]).join(" ");
        assert!(
            chown.contains("10001:10001") && chown.contains(dir),
            "{chown}"
        );
        assert_eq!(
            collector["depends_on"]["otel-collector-queue-init"]["condition"].as_str(),
            Some("service_completed_successfully")
        );
    }
    // SCALING.md states the queues' total and how long it lasts.
    let scaling = std::fs::read_to_string(repo_root().join("SCALING.md")).unwrap();
    let gib = total as f64 / f64::from(1u32 << 30);
    assert!(
        scaling.contains(&format!("{gib} GiB")),
        "SCALING.md does not state the queues' {gib} GiB"
    );
}

#[test]
fn collector_components_use_only_keys_of_the_pinned_version() {
    let col = yaml("stack/otel-collector.yaml");
    let image = yaml("docker-compose.yml")["services"]["otel-collector"]["image"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        image.ends_with(":0.157.0"),
        "a new collector ({image}): check the components' keys against its sources"
    );
    let checked = e2e::check_collector_keys("stack/otel-collector.yaml", &col);
    assert!(checked > 20, "only {checked} keys checked");
    // The check can fail: a misspelt key.
    let typo: Value =
        serde_yaml_ng::from_str("exporters:\n  otlp_grpc/x:\n    retry_on_failur: {}\n").unwrap();
    assert!(std::panic::catch_unwind(|| e2e::check_collector_keys("typo", &typo)).is_err());
}

/// Alertmanager's webhook reaches the collector's webhookevent receiver on its port
/// and path, and its notifications land in Loki as the alertmanager service's logs.
#[test]
fn alert_notifications_are_kept_as_logs() {
    let am = yaml("stack/alertmanager.yml");
    let col = yaml("stack/otel-collector.yaml");
    let hook = &col["receivers"]["webhookevent/alertmanager"];
    let port = hook["endpoint"]
        .as_str()
        .unwrap()
        .rsplit_once(':')
        .unwrap()
        .1;
    let path = hook["path"].as_str().unwrap();
    let want = format!("http://otel-collector:{port}{path}");
    let mut urls = 0;
    for r in am["receivers"].as_sequence().unwrap() {
        for w in r["webhook_configs"].as_sequence().into_iter().flatten() {
            assert_eq!(w["url"].as_str(), Some(want.as_str()));
            urls += 1;
        }
    }
    assert!(urls > 0);
    let pipeline = &col["service"]["pipelines"]["logs/alerts"];
    assert_eq!(
        str_list(&pipeline["receivers"]),
        ["webhookevent/alertmanager"]
    );
    let processors = str_list(&pipeline["processors"]);
    assert!(processors.iter().any(|p| p == "resource/alertmanager"));
    let attrs = col["processors"]["resource/alertmanager"]["attributes"]
        .as_sequence()
        .unwrap();
    assert!(
        attrs
            .iter()
            .any(|a| a["key"] == "service.name" && a["value"] == "alertmanager")
    );
}

/// The README's table lists every service that publishes a port, by the name a reader
/// knows it (Grafana, Jaeger, Prometheus, Alertmanager, Loki, the collector, the demo),
/// with its port variable, and the README links SCALING.md.
#[test]
fn the_readme_lists_every_published_service_and_links_scaling_md() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let compose = yaml("docker-compose.yml");
    let names = [
        ("grafana", "| Grafana |"),
        ("jaeger", "| Jaeger |"),
        ("prometheus", "| Prometheus |"),
        ("alertmanager", "| Alertmanager |"),
        ("loki", "| Loki |"),
        ("otel-collector", "| OTLP (Collector) |"),
        ("demo-gateway", "| Demo gateway |"),
    ];
    for (service, svc) in compose["services"].as_mapping().unwrap() {
        let service = service.as_str().unwrap();
        let ports = str_list(&svc["ports"]);
        if ports.is_empty() {
            continue;
        }
        let row = names
            .iter()
            .find(|(s, _)| *s == service)
            .map(|(_, row)| *row)
            .unwrap_or_else(|| {
                panic!("{service} publishes a port: name it in this test and the README")
            });
        assert!(readme.contains(row), "README's table lacks {row}");
        for port in ports {
            let var = port
                .split("${")
                .nth(1)
                .and_then(|p| p.split(':').next())
                .unwrap();
            assert!(
                readme.contains(&format!("`{var}`")),
                "README does not name {var}"
            );
        }
    }
    assert!(
        readme.contains("(SCALING.md)"),
        "README does not link SCALING.md"
    );
}

/// The text of each OTTL string literal in `statement` (`\\` and `\"` unescaped).
fn ottl_strings(statement: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = statement.chars();
    while let Some(c) = chars.next() {
        if c != '"' {
            continue;
        }
        let mut s = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => s.extend(chars.next()),
                '"' => break,
                c => s.push(c),
            }
        }
        out.push(s);
    }
    out
}

#[test]
fn the_collector_redacts_with_the_libraries_value_rules() {
    use otel_instrument::redact::{DEFAULT_VALUE_RULES, Redactor};
    let col = yaml("stack/otel-collector.yaml");
    for pipeline in ["traces", "metrics", "logs"] {
        let processors = str_list(&col["service"]["pipelines"][pipeline]["processors"]);
        let at = processors.iter().position(|p| p == "transform/redact");
        assert!(
            at.is_some_and(|i| processors.get(i + 1).map(String::as_str) == Some("batch")),
            "the {pipeline} pipeline redacts before it batches: {processors:?}"
        );
    }
    let t = &col["processors"]["transform/redact"];
    // Every place a string leaves in: the same rules, in the same order.
    let mut per_place: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for section in ["trace_statements", "log_statements", "metric_statements"] {
        for group in t[section].as_sequence().expect(section) {
            let context = group["context"].as_str().unwrap().to_owned();
            for statement in str_list(&group["statements"]) {
                let target = statement
                    .split_once('(')
                    .and_then(|(_, rest)| rest.split([',', ')']).next())
                    .unwrap()
                    .to_owned();
                let strings = ottl_strings(&statement);
                // replace_pattern(target, regex, replacement) or
                // replace_all_patterns(target, "value", regex, replacement).
                let (pattern, replacement) = match strings.as_slice() {
                    [mode, p, r] if mode == "value" => (p.clone(), r.clone()),
                    [p, r] => (p.clone(), r.clone()),
                    other => panic!("unexpected statement {statement}: {other:?}"),
                };
                // `$$` is the collector config's escape for `$`.
                per_place
                    .entry(format!("{context}.{target}"))
                    .or_default()
                    .push((pattern, replacement.replace("$$", "$")));
            }
        }
    }
    let places: Vec<&String> = per_place.keys().collect();
    for want in [
        "span.name",
        "span.attributes",
        "spanevent.name",
        "spanevent.attributes",
        "log.body",
        "log.attributes",
        "datapoint.attributes",
    ] {
        assert!(
            places.iter().any(|p| *p == want),
            "{want} is not redacted: {places:?}"
        );
    }
    let rules = per_place["span.attributes"].clone();
    assert_eq!(
        rules.len(),
        DEFAULT_VALUE_RULES.len(),
        "one statement per value rule"
    );
    for (place, r) in &per_place {
        assert_eq!(r, &rules, "{place} has other rules than span.attributes");
    }
    let compiled: Vec<(regex::Regex, String)> = rules
        .iter()
        .map(|(p, r)| {
            (
                regex::Regex::new(p).unwrap_or_else(|e| panic!("{p}: {e}")),
                r.clone(),
            )
        })
        .collect();
    let collector = |s: &str| {
        compiled.iter().fold(s.to_owned(), |s, (re, rep)| {
            re.replace_all(&s, rep.as_str()).into_owned()
        })
    };
    let library = Redactor::default();
    // The same result as the library's on the four secrets (and more).
    for s in [
        "charge for jane.doe@example.com with 4111 1111 1111 1111 failed: \
         Authorization: Bearer abcDEF123.xyz_987 at postgres://app:hunter2@db:5432/orders",
        "GET /cb?code=1&access_token=abc123&x=2 key AKIAIOSFODNN7EXAMPLE",
        "t=eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.sig-nature_x password=hunter2",
        "-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY----- tail",
        "amex 3782 822463 10005, mastercard 5555-5555-5555-4444",
    ] {
        let out = collector(s);
        assert_eq!(out, library.redact(s), "{s}");
        for secret in [
            "jane.doe",
            "4111",
            "abcDEF123",
            "hunter2",
            "abc123",
            "AKIA",
            "MIIE",
            "eyJ",
            "3782",
            "5555",
        ] {
            assert!(!out.contains(secret), "{secret} in {out}");
        }
    }
    // And the false positives stay.
    for s in [
        "order 1234567890123456 shipped",
        "version 1.2.3-beta.4+build.567",
        "at 2026-12-07T06:15:00.123456789Z",
        "ts 1733552100123456789",
        "trace 4bf92f3577b34da6a3ce929d0e0e4736 span 00f067aa0ba902b7",
        "sha256 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        "ip 10.0.0.1:8080 uuid 123e4567-e89b-12d3-a456-426614174000",
        "https://example.com/path?page=2&sort=asc",
    ] {
        assert_eq!(collector(s), s);
    }
}
