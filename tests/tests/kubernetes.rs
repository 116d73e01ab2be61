//! `deploy/kubernetes`, checked offline against the code and the Kubernetes schemas.
//!
//! - The kustomization renders: with `kubectl kustomize` where kubectl is installed, and
//!   always with the small renderer below, which must agree with kubectl where both run.
//! - Every rendered object validates against the schemas of Kubernetes [`K8S_VERSION`]
//!   (`kubernetes-validate --strict`, installed by test.sh, which bundles its schemas).
//! - Every flag and variable of the DaemonSet is one the receiver reads: the library
//!   resolves them and records what it looked up, and the binary's `--check-config`
//!   exits 0 on them.
//! - Every hostPath is one the code reads, under the flag that names its mount path, and
//!   every path the code reads on the host is mounted.
//! - The least-privilege settings are there, and a change that weakens one fails.
//! - The overlays that KUBERNETES.md shows render, keep the base's arguments, and do what
//!   they say; the docs agree that changes go in an overlay, not in base/.
//!
//! What needs a cluster (admission, the RuntimeClass, the kubelet socket's permissions,
//! NVML inside the pod) is not checked here: KUBERNETES.md says so.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::Parser as _;
use e2e::{repo_root, run_ok};
use otel_gpu_receiver::attribution::{kubelet::DEFAULT_SOCKET, pods::DEFAULT_POD_LOG_DIR};
use otel_gpu_receiver::config::{Flags, Settings};
use otel_gpu_receiver::host::Roots;
use serde::Deserialize as _;
use serde_yaml_ng::Value;

/// The Kubernetes version whose schemas the objects must satisfy.
const K8S_VERSION: &str = "1.33.0";

/// The kustomization that `kubectl apply -k deploy/kubernetes` applies.
const BASE: &str = "deploy/kubernetes";
/// The optional overlay with the ServiceMonitor.
const PROMETHEUS_OPERATOR: &str = "deploy/kubernetes/overlays/prometheus-operator";
/// The example Collector gateway config (not part of any kustomization).
const COLLECTOR_EXAMPLE: &str = "deploy/kubernetes/examples/collector-gateway.yaml";
/// The example tier beyond one Collector (SCALING.md): load balancing by trace id,
/// tail sampling, remote-write, Jaeger on OpenSearch.
const GATEWAY_TIER: &str = "deploy/kubernetes/examples/gateway-tier.yaml";

/// Capabilities the agent may add, each with its reason. Empty: none has one (see the
/// comment in base/daemonset.yaml). Adding one here needs the reason, in review.
const ALLOWED_CAPABILITIES: &[(&str, &str)] = &[];

/// Variables in the manifest that the agent does not read, and who does.
const NOT_FOR_THE_AGENT: &[(&str, &str)] = &[
    ("NVIDIA_VISIBLE_DEVICES", "the NVIDIA Container Toolkit"),
    ("NVIDIA_DRIVER_CAPABILITIES", "the NVIDIA Container Toolkit"),
];

// ---------------------------------------------------------------------------------------
// Rendering

fn yaml_docs(text: &str, what: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{what} is not YAML: {e}")))
        .filter(|v| !v.is_null())
        .collect()
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let dirs = std::env::var_os("PATH")?;
    std::env::split_paths(&dirs)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// `kubectl kustomize <dir>`, or `None` where kubectl is not installed.
fn kubectl_render(dir: &str) -> Option<Vec<Value>> {
    let kubectl = find_on_path("kubectl")?;
    let out = run_ok(
        Command::new(kubectl)
            .arg("kustomize")
            .arg(repo_root().join(dir)),
    );
    Some(yaml_docs(&String::from_utf8(out.stdout).unwrap(), dir))
}

/// The kustomization as kubectl would render it: kubectl's output where it is installed,
/// the fallback renderer's otherwise.
fn render(dir: &str) -> Vec<Value> {
    kubectl_render(dir).unwrap_or_else(|| {
        eprintln!("kubectl is not installed: {dir} rendered by the fallback renderer");
        fallback_render(&repo_root().join(dir))
    })
}

/// Kinds that have no namespace, of those a kustomization here might hold.
const CLUSTER_SCOPED: &[&str] = &[
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PriorityClass",
    "RuntimeClass",
];

/// A small kustomize for what deploy/kubernetes and the overlays in KUBERNETES.md use:
/// `resources` (files and directories), `namespace`, `configMapGenerator` with
/// `literals` and `behavior` (`create`, `merge`, `replace`; the name gets kustomize's
/// content hash, and references from pod templates follow it), `patches` (inline
/// JSON 6902 operations with a `target` kind and name) and `images`. Any other field
/// fails, so that it never renders something else silently.
fn fallback_render(dir: &Path) -> Vec<Value> {
    let mut level = fallback_level(dir);
    // kustomize hashes a generated ConfigMap's final data, after every overlay's
    // merges, and renames the references to it.
    let mut renamed = HashMap::new();
    for o in &mut level.objects {
        if o["kind"] != "ConfigMap" {
            continue;
        }
        let name = o["metadata"]["name"].as_str().unwrap().to_owned();
        if !level.generated.contains(&name) {
            continue;
        }
        let data: BTreeMap<String, String> =
            serde_yaml_ng::from_value(o["data"].clone()).unwrap_or_default();
        let hashed = format!("{name}-{}", config_map_hash(&data));
        o["metadata"]["name"] = hashed.clone().into();
        renamed.insert(name, hashed);
    }
    for o in &mut level.objects {
        if let Some(spec) = pod_spec_mut(o) {
            for c in containers_mut(spec) {
                rename_config_map_refs(c, &renamed);
            }
            if let Some(vols) = spec.get_mut("volumes").and_then(Value::as_sequence_mut) {
                for v in vols {
                    rename(v, &["configMap", "name"], &renamed);
                }
            }
        }
    }
    level.objects
}

/// One kustomization's objects, with its generated ConfigMaps still under their own
/// names (listed in `generated`), so that an overlay can merge into them.
struct Level {
    objects: Vec<Value>,
    generated: BTreeSet<String>,
}

fn fallback_level(dir: &Path) -> Level {
    let path = dir.join("kustomization.yaml");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let k: Value = serde_yaml_ng::from_str(&text).unwrap();
    for key in k.as_mapping().unwrap().keys() {
        let key = key.as_str().unwrap();
        assert!(
            [
                "apiVersion",
                "kind",
                "namespace",
                "resources",
                "configMapGenerator",
                "patches",
                "images"
            ]
            .contains(&key),
            "{}: the fallback renderer does not know `{key}`; render with `kubectl kustomize` \
             or teach it",
            path.display()
        );
    }
    let mut objects = Vec::new();
    let mut generated = BTreeSet::new();
    for r in seq(&k["resources"]) {
        let r = dir.join(r.as_str().unwrap());
        if r.is_dir() {
            let sub = fallback_level(&r);
            objects.extend(sub.objects);
            generated.extend(sub.generated);
        } else {
            let text = std::fs::read_to_string(&r)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", r.display()));
            objects.extend(yaml_docs(&text, &r.display().to_string()));
        }
    }
    let only = |v: &Value, known: &[&str], what: &str| {
        for key in v.as_mapping().unwrap().keys() {
            let key = key.as_str().unwrap();
            assert!(
                known.contains(&key),
                "{}: the fallback renderer does not know {what}.{key}",
                path.display()
            );
        }
    };
    for g in seq(&k["configMapGenerator"]) {
        only(&g, &["name", "literals", "behavior"], "configMapGenerator");
        let name = g["name"].as_str().unwrap();
        let mut data = serde_yaml_ng::Mapping::new();
        for l in seq(&g["literals"]) {
            let (key, value) = l.as_str().unwrap().split_once('=').unwrap();
            data.insert(key.into(), value.into());
        }
        let existing = || {
            assert!(
                generated.contains(name),
                "{}: configMapGenerator {name} merges into a ConfigMap no base generates",
                path.display()
            );
            objects
                .iter()
                .position(|o| o["kind"] == "ConfigMap" && o["metadata"]["name"] == name)
                .unwrap()
        };
        match g["behavior"].as_str().unwrap_or("create") {
            "create" => {
                assert!(generated.insert(name.to_owned()), "{name} generated twice");
                let mut cm = serde_yaml_ng::Mapping::new();
                cm.insert("apiVersion".into(), "v1".into());
                cm.insert("kind".into(), "ConfigMap".into());
                let mut meta = serde_yaml_ng::Mapping::new();
                meta.insert("name".into(), name.into());
                cm.insert("metadata".into(), meta.into());
                cm.insert("data".into(), data.into());
                objects.push(cm.into());
            }
            "merge" => {
                let i = existing();
                let old = objects[i]["data"].as_mapping_mut().unwrap();
                for (key, value) in data {
                    old.insert(key, value);
                }
            }
            "replace" => {
                let i = existing();
                objects[i]["data"] = data.into();
            }
            other => panic!("{}: unknown behavior {other}", path.display()),
        }
    }
    for p in seq(&k["patches"]) {
        only(&p, &["target", "patch"], "patches");
        only(&p["target"], &["kind", "name"], "patches.target");
        let ops: Value = serde_yaml_ng::from_str(p["patch"].as_str().expect("an inline patch"))
            .unwrap_or_else(|e| panic!("{}: a patch is not YAML: {e}", path.display()));
        let ops = ops.as_sequence().unwrap_or_else(|| {
            panic!(
                "{}: the fallback renderer knows JSON 6902 patches (a list of operations) \
                 only, not strategic merge patches",
                path.display()
            )
        });
        let target = &p["target"];
        let mut matched = 0;
        for o in &mut objects {
            if o["kind"] == target["kind"] && o["metadata"]["name"] == target["name"] {
                matched += 1;
                for op in ops {
                    json_patch(o, op);
                }
            }
        }
        assert_eq!(matched, 1, "{}: patch target {target:?}", path.display());
    }
    for o in &mut objects {
        if let Some(ns) = k["namespace"].as_str() {
            let kind = o["kind"].as_str().unwrap().to_owned();
            if kind == "Namespace" {
                o["metadata"]["name"] = ns.into();
            } else if !CLUSTER_SCOPED.contains(&kind.as_str()) {
                o["metadata"]["namespace"] = ns.into();
            }
        }
        if let Some(spec) = pod_spec_mut(o) {
            for c in containers_mut(spec) {
                for i in seq(&k["images"]) {
                    only(&i, &["name", "newName", "newTag"], "images");
                    set_image(c, &i);
                }
            }
        }
    }
    Level { objects, generated }
}

/// Applies one JSON 6902 operation (`add`, `remove`, `replace`) to `doc`.
fn json_patch(doc: &mut Value, op: &Value) {
    let path = op["path"].as_str().expect("an operation has a path");
    let mut tokens: Vec<String> = path
        .strip_prefix('/')
        .unwrap_or_else(|| panic!("{path}: a JSON pointer starts with /"))
        .split('/')
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect();
    let last = tokens.pop().unwrap();
    let mut parent = &mut *doc;
    for t in &tokens {
        parent = match parent {
            Value::Mapping(m) => m.get_mut(t.as_str()),
            Value::Sequence(s) => t.parse::<usize>().ok().and_then(|i| s.get_mut(i)),
            _ => None,
        }
        .unwrap_or_else(|| panic!("{path}: no {t}"));
    }
    let value = || op["value"].clone();
    match (op["op"].as_str().unwrap(), parent) {
        ("add", Value::Sequence(s)) if last == "-" => s.push(value()),
        ("add", Value::Sequence(s)) => s.insert(last.parse().unwrap(), value()),
        ("add", Value::Mapping(m)) => {
            m.insert(last.into(), value());
        }
        ("remove", Value::Sequence(s)) => {
            s.remove(last.parse().unwrap());
        }
        ("remove", Value::Mapping(m)) => {
            m.remove(last.as_str())
                .unwrap_or_else(|| panic!("{path}: nothing to remove"));
        }
        ("replace", Value::Sequence(s)) => s[last.parse::<usize>().unwrap()] = value(),
        ("replace", Value::Mapping(m)) => {
            *m.get_mut(last.as_str())
                .unwrap_or_else(|| panic!("{path}: nothing to replace")) = value();
        }
        (other, _) => panic!("{path}: the fallback renderer does not know the operation {other}"),
    }
}

fn seq(v: &Value) -> Vec<Value> {
    v.as_sequence().cloned().unwrap_or_default()
}

/// kustomize's name suffix for a generated ConfigMap: the first 10 hex digits of the
/// SHA-256 of `{"data":…,"kind":"ConfigMap","name":""}` (Go's JSON, sorted keys),
/// with 0, 1, 3, a and e swapped for letters so that it is never a number.
fn config_map_hash(data: &BTreeMap<String, String>) -> String {
    let json = serde_json::json!({ "data": data, "kind": "ConfigMap", "name": "" }).to_string();
    assert!(
        !json.contains(['<', '>', '&', '\u{2028}', '\u{2029}']),
        "Go's JSON escapes <, > and &: the fallback renderer does not; use kubectl"
    );
    let mut child = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("sha256sum (coreutils)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(json.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout).unwrap()[..10]
        .chars()
        .map(|c| match c {
            '0' => 'g',
            '1' => 'h',
            '3' => 'k',
            'a' => 'm',
            'e' => 't',
            c => c,
        })
        .collect()
}

/// Renames the ConfigMap named at `path` under `v`, if there is one (indexing with
/// `v[..]` would add the missing keys).
fn rename(v: &mut Value, path: &[&str], renamed: &HashMap<String, String>) {
    let mut at = Some(v);
    for key in path {
        at = at.and_then(|v| v.get_mut(*key));
    }
    if let Some(name) = at
        && let Some(new) = name.as_str().and_then(|n| renamed.get(n))
    {
        *name = new.clone().into();
    }
}

fn rename_config_map_refs(c: &mut Value, renamed: &HashMap<String, String>) {
    if let Some(from) = c.get_mut("envFrom").and_then(Value::as_sequence_mut) {
        for f in from {
            rename(f, &["configMapRef", "name"], renamed);
        }
    }
    if let Some(env) = c.get_mut("env").and_then(Value::as_sequence_mut) {
        for e in env {
            rename(e, &["valueFrom", "configMapKeyRef", "name"], renamed);
        }
    }
}

fn set_image(c: &mut Value, rule: &Value) {
    let Some(image) = c["image"].as_str() else {
        return;
    };
    let (name, tag) = match image.rsplit_once(':') {
        Some((n, t)) if !t.contains('/') => (n, Some(t)),
        _ => (image, None),
    };
    if Some(name) != rule["name"].as_str() {
        return;
    }
    let name = rule["newName"].as_str().unwrap_or(name);
    let image = match rule["newTag"].as_str().or(tag) {
        Some(t) => format!("{name}:{t}"),
        None => name.to_owned(),
    };
    c["image"] = image.into();
}

fn pod_spec_mut(o: &mut Value) -> Option<&mut Value> {
    match o["kind"].as_str()? {
        "DaemonSet" | "Deployment" | "StatefulSet" | "Job" => {
            Some(&mut o["spec"]["template"]["spec"])
        }
        _ => None,
    }
}

fn containers_mut(spec: &mut Value) -> Vec<&mut Value> {
    let mut all = Vec::new();
    let spec = spec.as_mapping_mut().unwrap();
    for (k, v) in spec.iter_mut() {
        if matches!(k.as_str(), Some("containers" | "initContainers"))
            && let Some(s) = v.as_sequence_mut()
        {
            all.extend(s.iter_mut());
        }
    }
    all
}

/// Objects by (kind, namespace, name).
fn by_key(objects: &[Value]) -> BTreeMap<(String, String, String), Value> {
    let mut map = BTreeMap::new();
    for o in objects {
        let key = (
            o["kind"].as_str().unwrap_or_default().to_owned(),
            o["metadata"]["namespace"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            o["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
        assert!(
            map.insert(key.clone(), o.clone()).is_none(),
            "{key:?} twice"
        );
    }
    map
}

fn one<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = objects.iter().filter(|o| o["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "expected one {kind}, found {}", found.len());
    found[0]
}

/// The DaemonSet's one container.
fn agent(objects: &[Value]) -> &Value {
    let containers = &one(objects, "DaemonSet")["spec"]["template"]["spec"]["containers"];
    assert_eq!(containers.as_sequence().map(Vec::len), Some(1));
    &containers[0]
}

fn strings(v: &Value) -> Vec<String> {
    seq(v)
        .iter()
        .map(|s| s.as_str().expect("a string").to_owned())
        .collect()
}

// ---------------------------------------------------------------------------------------
// The settings the manifest gives the agent

/// The node name the downward API would give, for the checks here.
const SAMPLE_NODE: &str = "gpu-node-1";

/// The container's environment as the kubelet would set it: `envFrom` ConfigMaps, then
/// `env` (values, ConfigMap keys, and the downward API's node name).
fn container_env(objects: &[Value]) -> BTreeMap<String, String> {
    let config_map = |name: &str| -> &Value {
        objects
            .iter()
            .find(|o| o["kind"] == "ConfigMap" && o["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("the manifest refers to ConfigMap {name}, which it lacks"))
    };
    let c = agent(objects);
    let mut env = BTreeMap::new();
    for from in seq(&c["envFrom"]) {
        let name = from["configMapRef"]["name"]
            .as_str()
            .expect("envFrom names a ConfigMap");
        for (k, v) in config_map(name)["data"].as_mapping().unwrap() {
            env.insert(
                k.as_str().unwrap().to_owned(),
                v.as_str().unwrap().to_owned(),
            );
        }
    }
    for e in seq(&c["env"]) {
        let name = e["name"].as_str().unwrap().to_owned();
        let value = if let Some(v) = e["value"].as_str() {
            v.to_owned()
        } else if e["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName" {
            SAMPLE_NODE.to_owned()
        } else if let Some(r) = e["valueFrom"]["configMapKeyRef"].as_mapping() {
            let cm = config_map(r["name"].as_str().unwrap());
            cm["data"][r["key"].as_str().unwrap()]
                .as_str()
                .unwrap()
                .to_owned()
        } else {
            panic!("{name}: a value source this test does not model: {e:?}")
        };
        env.insert(name, value);
    }
    env
}

/// What the library makes of the manifest's args and variables, and every variable
/// name it looked up.
fn resolve(objects: &[Value]) -> (Settings, BTreeSet<String>) {
    let args = strings(&agent(objects)["args"]);
    let env = container_env(objects);
    let flags = Flags::try_parse_from(std::iter::once("otel-gpu-receiver".to_owned()).chain(args))
        .unwrap_or_else(|e| panic!("the manifest's args do not parse: {e}"));
    let asked = RefCell::new(BTreeSet::new());
    let settings = Settings::resolve(flags, &|k| {
        asked.borrow_mut().insert(k.to_owned());
        env.get(k).cloned()
    })
    .unwrap_or_else(|e| panic!("the manifest's settings are invalid: {e}"));
    (settings, asked.into_inner())
}

// ---------------------------------------------------------------------------------------
// Rendering and schemas

#[test]
fn the_fallback_renderer_agrees_with_kubectl_kustomize() {
    for dir in [BASE, PROMETHEUS_OPERATOR] {
        let ours = by_key(&fallback_render(&repo_root().join(dir)));
        assert!(
            ours.keys()
                .any(|(kind, _, name)| kind == "DaemonSet" && name == "otel-gpu-receiver"),
            "{dir}: {:?}",
            ours.keys()
        );
        let Some(theirs) = kubectl_render(dir) else {
            eprintln!("kubectl is not installed: only the fallback renderer ran for {dir}");
            continue;
        };
        let theirs = by_key(&theirs);
        assert_eq!(
            ours.keys().collect::<Vec<_>>(),
            theirs.keys().collect::<Vec<_>>(),
            "{dir}: the renderers give different objects"
        );
        for (key, o) in &ours {
            assert_eq!(o, &theirs[key], "{dir}: {key:?} differs from kubectl's");
        }
    }
    // The hash is kustomize's: this value is what `kubectl kustomize` (kustomize v5.5.0)
    // names a ConfigMap with this one literal.
    let data = BTreeMap::from([(
        "OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(),
        "http://otel-collector.monitoring.svc:4317".to_owned(),
    )]);
    assert_eq!(config_map_hash(&data), "k6dmh8b75d");
}

#[test]
fn the_kustomization_lists_every_manifest_and_renders_what_the_agent_needs() {
    // No manifest file is left out of its kustomization (one that is would never be
    // applied, nor checked here).
    for dir in ["deploy/kubernetes/base", PROMETHEUS_OPERATOR] {
        let k = e2e::yaml(&format!("{dir}/kustomization.yaml"));
        let listed: BTreeSet<String> = strings(&k["resources"]).into_iter().collect();
        for f in std::fs::read_dir(repo_root().join(dir)).unwrap() {
            let name = f.unwrap().file_name().into_string().unwrap();
            if name.ends_with(".yaml") && name != "kustomization.yaml" {
                assert!(
                    listed.contains(&name),
                    "{dir}/{name} is not in its kustomization"
                );
            }
        }
    }
    let objects = render(BASE);
    let kinds: BTreeSet<&str> = objects.iter().filter_map(|o| o["kind"].as_str()).collect();
    assert_eq!(
        kinds,
        BTreeSet::from([
            "ConfigMap",
            "DaemonSet",
            "Namespace",
            "Service",
            "ServiceAccount"
        ])
    );
    let ns = one(&objects, "Namespace")["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_owned();
    for o in &objects {
        if o["kind"] != "Namespace" {
            assert_eq!(
                o["metadata"]["namespace"].as_str(),
                Some(ns.as_str()),
                "{o:?}"
            );
        }
    }
    // The image names a registry, so that it can never resolve to an image on Docker
    // Hub that someone else published under the same name.
    let image = agent(&objects)["image"].as_str().unwrap();
    let host = image.split('/').next().unwrap();
    assert!(
        image.contains('/') && (host.contains('.') || host.contains(':')),
        "{image} names no registry"
    );
    assert!(
        image
            .rsplit_once(':')
            .is_some_and(|(_, t)| !t.is_empty() && t != "latest")
    );
}

#[test]
fn every_object_validates_against_the_kubernetes_schemas() {
    let probe = Command::new("python3")
        .args(["-m", "kubernetes_validate", "--version"])
        .output()
        .expect("python3");
    assert!(
        probe.status.success(),
        "kubernetes-validate is not installed: run ./test.sh, which installs it from PyPI"
    );
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    let mut all: Vec<Value> = render(BASE);
    for example in [COLLECTOR_EXAMPLE, GATEWAY_TIER] {
        all.extend(yaml_docs(
            &std::fs::read_to_string(repo_root().join(example)).unwrap(),
            example,
        ));
    }
    // The overlays KUBERNETES.md shows: what they add must be valid too.
    let (_overlays_dir, overlays) = write_doc_overlays();
    for (_, path) in &overlays {
        all.extend(render(path));
    }
    // kubernetes-validate has the core API's schemas, not the CRDs': the overlay's
    // ServiceMonitor is checked by the_service_monitor_selects_the_service below.
    for (i, o) in all.iter().enumerate() {
        let f = dir.path().join(format!("{i}.yaml"));
        std::fs::write(&f, serde_yaml_ng::to_string(o).unwrap()).unwrap();
        files.push(f);
    }
    let validate = |files: &[PathBuf]| {
        Command::new("python3")
            .args(["-m", "kubernetes_validate", "--strict", "-k", K8S_VERSION])
            .args(files)
            .output()
            .unwrap()
    };
    let out = validate(&files);
    let stdout =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}");
    let passed = stdout.matches(" passed for resource ").count();
    assert_eq!(
        passed,
        files.len(),
        "every object must pass, none be skipped:\n{stdout}"
    );
    eprintln!("kubernetes-validate --strict -k {K8S_VERSION}: {passed} objects passed");

    // The check has teeth: a misspelt field and a wrong type fail.
    let ds = one(&render(BASE), "DaemonSet").clone();
    let bad = dir.path().join("bad.yaml");
    let fails = |change: fn(&mut Value)| {
        let mut ds = ds.clone();
        change(&mut ds["spec"]["template"]["spec"]["containers"][0]);
        std::fs::write(&bad, serde_yaml_ng::to_string(&ds).unwrap()).unwrap();
        !validate(std::slice::from_ref(&bad)).status.success()
    };
    assert!(
        fails(|c| c["securityContext"]["readOnlyRootFileSystem"] = true.into()),
        "a misspelt field passed"
    );
    assert!(
        fails(|c| c["livenessProbe"]["periodSeconds"] = "thirty".into()),
        "a wrong type passed"
    );
}

// ---------------------------------------------------------------------------------------
// The manifest and the code

#[test]
fn every_flag_and_variable_in_the_manifest_is_one_the_receiver_reads() {
    let objects = render(BASE);
    let (settings, asked) = resolve(&objects);
    let env = container_env(&objects);
    for name in env.keys() {
        if let Some((_, who)) = NOT_FOR_THE_AGENT.iter().find(|(n, _)| n == name) {
            assert!(
                !asked.contains(name),
                "{name} is read by the agent after all"
            );
            eprintln!("{name}: for {who}");
            continue;
        }
        assert!(
            asked.contains(name),
            "the agent never reads {name}: a misspelt or unknown variable does nothing"
        );
    }
    // The values arrive where they should.
    assert_eq!(
        settings.otlp.as_ref().map(|o| o.endpoint.as_str()),
        Some(env["OTEL_EXPORTER_OTLP_ENDPOINT"].as_str())
    );
    assert_eq!(settings.k8s_node_name.as_deref(), Some(SAMPLE_NODE));
    assert!(settings.attribution.is_some(), "attribution on");
    assert_eq!(env["NVIDIA_VISIBLE_DEVICES"], "all");
    assert_eq!(env["NVIDIA_DRIVER_CAPABILITIES"], "utility");

    // The binary agrees: --check-config on the manifest's args and environment exits 0,
    // here, where /host/root does not exist (host paths are checked at start only).
    let args = strings(&agent(&objects)["args"]);
    let check = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_e2e-otel-gpu-receiver"))
            .arg("--check-config")
            .args(&args)
            .args(extra)
            .env_clear()
            .envs(&env)
            .output()
            .unwrap()
    };
    let out = check(&[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("configuration ok"));
    // ... and it has teeth: a bad value and an unknown flag exit 2.
    let out = check(&["--interval=0s"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--interval"));
    assert_eq!(check(&["--no-such-flag"]).status.code(), Some(2));
}

/// The paths the agent reads on the host, each as the setting that names where the
/// container sees it, and the host path that it stands for: the code's default, which
/// is what the agent reads when it runs on the host itself.
fn host_paths_the_code_reads(s: &Settings) -> Vec<(&'static str, PathBuf, PathBuf)> {
    let a = s.attribution.as_ref().expect("attribution on");
    let host = Roots::default();
    vec![
        ("--proc-root", s.roots.proc.clone(), host.proc),
        ("--sys-root", s.roots.sys.clone(), host.sys),
        ("--rootfs", s.roots.rootfs.clone(), host.rootfs),
        (
            "--kubelet-socket",
            a.kubelet_socket.clone(),
            PathBuf::from(DEFAULT_SOCKET),
        ),
        (
            "--pod-log-dir",
            a.pod_log_dir.clone(),
            PathBuf::from(DEFAULT_POD_LOG_DIR),
        ),
    ]
}

/// (volume name, host path, mount path, read-only, propagation) of every hostPath mount.
fn host_mounts(objects: &[Value]) -> Vec<(String, PathBuf, PathBuf, bool, Option<String>)> {
    let spec = &one(objects, "DaemonSet")["spec"]["template"]["spec"];
    let volumes: HashMap<String, String> = seq(&spec["volumes"])
        .iter()
        .filter_map(|v| {
            Some((
                v["name"].as_str()?.to_owned(),
                v["hostPath"]["path"].as_str()?.to_owned(),
            ))
        })
        .collect();
    let mut mounted = BTreeSet::new();
    let mut mounts = Vec::new();
    for c in seq(&spec["containers"])
        .iter()
        .chain(&seq(&spec["initContainers"]))
    {
        for m in seq(&c["volumeMounts"]) {
            let name = m["name"].as_str().unwrap().to_owned();
            let Some(host) = volumes.get(&name) else {
                continue;
            };
            mounted.insert(name.clone());
            mounts.push((
                name,
                PathBuf::from(host),
                PathBuf::from(m["mountPath"].as_str().unwrap()),
                m["readOnly"].as_bool().unwrap_or(false),
                m["mountPropagation"].as_str().map(str::to_owned),
            ));
        }
    }
    for name in volumes.keys() {
        assert!(
            mounted.contains(name),
            "hostPath volume {name} is never mounted"
        );
    }
    mounts
}

#[test]
fn every_host_path_mounted_is_one_the_code_reads_and_every_one_it_reads_is_mounted() {
    let objects = render(BASE);
    let (settings, _) = resolve(&objects);
    let reads = host_paths_the_code_reads(&settings);
    let mounts = host_mounts(&objects);

    // Each mount: read-only, at the path a flag names, of the host path that flag's
    // default reads. The kubelet socket's mount is its directory (the kubelet
    // recreates the socket).
    for (name, host, at, read_only, _) in &mounts {
        assert!(
            read_only,
            "hostPath {name} ({}) is not read-only",
            host.display()
        );
        let used = reads.iter().any(|(_, seen, wanted)| {
            (seen == at && wanted == host)
                || (seen.parent() == Some(at.as_path()) && wanted.parent() == Some(host.as_path()))
        });
        assert!(
            used,
            "hostPath {name}: {} at {} is read by no setting of the agent ({reads:?})",
            host.display(),
            at.display()
        );
    }
    // Each path the code reads on the host: under a mount of that very host path.
    for (flag, seen, wanted) in &reads {
        let covered = mounts.iter().any(|(_, host, at, _, _)| {
            seen.strip_prefix(at).is_ok_and(|rest| {
                host.join(rest) == *wanted || (rest.as_os_str().is_empty() && host == wanted)
            })
        });
        assert!(
            covered,
            "{flag} = {} is not a mount of the host's {}",
            seen.display(),
            wanted.display()
        );
    }
    // The host's disks mounted after the pod started appear under --rootfs.
    let rootfs = mounts
        .iter()
        .find(|(_, host, _, _, _)| host == Path::new("/"))
        .expect("the host's / is mounted");
    assert_eq!(rootfs.4.as_deref(), Some("HostToContainer"));
    // NVML comes from the NVIDIA Container Toolkit, not from a mount.
    assert_eq!(settings.nvml_lib, None);
}

// ---------------------------------------------------------------------------------------
// Least privilege

/// What weakens the least-privilege settings of the rendered objects, one line each.
fn security_violations(objects: &[Value]) -> Vec<String> {
    let mut bad = Vec::new();
    let mut check = |ok: bool, what: &str| {
        if !ok {
            bad.push(what.to_owned());
        }
    };
    for o in objects {
        let kind = o["kind"].as_str().unwrap_or_default();
        check(
            !["Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"].contains(&kind),
            &format!("{kind}: the agent needs no API permissions"),
        );
    }
    let ds = one(objects, "DaemonSet");
    let spec = &ds["spec"]["template"]["spec"];
    check(
        spec["hostPID"] == true,
        "hostPID: true (NVML reports host pids)",
    );
    check(spec["hostNetwork"] != true, "no hostNetwork");
    check(spec["hostIPC"] != true, "no hostIPC");
    check(
        spec["automountServiceAccountToken"] == false,
        "automountServiceAccountToken: false on the pod",
    );
    check(
        spec["enableServiceLinks"] == false,
        "enableServiceLinks: false",
    );
    check(
        spec["priorityClassName"].is_null(),
        "priorityClassName is left to the user",
    );
    check(
        spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault",
        "seccompProfile RuntimeDefault",
    );
    let sa_name = spec["serviceAccountName"].as_str().unwrap_or_default();
    let sa = objects
        .iter()
        .find(|o| o["kind"] == "ServiceAccount" && o["metadata"]["name"] == sa_name);
    check(
        sa.is_some_and(|sa| sa["automountServiceAccountToken"] == false),
        "the pod's own ServiceAccount, with automountServiceAccountToken: false",
    );
    // Root only for a container that mounts the kubelet's socket.
    let kubelet_dir = Path::new(DEFAULT_SOCKET).parent().unwrap();
    let kubelet_volumes: Vec<Value> = seq(&spec["volumes"])
        .into_iter()
        .filter(|v| v["hostPath"]["path"].as_str() == kubelet_dir.to_str())
        .map(|v| v["name"].clone())
        .collect();
    let pod_sc = &spec["securityContext"];
    for c in seq(&spec["containers"])
        .iter()
        .chain(&seq(&spec["initContainers"]))
    {
        let name = c["name"].as_str().unwrap_or_default();
        let needs_root = seq(&c["volumeMounts"])
            .iter()
            .any(|m| kubelet_volumes.contains(&m["name"]));
        let sc = &c["securityContext"];
        check(sc["privileged"] != true, &format!("{name}: no privileged"));
        check(
            sc["allowPrivilegeEscalation"] == false,
            &format!("{name}: allowPrivilegeEscalation: false"),
        );
        check(
            sc["readOnlyRootFilesystem"] == true,
            &format!("{name}: readOnlyRootFilesystem: true"),
        );
        check(
            strings(&sc["capabilities"]["drop"]) == ["ALL"],
            &format!("{name}: capabilities drop ALL"),
        );
        for cap in strings(&sc["capabilities"]["add"]) {
            check(
                ALLOWED_CAPABILITIES.iter().any(|(c, _)| *c == cap),
                &format!("{name}: capability {cap} has no reason in ALLOWED_CAPABILITIES"),
            );
        }
        let non_root = sc["runAsNonRoot"] == true
            || (sc["runAsNonRoot"].is_null() && pod_sc["runAsNonRoot"] == true);
        let uid = sc["runAsUser"]
            .as_u64()
            .or_else(|| pod_sc["runAsUser"].as_u64());
        check(
            non_root || (uid == Some(0) && needs_root),
            &format!("{name}: runAsNonRoot, unless it mounts the kubelet's socket (root's)"),
        );
        for part in ["requests", "limits"] {
            for (res, _) in c["resources"][part]
                .as_mapping()
                .cloned()
                .unwrap_or_default()
            {
                let res = res.as_str().unwrap_or_default();
                check(
                    !res.starts_with("nvidia.com/"),
                    &format!("{name}: requests {res}, a GPU a workload could use"),
                );
            }
        }
        for p in seq(&c["ports"]) {
            check(p["hostPort"].is_null(), &format!("{name}: no hostPort"));
        }
    }
    for (name, host, _, read_only, _) in host_mounts(objects) {
        check(
            read_only,
            &format!("hostPath {name} ({}) read-only", host.display()),
        );
    }
    // hostPID and hostPath volumes are above the baseline Pod Security level: the
    // namespace must admit them, or no pod starts.
    let ns = one(objects, "Namespace");
    check(
        ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged",
        "the namespace admits hostPID and hostPath (pod-security enforce: privileged)",
    );
    bad
}

#[test]
fn the_least_privilege_settings_are_there_and_weakening_one_fails() {
    let objects = render(BASE);
    assert_eq!(security_violations(&objects), Vec::<String>::new());

    // Each of these changes must be caught.
    type Change = fn(&mut Value);
    let changes: [(&str, Change); 10] = [
        ("privileged", |c| {
            c["securityContext"]["privileged"] = true.into()
        }),
        ("escalation", |c| {
            c["securityContext"]["allowPrivilegeEscalation"] = true.into()
        }),
        ("writable root", |c| {
            c["securityContext"]["readOnlyRootFilesystem"] = false.into()
        }),
        ("a capability", |c| {
            c["securityContext"]["capabilities"]["add"] = vec!["SYS_ADMIN"].into()
        }),
        ("keep capabilities", |c| {
            c["securityContext"]["capabilities"]
                .as_mapping_mut()
                .unwrap()
                .remove("drop");
        }),
        ("a GPU", |c| {
            c["resources"]["limits"]["nvidia.com/gpu"] = 1.into();
        }),
        ("a writable host mount", |c| {
            c["volumeMounts"][0]["readOnly"] = false.into()
        }),
        ("a host port", |c| c["ports"][0]["hostPort"] = 9464.into()),
        ("another container running as root", |c| {
            c["securityContext"]["runAsNonRoot"] = false.into();
            c["securityContext"]["runAsUser"] = 0.into();
            c["volumeMounts"] = Value::Sequence(Vec::new());
        }),
        ("root without the socket", |_| {}),
    ];
    for (what, change) in changes {
        let mut objects = objects.clone();
        let ds = objects
            .iter_mut()
            .find(|o| o["kind"] == "DaemonSet")
            .unwrap();
        let spec = &mut ds["spec"]["template"]["spec"];
        if what == "root without the socket" {
            let vols = spec["volumes"].as_sequence_mut().unwrap();
            vols.retain(|v| v["name"] != "pod-resources");
            let mounts = spec["containers"][0]["volumeMounts"]
                .as_sequence_mut()
                .unwrap();
            mounts.retain(|m| m["name"] != "pod-resources");
        } else if what == "another container running as root" {
            let mut extra = spec["containers"][0].clone();
            extra["name"] = "extra".into();
            change(&mut extra);
            spec["containers"].as_sequence_mut().unwrap().push(extra);
        } else {
            change(&mut spec["containers"][0]);
        }
        assert!(
            !security_violations(&objects).is_empty(),
            "{what} was not caught"
        );
    }
    for (key, value) in [
        ("hostNetwork", Value::from(true)),
        ("automountServiceAccountToken", Value::from(true)),
        ("priorityClassName", Value::from("system-node-critical")),
        ("enableServiceLinks", Value::from(true)),
    ] {
        let mut objects = objects.clone();
        let ds = objects
            .iter_mut()
            .find(|o| o["kind"] == "DaemonSet")
            .unwrap();
        ds["spec"]["template"]["spec"][key] = value;
        assert!(
            !security_violations(&objects).is_empty(),
            "{key} was not caught"
        );
    }
    let mut with_role = objects.clone();
    with_role.push(serde_yaml_ng::from_str("kind: ClusterRole\nmetadata: {name: r}").unwrap());
    assert!(
        !security_violations(&with_role).is_empty(),
        "a ClusterRole was not caught"
    );
}

// ---------------------------------------------------------------------------------------
// Probes, ports, sizing, the overlay and the example

#[test]
fn probes_reach_healthz_where_the_agent_serves_it() {
    let objects = render(BASE);
    let (settings, _) = resolve(&objects);
    let listen = settings
        .prometheus
        .expect("--prometheus: /healthz is served with it");
    assert!(
        !listen.ip().is_loopback(),
        "--prometheus={listen}: the kubelet probes the pod's address, not its loopback"
    );
    let c = agent(&objects);
    let port = seq(&c["ports"])
        .into_iter()
        .find(|p| p["containerPort"].as_u64() == Some(u64::from(listen.port())))
        .expect("a container port for --prometheus");
    for probe in ["livenessProbe", "readinessProbe"] {
        let get = &c[probe]["httpGet"];
        assert_eq!(get["path"], "/healthz", "{probe}");
        assert!(
            get["port"] == port["name"] || get["port"] == port["containerPort"],
            "{probe} probes another port"
        );
        // 503 comes after 3 intervals without a cycle; a liveness probe that gives up
        // sooner would restart an agent that is merely slow.
        let period = c[probe]["periodSeconds"].as_u64().unwrap_or(10);
        let failures = c[probe]["failureThreshold"].as_u64().unwrap_or(3);
        if probe == "livenessProbe" {
            assert!(period * failures >= 3 * settings.interval.as_secs());
        }
    }
    let svc = one(&objects, "Service");
    assert_eq!(
        svc["spec"]["clusterIP"], "None",
        "headless: one target per pod"
    );
    let pod_labels = &one(&objects, "DaemonSet")["spec"]["template"]["metadata"]["labels"];
    for (k, v) in svc["spec"]["selector"].as_mapping().unwrap() {
        assert_eq!(
            &pod_labels[k.as_str().unwrap()],
            v,
            "the Service selects the agents"
        );
    }
    let sp = &svc["spec"]["ports"][0];
    assert_eq!(sp["targetPort"], port["name"]);
    assert_eq!(
        svc["metadata"]["annotations"]["prometheus.io/port"].as_str(),
        Some(listen.port().to_string().as_str())
    );
}

#[test]
fn the_service_monitor_selects_the_service() {
    let objects = render(PROMETHEUS_OPERATOR);
    let sm = one(&objects, "ServiceMonitor");
    let svc = one(&objects, "Service");
    assert_eq!(sm["metadata"]["namespace"], svc["metadata"]["namespace"]);
    for (k, v) in sm["spec"]["selector"]["matchLabels"].as_mapping().unwrap() {
        assert_eq!(&svc["metadata"]["labels"][k.as_str().unwrap()], v);
    }
    let ep = &sm["spec"]["endpoints"][0];
    assert!(
        seq(&svc["spec"]["ports"])
            .iter()
            .any(|p| p["name"] == ep["port"]),
        "the ServiceMonitor names a port the Service lacks"
    );
    assert_eq!(ep["path"], "/metrics");
    // The overlay adds the ServiceMonitor and changes nothing else.
    let base = by_key(&render(BASE));
    let overlay = by_key(&objects);
    for (key, o) in &base {
        assert_eq!(Some(o), overlay.get(key), "{key:?}");
    }
    assert_eq!(overlay.len(), base.len() + 1);
}

/// A number of bytes from Kubernetes' quantity (`32Mi`, `64M`, `1Gi`).
fn bytes(q: &str) -> f64 {
    for (suffix, mult) in [
        ("Ki", 1024.0),
        ("Mi", 1024.0 * 1024.0),
        ("Gi", 1024.0 * 1024.0 * 1024.0),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
    ] {
        if let Some(n) = q.strip_suffix(suffix) {
            return n.parse::<f64>().unwrap() * mult;
        }
    }
    q.parse().unwrap()
}

/// Millicores from a CPU quantity (`20m`, `0.5`, `1`).
fn millicores(q: &str) -> f64 {
    match q.strip_suffix('m') {
        Some(m) => m.parse().unwrap(),
        None => q.parse::<f64>().unwrap() * 1000.0,
    }
}

/// A table cell's numbers of BENCHMARKS.md rows starting with `row`: the number before
/// `unit` in column `col`, of every such row.
fn benchmark_figures(row: &str, col: usize, unit: &str) -> Vec<f64> {
    let text = std::fs::read_to_string(repo_root().join("BENCHMARKS.md")).unwrap();
    let figures: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with(row))
        .filter_map(|l| l.split('|').nth(col))
        .filter_map(|cell| {
            let before = cell.split(unit).next()?;
            before
                .split_whitespace()
                .last()?
                .replace(',', "")
                .parse()
                .ok()
        })
        .collect();
    assert!(
        !figures.is_empty(),
        "BENCHMARKS.md has no `{row}` row with `{unit}`"
    );
    figures
}

/// The agent's figures in BENCHMARKS.md's export-path tables (rows `pull, …` and
/// `OTLP push, …`, a scrape or push once a second): the number before `unit` in column
/// `col`.
fn agent_figures(col: usize, unit: &str) -> Vec<f64> {
    let text = std::fs::read_to_string(repo_root().join("BENCHMARKS.md")).unwrap();
    let figures: Vec<f64> = text
        .lines()
        .filter_map(|l| {
            let cells: Vec<String> = l.split('|').map(|c| c.replace('*', "")).collect();
            let first = cells.get(1)?.trim().to_owned();
            if !(first.starts_with("pull") || first.starts_with("OTLP push")) {
                return None;
            }
            let cell = cells.get(col)?.trim().to_owned();
            cell.strip_suffix(unit)?
                .trim()
                .replace(',', "")
                .parse()
                .ok()
        })
        .collect();
    assert!(
        !figures.is_empty(),
        "BENCHMARKS.md has no agent row (`| pull, … |`) with `{unit}` in column {col}"
    );
    figures
}

#[test]
fn requests_and_limits_follow_the_benchmarks() {
    let objects = render(BASE);
    let (settings, _) = resolve(&objects);
    let r = &agent(&objects)["resources"];
    let q = |part: &str, res: &str| {
        r[part][res]
            .as_str()
            .unwrap_or_else(|| panic!("resources.{part}.{res} is not set"))
            .to_owned()
    };
    let max = |v: Vec<f64>| v.into_iter().fold(0.0, f64::max);
    // Memory: the footprint runs' RSS (MB), and the soak's at its end (KiB).
    let footprint = max(agent_figures(3, " MB")) * 1e6;
    let soak = max(benchmark_figures("| RSS end of warm-up → end |", 2, " KiB")) * 1024.0;
    let (request, limit) = (
        bytes(&q("requests", "memory")),
        bytes(&q("limits", "memory")),
    );
    assert!(
        request >= soak,
        "memory request {request} below the soak's RSS {soak}"
    );
    assert!(
        limit >= 4.0 * footprint && limit <= 16.0 * footprint,
        "memory limit {limit}: keep it 4-16x the measured RSS {footprint} (as compose does)"
    );
    // CPU: the measured time per cycle (with a scrape every second), at the manifest's
    // interval; the request has 10x room for a real driver, and the limit lets one
    // cycle finish within one 100 ms CFS period.
    let per_cycle_ms = max(agent_figures(2, " ms"));
    let average_m = per_cycle_ms / settings.interval.as_secs_f64();
    let (request, limit) = (
        millicores(&q("requests", "cpu")),
        millicores(&q("limits", "cpu")),
    );
    assert!(
        request >= 10.0 * average_m,
        "cpu request {request}m vs {average_m}m measured"
    );
    assert!(
        limit >= per_cycle_ms * 10.0,
        "cpu limit {limit}m throttles one cycle ({per_cycle_ms} ms)"
    );
    assert!(limit >= request);
    // The parsers read what they claim.
    assert_eq!(bytes("32Mi"), 32.0 * 1024.0 * 1024.0);
    assert_eq!(millicores("0.2"), 200.0);
}

#[test]
fn the_collector_example_receives_what_the_agents_send() {
    let objects = render(BASE);
    let endpoint = container_env(&objects)["OTEL_EXPORTER_OTLP_ENDPOINT"].clone();
    let hostport = endpoint
        .strip_prefix("http://")
        .expect("plain gRPC inside the cluster");
    let (host, port) = hostport.rsplit_once(':').unwrap();
    let mut parts = host.split('.');
    let (service, namespace) = (parts.next().unwrap(), parts.next().unwrap());

    let docs = yaml_docs(
        &std::fs::read_to_string(repo_root().join(COLLECTOR_EXAMPLE)).unwrap(),
        COLLECTOR_EXAMPLE,
    );
    let cm = one(&docs, "ConfigMap");
    assert_eq!(cm["metadata"]["namespace"].as_str(), Some(namespace));
    let text = std::fs::read_to_string(repo_root().join(COLLECTOR_EXAMPLE)).unwrap();
    assert!(text.contains("AN EXAMPLE") && text.contains(&format!("Service `{service}`")));
    let col: Value = serde_yaml_ng::from_str(cm["data"]["config.yaml"].as_str().unwrap()).unwrap();
    assert_eq!(
        col["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"].as_str(),
        Some(format!("0.0.0.0:{port}").as_str())
    );
    let keys = |v: &Value| -> BTreeSet<String> {
        v.as_mapping()
            .map(|m| {
                m.keys()
                    .filter_map(|k| k.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let pipelines = col["service"]["pipelines"].as_mapping().unwrap();
    assert!(pipelines.contains_key("metrics"));
    for (name, p) in pipelines {
        for section in ["receivers", "processors", "exporters"] {
            for used in strings(&p[section]) {
                assert!(
                    keys(&col[section]).contains(&used),
                    "{name:?} uses undefined {used}"
                );
            }
        }
        assert_eq!(
            strings(&p["processors"]).first().map(String::as_str),
            Some("memory_limiter")
        );
        assert!(
            strings(&p["exporters"])
                .iter()
                .all(|e| e.starts_with("otlp")),
            "forwards OTLP"
        );
    }
    for ext in strings(&col["service"]["extensions"]) {
        assert!(keys(&col["extensions"]).contains(&ext));
    }
    // An example: no kustomization applies it.
    for dir in [
        "deploy/kubernetes",
        "deploy/kubernetes/base",
        PROMETHEUS_OPERATOR,
    ] {
        let k = std::fs::read_to_string(repo_root().join(dir).join("kustomization.yaml")).unwrap();
        let resources = strings(&serde_yaml_ng::from_str::<Value>(&k).unwrap()["resources"]);
        assert!(
            resources.iter().all(|r| !r.contains("examples")),
            "{dir} applies the example"
        );
    }
}

/// The ConfigMap `name` of `docs`, its `key` parsed as YAML.
fn config_map_yaml(docs: &[Value], name: &str, key: &str) -> Value {
    let cm = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no ConfigMap {name}"));
    serde_yaml_ng::from_str(cm["data"][key].as_str().unwrap())
        .unwrap_or_else(|e| panic!("ConfigMap {name}: {key} is not YAML: {e}"))
}

/// The gateway tier of SCALING.md holds together: every config's keys are the pinned
/// versions' (Collector 0.157, Jaeger 2.19), traces go by trace id to the samplers
/// that the load balancer's resolver finds, whole traces are tail-sampled and stored in
/// Jaeger on OpenSearch, metrics are remote-written, and the Prometheus config passes
/// promtool.
#[test]
fn the_gateway_tier_routes_traces_by_id_to_tail_sampling_and_scalable_stores() {
    let text = std::fs::read_to_string(repo_root().join(GATEWAY_TIER)).unwrap();
    assert!(text.contains("AN EXAMPLE"));
    let docs = yaml_docs(&text, GATEWAY_TIER);
    let lb = config_map_yaml(&docs, "otel-collector-loadbalancer", "config.yaml");
    let sampler = config_map_yaml(&docs, "otel-collector-sampler", "config.yaml");
    let jaeger = config_map_yaml(&docs, "jaeger", "config.yaml");
    for (what, col) in [
        ("loadbalancer", &lb),
        ("sampler", &sampler),
        ("jaeger", &jaeger),
    ] {
        assert!(e2e::check_collector_keys(what, col) > 0);
        for (name, p) in col["service"]["pipelines"].as_mapping().unwrap() {
            for section in ["receivers", "processors", "exporters"] {
                for used in strings(&p[section]) {
                    assert!(
                        col[section].get(used.as_str()).is_some(),
                        "{what}: pipeline {name:?} uses undefined {used}"
                    );
                }
            }
            if what != "jaeger" {
                assert_eq!(
                    strings(&p["processors"]).first().map(String::as_str),
                    Some("memory_limiter"),
                    "{what}: {name:?}"
                );
            }
        }
        for ext in strings(&col["service"]["extensions"]) {
            assert!(
                col["extensions"].get(ext.as_str()).is_some(),
                "{what}: {ext}"
            );
        }
    }

    // Load balancer -> samplers: by trace id, to the headless Service's pods, on the
    // port the samplers receive on.
    let lbx = &lb["exporters"]["loadbalancing/traces"];
    assert_eq!(lbx["routing_key"].as_str(), Some("traceID"));
    assert_eq!(
        strings(&lb["service"]["pipelines"]["traces"]["exporters"]),
        ["loadbalancing/traces"]
    );
    let svc = docs
        .iter()
        .find(|d| d["kind"] == "Service" && d["metadata"]["name"] == "otel-collector-sampler")
        .expect("the samplers' Service");
    assert_eq!(svc["spec"]["clusterIP"].as_str(), Some("None"), "headless");
    let host = format!(
        "{}.{}.svc.cluster.local",
        svc["metadata"]["name"].as_str().unwrap(),
        svc["metadata"]["namespace"].as_str().unwrap()
    );
    assert_eq!(
        lbx["resolver"]["dns"]["hostname"].as_str(),
        Some(host.as_str())
    );
    let port = lbx["resolver"]["dns"]["port"].as_str().unwrap();
    assert_eq!(
        svc["spec"]["ports"][0]["port"]
            .as_u64()
            .map(|p| p.to_string()),
        Some(port.to_owned())
    );
    assert_eq!(
        sampler["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"].as_str(),
        Some(format!("0.0.0.0:{port}").as_str())
    );
    let selected = &svc["spec"]["selector"]["app.kubernetes.io/name"];
    assert_eq!(selected.as_str(), Some("otel-collector-sampler"));

    // Samplers: whole traces decided, failures kept, then to Jaeger's OTLP port.
    let traces = strings(&sampler["service"]["pipelines"]["traces"]["processors"]);
    assert!(traces.iter().any(|p| p == "tail_sampling"), "{traces:?}");
    let policies = sampler["processors"]["tail_sampling"]["policies"]
        .as_sequence()
        .unwrap();
    assert!(
        policies.iter().any(|p| p["type"] == "status_code"
            && strings(&p["status_code"]["status_codes"]) == ["ERROR"])
    );
    let to_jaeger = sampler["exporters"]["otlp_grpc/jaeger"]["endpoint"]
        .as_str()
        .unwrap();
    let jaeger_port = jaeger["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"]
        .as_str()
        .unwrap()
        .rsplit_once(':')
        .unwrap()
        .1;
    assert!(
        to_jaeger.ends_with(&format!(":{jaeger_port}")),
        "{to_jaeger}"
    );

    // Jaeger: one storage backend, which scales (OpenSearch), used for writes and queries.
    let backends = jaeger["extensions"]["jaeger_storage"]["backends"]
        .as_mapping()
        .unwrap();
    let store = jaeger["exporters"]["jaeger_storage_exporter"]["trace_storage"]
        .as_str()
        .unwrap();
    assert!(backends.contains_key(store));
    assert_eq!(
        jaeger["extensions"]["jaeger_query"]["storage"]["traces"].as_str(),
        Some(store)
    );
    assert!(
        backends[store]["opensearch"]["server_urls"]
            .as_sequence()
            .is_some()
    );

    // Metrics: remote-write to a scalable store, from the Collector and from Prometheus.
    let prw = &lb["exporters"]["prometheusremotewrite/store"];
    assert!(prw["endpoint"].as_str().unwrap().ends_with("/api/v1/push"));
    let prom = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == "prometheus-remote-write")
        .expect("the Prometheus remote-write example");
    let prom_yml = prom["data"]["prometheus.yml"].as_str().unwrap();
    let parsed: Value = serde_yaml_ng::from_str(prom_yml).unwrap();
    assert!(!parsed["remote_write"].as_sequence().unwrap().is_empty());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("prometheus.yml");
    std::fs::write(&path, prom_yml).unwrap();
    run_ok(
        Command::new(e2e::tool("promtool", "Debian's prometheus package"))
            .args(["check", "config"])
            .arg(&path),
    );
}

#[test]
fn the_docs_point_to_the_files_instead_of_embedding_them() {
    let doc = std::fs::read_to_string(repo_root().join("otel-gpu-receiver/KUBERNETES.md")).unwrap();
    // An overlay's patch may name the DaemonSet; a whole manifest has its apiVersion.
    assert!(
        !doc.contains("apiVersion: apps/v1"),
        "KUBERNETES.md embeds a DaemonSet again"
    );
    for needed in [
        "kubectl apply -k deploy/kubernetes",
        "--dry-run=client",
        "../deploy/kubernetes/base/daemonset.yaml",
        "overlays/prometheus-operator",
        "examples/collector-gateway.yaml",
    ] {
        assert!(doc.contains(needed), "KUBERNETES.md lacks {needed}");
    }
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    assert!(readme.contains("kubectl apply -k deploy/kubernetes"));
}

// ---------------------------------------------------------------------------------------
// The overlays that KUBERNETES.md shows

/// The overlays KUBERNETES.md shows, each a YAML block that starts with
/// `# <name>/kustomization.yaml`: (name, text).
fn doc_overlays() -> Vec<(String, String)> {
    let doc = std::fs::read_to_string(repo_root().join("otel-gpu-receiver/KUBERNETES.md")).unwrap();
    doc.split("```yaml\n")
        .skip(1)
        .filter_map(|block| {
            let block = block.split("```").next()?;
            let name = block
                .lines()
                .next()?
                .strip_prefix("# ")?
                .strip_suffix("/kustomization.yaml")?;
            Some((name.to_owned(), block.to_owned()))
        })
        .collect()
}

/// Writes each overlay where the docs have it, in a directory beside `deploy/` (a link
/// to the repository's), and returns the directory and (name, overlay path) pairs.
fn write_doc_overlays() -> (tempfile::TempDir, Vec<(String, String)>) {
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(repo_root().join("deploy"), dir.path().join("deploy")).unwrap();
    let mut out = Vec::new();
    for (name, text) in doc_overlays() {
        let at = dir.path().join(&name);
        std::fs::create_dir_all(&at).unwrap();
        std::fs::write(at.join("kustomization.yaml"), text).unwrap();
        out.push((name, at.to_str().unwrap().to_owned()));
    }
    (dir, out)
}

#[test]
fn the_overlays_in_kubernetes_md_render_and_keep_what_the_base_sets() {
    let (_dir, overlays) = write_doc_overlays();
    let names: BTreeSet<&str> = overlays.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        BTreeSet::from(["driver-overlay", "my-overlay"]),
        "KUBERNETES.md's overlays, each a whole kustomization.yaml"
    );
    let base = render(BASE);
    let base_args = strings(&agent(&base)["args"]);
    let (base_settings, _) = resolve(&base);
    let base_env = container_env(&base);
    for (name, path) in &overlays {
        let objects = render(path);
        // A patch that sets `args` replaces the whole list: the probes would lose
        // --prometheus, the host families their --proc-root and --rootfs.
        let args = strings(&agent(&objects)["args"]);
        for a in &base_args {
            assert!(
                args.contains(a),
                "{name} drops {a} from the base's args: {args:?}"
            );
        }
        let (settings, _) = resolve(&objects);
        assert_eq!(settings.prometheus, base_settings.prometheus, "{name}");
        assert_eq!(settings.roots, base_settings.roots, "{name}");
        assert_eq!(
            security_violations(&objects),
            Vec::<String>::new(),
            "{name}"
        );
        for (volume, host, _, read_only, _) in host_mounts(&objects) {
            assert!(
                read_only,
                "{name}: hostPath {volume} ({}) is writable",
                host.display()
            );
        }
        let env = container_env(&objects);
        let out = Command::new(env!("CARGO_BIN_EXE_e2e-otel-gpu-receiver"))
            .arg("--check-config")
            .args(&args)
            .env_clear()
            .envs(&env)
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        match name.as_str() {
            "driver-overlay" => {
                // The library is found under the driver's root, mounted read-only with
                // the host's later mounts propagated.
                let lib = settings.nvml_lib.as_ref().expect("--nvml-lib is set");
                let mount = host_mounts(&objects)
                    .into_iter()
                    .find(|(_, _, at, _, _)| lib.starts_with(at))
                    .unwrap_or_else(|| panic!("{name}: nothing is mounted above {lib:?}"));
                assert_eq!(mount.4.as_deref(), Some("HostToContainer"), "{name}");
                assert!(base_settings.nvml_lib.is_none());
            }
            "my-overlay" => {
                // The overlay, not base/, is where the endpoint and the image change.
                assert_ne!(
                    env["OTEL_EXPORTER_OTLP_ENDPOINT"], base_env["OTEL_EXPORTER_OTLP_ENDPOINT"],
                    "{name}"
                );
                assert_eq!(
                    settings.otlp.as_ref().map(|o| o.endpoint.as_str()),
                    Some(env["OTEL_EXPORTER_OTLP_ENDPOINT"].as_str())
                );
                assert_ne!(agent(&objects)["image"], agent(&base)["image"], "{name}");
            }
            _ => unreachable!(),
        }
        // Both renderers, where both run, agree on the docs' overlays too.
        if let Some(theirs) = kubectl_render(path) {
            assert_eq!(
                by_key(&fallback_render(Path::new(path))),
                by_key(&theirs),
                "{name}: the fallback renderer and kubectl differ"
            );
        }
    }
}

#[test]
fn the_docs_agree_that_changes_go_in_an_overlay_not_in_base() {
    // README.md, KUBERNETES.md and the kustomizations' own comments all send the
    // Collector's endpoint and the image to an overlay of the user's.
    let read = |p: &str| std::fs::read_to_string(repo_root().join(p)).unwrap();
    let texts = [
        ("README.md", read("README.md")),
        ("KUBERNETES.md", read("otel-gpu-receiver/KUBERNETES.md")),
        (
            "deploy/kubernetes/kustomization.yaml",
            read("deploy/kubernetes/kustomization.yaml"),
        ),
        (
            "deploy/kubernetes/base/kustomization.yaml",
            read("deploy/kubernetes/base/kustomization.yaml"),
        ),
    ];
    for (file, text) in &texts {
        let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
        for edit_base in [
            "in `deploy/kubernetes/base/kustomization.yaml`",
            "name it in `base/kustomization.yaml`",
            "set in base/kustomization.yaml",
            "the two settings you change",
            "Settings that you change live here",
        ] {
            assert!(
                !flat.contains(edit_base),
                "{file} says to edit base/ ({edit_base:?}); changes go in an overlay"
            );
        }
        assert!(flat.contains("overlay"), "{file} never mentions an overlay");
    }
}
