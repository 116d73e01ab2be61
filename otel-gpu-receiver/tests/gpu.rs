//! The GPU source against the fake libnvidia-ml, in process: the real nvml-wrapper FFI
//! path end to end (the library is loaded from its path with `Nvml::builder().lib_path`).

mod fake_nvml;

use std::time::{Duration, Instant, SystemTime};

use fake_nvml::FakeNvml;
use opentelemetry::Value as AttrValue;
use otel_gpu_receiver::gpu::{GpuConfig, GpuSession, Inventory, SourceState};
use otel_gpu_receiver::snapshot::{Point, Points, Value};

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

fn uuid(i: usize) -> String {
    format!("GPU-00000000-0000-4000-8000-{i:012}")
}

fn mig_uuid(parent: usize, k: usize) -> String {
    format!("MIG-00000000-0000-4000-8000-{parent:06}{k:06}")
}

struct Run {
    fake: FakeNvml,
    session: GpuSession,
    inventory: Inventory,
}

impl Run {
    fn new(script: &str) -> Self {
        Self::with(script, |_| {})
    }

    fn with(script: &str, tweak: impl FnOnce(&mut GpuConfig)) -> Self {
        let fake = FakeNvml::new(script);
        let mut cfg = GpuConfig {
            nvml_lib: Some(fake.lib.clone()),
            ..GpuConfig::default()
        };
        tweak(&mut cfg);
        let inventory = Inventory::default();
        let session = GpuSession::open(cfg, inventory.clone());
        Self {
            fake,
            session,
            inventory,
        }
    }

    fn cycle(&mut self) -> Vec<Point> {
        let mut p = Points::default();
        self.session.collect(&mut p);
        p.into_vec()
    }
}

fn attr(p: &Point, key: &str) -> Option<String> {
    p.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| match &kv.value {
            AttrValue::I64(i) => i.to_string(),
            v => v.as_str().into_owned(),
        })
}

/// The points of `name` whose attributes include every `(key, value)` of `with`.
fn select<'a>(points: &'a [Point], name: &str, with: &[(&str, &str)]) -> Vec<&'a Point> {
    points
        .iter()
        .filter(|p| p.name == name)
        .filter(|p| with.iter().all(|(k, v)| attr(p, k).as_deref() == Some(*v)))
        .collect()
}

/// The one value of `name` with those attributes; panics when there is not exactly one.
fn value(points: &[Point], name: &str, with: &[(&str, &str)]) -> f64 {
    let found = select(points, name, with);
    assert_eq!(
        found.len(),
        1,
        "expected one {name} with {with:?}, found {found:#?}"
    );
    found[0].value.as_f64()
}

fn has(points: &[Point], name: &str, with: &[(&str, &str)]) -> bool {
    !select(points, name, with).is_empty()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * b.abs().max(1.0)
}

/// The one state of the GPU source that is 1 (and checks that exactly one is).
fn source_state(points: &[Point]) -> String {
    let on: Vec<_> = select(points, "otel_gpu_receiver.gpu.source.state", &[])
        .into_iter()
        .filter(|p| p.value == Value::Int(1))
        .collect();
    assert_eq!(on.len(), 1, "{points:#?}");
    assert_eq!(
        select(points, "otel_gpu_receiver.gpu.source.state", &[]).len(),
        5,
        "one series per state"
    );
    attr(on[0], "state").unwrap()
}

fn status(points: &[Point], id: &str) -> Vec<(String, i64)> {
    let mut v: Vec<_> = select(points, "hw.status", &[("hw.id", id)])
        .into_iter()
        .filter(|p| p.value != Value::Int(0))
        .map(|p| (attr(p, "hw.state").unwrap(), p.value.as_i64()))
        .collect();
    v.sort();
    v
}

#[test]
fn zero_gpus_is_a_valid_state_with_no_gpu_series() {
    let mut run = Run::new("devices 0");
    assert!(run.session.is_loaded());
    let points = run.cycle();
    assert!(
        !points.iter().any(|p| p.name.starts_with("hw.")),
        "{points:#?}"
    );
    assert_eq!(value(&points, "otel_gpu_receiver.gpu.devices", &[]), 0.0);
    assert!(run.inventory.devices().is_empty());
}

#[test]
fn eight_gpus_report_distinct_values_in_the_right_units() {
    let mut run = Run::new("devices 8\ndriver 550.54.15");
    run.cycle();
    let points = run.cycle(); // cycle 2
    let devices = run.inventory.devices();
    assert_eq!(devices.len(), 8);
    for (i, d) in devices.iter().enumerate() {
        assert_eq!(d.index as usize, i);
        assert_eq!(d.uuid, uuid(i));
        assert_eq!(d.name, "NVIDIA Fake H100 80GB HBM3");
        assert_eq!(d.driver_version, "550.54.15");
    }
    for i in 0..8usize {
        let id = uuid(i);
        let f = i as f64;
        let g = |name: &str, extra: &[(&str, &str)]| {
            let mut with = vec![("hw.id", id.as_str())];
            with.extend_from_slice(extra);
            value(&points, name, &with)
        };
        // mW → W, mJ → J (the fake's energy grows 5 J per cycle; this is cycle 2).
        assert!(close(g("hw.power", &[("hw.type", "gpu")]), 100.5 + f));
        assert!(close(
            g("hw.energy", &[("hw.type", "gpu")]),
            (1_000_000.0 + 1000.0 * f + 5000.0 * 2.0) / 1000.0
        ));
        assert!(close(g("nvidia.gpu.power.limit", &[]), 700.0));
        // Bytes, and used ÷ total (not the memory controller's busy share).
        assert!(close(g("hw.gpu.memory.usage", &[]), (f + 1.0) * GIB));
        assert!(close(g("hw.gpu.memory.limit", &[]), 80.0 * GIB));
        assert!(close(g("hw.gpu.memory.utilization", &[]), (f + 1.0) / 80.0));
        assert!(close(
            g("nvidia.gpu.memory_controller.utilization", &[]),
            (20.0 + f) / 100.0
        ));
        // % → ratio.
        for (task, base) in [("general", 10.0), ("encoder", 30.0), ("decoder", 40.0)] {
            assert!(close(
                g("hw.gpu.utilization", &[("hw.gpu.task", task)]),
                (base + f) / 100.0
            ));
        }
        // The fan is a component of its own, whose parent is the GPU.
        let fan = format!("{id}:fan0");
        assert!(close(
            value(
                &points,
                "hw.fan.speed_ratio",
                &[
                    ("hw.id", fan.as_str()),
                    ("hw.parent", id.as_str()),
                    ("hw.name", &format!("nvidia{i}/fan0"))
                ]
            ),
            (30.0 + f) / 100.0
        ));
        // °C.
        assert!(close(
            g("hw.temperature", &[("hw.sensor_location", "gpu")]),
            40.0 + f
        ));
        assert!(close(
            g("hw.temperature", &[("hw.sensor_location", "memory")]),
            50.0 + f
        ));
        assert!(close(
            g("hw.temperature.limit", &[("hw.limit_type", "throttled")]),
            87.0
        ));
        assert!(close(
            g(
                "hw.temperature.limit",
                &[("hw.limit_type", "high.critical")]
            ),
            92.0
        ));
        // MHz → Hz.
        for (clock, base) in [
            ("graphics", 1500.0),
            ("sm", 1510.0),
            ("memory", 2600.0),
            ("video", 1200.0),
        ] {
            assert!(close(
                g("nvidia.gpu.clock.frequency", &[("nvidia.gpu.clock", clock)]),
                (base + f) * 1e6
            ));
        }
        // ns → s; the power violation counter is the software power cap, the same
        // reason (and the same word) as in nvidia.gpu.throttle.active.
        assert!(close(
            g(
                "nvidia.gpu.throttle.time",
                &[("nvidia.gpu.throttle.reason", "sw_power_cap")]
            ),
            f + 1.0
        ));
        assert!(close(
            g(
                "nvidia.gpu.throttle.time",
                &[("nvidia.gpu.throttle.reason", "thermal")]
            ),
            0.5 * (f + 1.0)
        ));
        // Counters.
        // ECC: volatile (since the driver loaded) and aggregate (the GPU's lifetime).
        let ecc = |kind: &str, counter: &str| {
            g(
                "hw.errors",
                &[("error.type", kind), ("nvidia.gpu.ecc.counter", counter)],
            )
        };
        assert!(close(ecc("corrected", "volatile"), 10.0 * f));
        assert!(close(ecc("uncorrected", "volatile"), f));
        assert!(close(ecc("corrected", "aggregate"), 1000.0 + 10.0 * f));
        assert!(close(ecc("uncorrected", "aggregate"), 2.0 + f));
        // Retired pages and the remap-failure flag (field values).
        assert!(close(
            g(
                "nvidia.gpu.memory.retired_pages",
                &[("nvidia.gpu.memory.retirement.cause", "single_bit")]
            ),
            f
        ));
        assert!(close(
            g(
                "nvidia.gpu.memory.retired_pages",
                &[("nvidia.gpu.memory.retirement.cause", "double_bit")]
            ),
            0.0
        ));
        assert!(close(g("nvidia.gpu.memory.remap_failure", &[]), 0.0));
        // PCIe link, current and max.
        for (name, state, v) in [
            ("nvidia.gpu.pcie.link.generation", "current", 4.0),
            ("nvidia.gpu.pcie.link.generation", "max", 5.0),
            ("nvidia.gpu.pcie.link.width", "current", 8.0),
            ("nvidia.gpu.pcie.link.width", "max", 16.0),
        ] {
            assert!(close(g(name, &[("nvidia.gpu.pcie.link.state", state)]), v));
        }
        // Max clocks for all four; application clocks where the GPU has them.
        for (clock, mhz) in [
            ("graphics", 1980.0 + f),
            ("sm", 1980.0 + f),
            ("memory", 2619.0),
            ("video", 1755.0),
        ] {
            assert!(close(
                g(
                    "nvidia.gpu.clock.frequency.max",
                    &[("nvidia.gpu.clock", clock)]
                ),
                mhz * 1e6
            ));
        }
        assert!(close(
            g(
                "nvidia.gpu.clock.frequency.application",
                &[("nvidia.gpu.clock", "graphics")]
            ),
            (1755.0 + f) * 1e6
        ));
        assert_eq!(
            select(
                &points,
                "nvidia.gpu.clock.frequency.application",
                &[("hw.id", &id)]
            )
            .len(),
            2,
            "no SM or video application clocks on this GPU"
        );
        assert!(close(
            g("hw.errors", &[("error.type", "pcie_replay")]),
            100.0 + f
        ));
        assert!(close(
            g("hw.gpu.io", &[("network.io.direction", "transmit")]),
            1e9 * (f + 1.0)
        ));
        assert!(close(
            g("hw.gpu.io", &[("network.io.direction", "receive")]),
            2e9 * (f + 1.0)
        ));
        assert!(close(
            g(
                "nvidia.gpu.memory.remapped_rows",
                &[("nvidia.gpu.memory.remap.kind", "correctable")]
            ),
            f
        ));
        assert!(close(g("nvidia.gpu.performance_state", &[]), 0.0));
        // One series per throttle reason, from a fixed set; none active here.
        let throttle = select(&points, "nvidia.gpu.throttle.active", &[("hw.id", &id)]);
        assert_eq!(throttle.len(), 9);
        assert!(throttle.iter().all(|p| p.value == Value::Int(0)));
        // Identity attributes.
        let p = select(&points, "hw.power", &[("hw.id", &id)])[0];
        assert_eq!(attr(p, "hw.vendor").as_deref(), Some("nvidia"));
        assert_eq!(
            attr(p, "hw.model").as_deref(),
            Some("NVIDIA Fake H100 80GB HBM3")
        );
        assert_eq!(attr(p, "gpu.index"), Some(i.to_string()));
        assert_eq!(attr(p, "hw.name"), Some(format!("nvidia{i}")));
        assert!(
            p.attributes.len() <= 8,
            "too many labels: {:?}",
            p.attributes
        );
        assert_eq!(status(&points, &id), vec![("ok".to_owned(), 1)]);
        // Driver, VBIOS and serial only on hw.status.
        let st = select(&points, "hw.status", &[("hw.id", &id)])[0];
        assert_eq!(attr(st, "hw.driver_version").as_deref(), Some("550.54.15"));
        assert!(attr(st, "hw.serial_number").is_some());
        assert!(attr(p, "hw.driver_version").is_none());
    }
    assert!(
        !points
            .iter()
            .any(|p| p.name == "otel_gpu_receiver.nvml.errors")
    );
    assert!(
        !points
            .iter()
            .any(|p| p.name == "otel_gpu_receiver.nvml.timeouts")
    );
    assert_eq!(source_state(&points), "up");
    // Every cycle's calls went to the one NVML worker: none was abandoned.
    for _ in 0..10 {
        run.cycle();
    }
    assert_eq!(run.session.workers_started(), 1);
}

#[test]
fn not_supported_fields_are_omitted_and_not_asked_again() {
    let mut run = Run::new(
        "devices 2\n\
         dev 0 notsup nvmlDeviceGetPowerUsage\n\
         dev 0 notsup nvmlDeviceGetTotalEnergyConsumption\n\
         dev 0 notsup nvmlDeviceGetFieldValues",
    );
    let mut points = Vec::new();
    for _ in 0..6 {
        points = run.cycle();
    }
    let (g0, g1) = (uuid(0), uuid(1));
    // Omitted, never reported as 0 ...
    assert!(!has(&points, "hw.power", &[("hw.id", &g0)]));
    assert!(!has(&points, "hw.energy", &[("hw.id", &g0)]));
    assert!(!has(&points, "hw.gpu.io", &[("hw.id", &g0)]));
    assert!(!has(
        &points,
        "hw.temperature",
        &[("hw.id", &g0), ("hw.sensor_location", "memory")]
    ));
    // ... and the rest of the same GPU still reports.
    assert!(close(
        value(
            &points,
            "hw.temperature",
            &[("hw.id", &g0), ("hw.sensor_location", "gpu")]
        ),
        40.0
    ));
    assert!(has(&points, "hw.gpu.memory.usage", &[("hw.id", &g0)]));
    assert_eq!(status(&points, &g0), vec![("ok".to_owned(), 1)]);
    assert!(close(value(&points, "hw.power", &[("hw.id", &g1)]), 101.5));
    // Asked once in six cycles on GPU 0; every cycle on GPU 1 (counts up to cycle 5).
    assert_eq!(run.fake.count("nvmlDeviceGetPowerUsage", 0), 1);
    assert_eq!(run.fake.count("nvmlDeviceGetTotalEnergyConsumption", 0), 1);
    assert_eq!(run.fake.count("nvmlDeviceGetPowerUsage", 1), 5);
    // NOT_SUPPORTED is not an error.
    assert!(
        !points
            .iter()
            .any(|p| p.name == "otel_gpu_receiver.nvml.errors")
    );
}

#[test]
fn a_gpu_lost_at_cycle_3_is_failed_while_the_others_continue_and_it_recovers() {
    let mut run = Run::new("devices 3\ndev 1 lost 3 5");
    let (g0, g1, g2) = (uuid(0), uuid(1), uuid(2));
    for cycle in 1..=6 {
        let points = run.cycle();
        for g in [&g0, &g2] {
            assert_eq!(
                status(&points, g),
                vec![("ok".to_owned(), 1)],
                "cycle {cycle}"
            );
            assert!(has(&points, "hw.power", &[("hw.id", g)]), "cycle {cycle}");
        }
        if (3..5).contains(&cycle) {
            assert_eq!(
                status(&points, &g1),
                vec![("failed".to_owned(), 1)],
                "cycle {cycle}"
            );
            // Nothing else is reported for it, and no 0s: only its Xid counters, which
            // go on counting.
            let others: Vec<_> = points
                .iter()
                .filter(|p| p.name != "hw.status" && !p.name.starts_with("nvidia.gpu.xid."))
                .filter(|p| {
                    !(p.name == "hw.errors" && attr(p, "error.type").as_deref() == Some("xid"))
                })
                .filter(|p| attr(p, "hw.id").as_deref() == Some(g1.as_str()))
                .collect();
            assert!(others.is_empty(), "cycle {cycle}: {others:#?}");
        } else {
            assert_eq!(
                status(&points, &g1),
                vec![("ok".to_owned(), 1)],
                "cycle {cycle}"
            );
            assert!(close(value(&points, "hw.power", &[("hw.id", &g1)]), 101.5));
        }
    }
}

#[test]
fn xid_79_and_48_are_counted_with_their_last_time() {
    let before = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let mut run = Run::new("devices 2\nxid 1 0 48\nxid 1 0 48\nxid 1 1 79");
    let (g0, g1) = (uuid(0), uuid(1));
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen_failed = false;
    let points = loop {
        let points = run.cycle();
        if status(&points, &g1) == vec![("failed".to_owned(), 1)] {
            seen_failed = true;
        }
        let done = select(&points, "nvidia.gpu.xid.events", &[])
            .iter()
            .map(|p| p.value.as_f64())
            .sum::<f64>()
            >= 3.0;
        if done {
            break points;
        }
        assert!(Instant::now() < deadline, "Xid events never arrived");
        std::thread::sleep(Duration::from_millis(50));
    };
    let after = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert_eq!(
        value(
            &points,
            "nvidia.gpu.xid.events",
            &[("hw.id", &g0), ("nvidia.gpu.xid.code", "48")]
        ),
        2.0
    );
    assert_eq!(
        value(
            &points,
            "nvidia.gpu.xid.events",
            &[("hw.id", &g1), ("nvidia.gpu.xid.code", "79")]
        ),
        1.0
    );
    // Xid 48 never happened on GPU 1: its series is there at 0 (it was from discovery on),
    // with no last time.
    assert_eq!(
        value(
            &points,
            "nvidia.gpu.xid.events",
            &[("hw.id", &g1), ("nvidia.gpu.xid.code", "48")]
        ),
        0.0
    );
    assert!(!has(
        &points,
        "nvidia.gpu.xid.last_time",
        &[("hw.id", &g1), ("nvidia.gpu.xid.code", "48")]
    ));
    for (g, code) in [(&g0, "48"), (&g1, "79")] {
        let t = value(
            &points,
            "nvidia.gpu.xid.last_time",
            &[("hw.id", g), ("nvidia.gpu.xid.code", code)],
        );
        assert!(
            t >= before.floor() && t <= after + 1.0,
            "{t} not in [{before}, {after}]"
        );
    }
    assert_eq!(
        value(
            &points,
            "hw.errors",
            &[("hw.id", &g0), ("error.type", "xid")]
        ),
        2.0
    );
    // Xid 79 (fell off the bus) reports the GPU as failed in the cycle that saw it.
    assert!(seen_failed || status(&points, &g1) == vec![("failed".to_owned(), 1)]);
    assert_eq!(status(&points, &g0), vec![("ok".to_owned(), 1)]);
    // It answers again afterwards, so it is ok again; the counters stay.
    let next = run.cycle();
    assert_eq!(status(&next, &g1), vec![("ok".to_owned(), 1)]);
    assert_eq!(
        value(
            &next,
            "nvidia.gpu.xid.events",
            &[("hw.id", &g1), ("nvidia.gpu.xid.code", "79")]
        ),
        1.0
    );
}

#[test]
fn mig_instances_are_reported_with_their_parent() {
    let mut run = Run::new("devices 2\ndev * gpm 1\ndev 0 mig 2");
    run.cycle();
    let points = run.cycle(); // GPM needs two samples
    let parent = uuid(0);
    let devices = run.inventory.devices();
    assert_eq!(devices.len(), 4, "{devices:#?}");
    for k in 0..2 {
        let id = mig_uuid(0, k);
        let gi = (k + 1).to_string();
        assert!(
            devices
                .iter()
                .any(|d| d.uuid == id && d.parent_uuid.as_deref() == Some(parent.as_str()))
        );
        assert_eq!(
            value(
                &points,
                "nvidia.gpu.mig.info",
                &[
                    ("hw.id", &id),
                    ("hw.parent", &parent),
                    ("nvidia.gpu.mig.profile", "3g.40gb"),
                    ("nvidia.gpu.mig.gpu_instance_id", &gi),
                    ("nvidia.gpu.mig.compute_instance_id", "0"),
                ]
            ),
            1.0
        );
        assert!(close(
            value(
                &points,
                "hw.gpu.memory.usage",
                &[("hw.id", &id), ("hw.parent", &parent)]
            ),
            (k as f64 + 1.0) * GIB / 2.0
        ));
        assert!(close(
            value(&points, "hw.gpu.memory.limit", &[("hw.id", &id)]),
            40.0 * GIB
        ));
        assert_eq!(status(&points, &id), vec![("ok".to_owned(), 1)]);
        // GPM per MIG instance.
        assert!(close(
            value(&points, "nvidia.gpu.sm.activity", &[("hw.id", &id)]),
            0.2 + 0.1 * k as f64
        ));
    }
    // GPM on the whole GPUs, as ratios.
    for i in 0..2 {
        let id = uuid(i);
        let f = i as f64;
        assert!(close(
            value(&points, "nvidia.gpu.sm.activity", &[("hw.id", &id)]),
            0.50 + 0.01 * f
        ));
        assert!(close(
            value(&points, "nvidia.gpu.sm.occupancy", &[("hw.id", &id)]),
            0.30 + 0.01 * f
        ));
        assert!(close(
            value(&points, "nvidia.gpu.tensor.activity", &[("hw.id", &id)]),
            0.20 + 0.01 * f
        ));
        assert!(close(
            value(&points, "nvidia.gpu.dram.activity", &[("hw.id", &id)]),
            0.10 + 0.01 * f
        ));
    }
    // The parent GPU has no hw.parent; GPU 1 has no MIG instances.
    assert!(
        attr(
            select(&points, "hw.power", &[("hw.id", &parent)])[0],
            "hw.parent"
        )
        .is_none()
    );
    assert_eq!(select(&points, "nvidia.gpu.mig.info", &[]).len(), 2);
}

#[test]
fn a_hung_call_is_abandoned_counted_and_the_cycle_goes_on() {
    let mut run = Run::with(
        "devices 2\ndev 0 sleep nvmlDeviceGetPowerUsage 30000",
        |c| {
            c.call_timeout = Duration::from_secs(1);
            c.budget = Duration::from_secs(8);
        },
    );
    let (g0, g1) = (uuid(0), uuid(1));
    let started = Instant::now();
    let points = run.cycle();
    // Well before the 30 s the call sleeps: the cycle did not wait for it.
    assert!(started.elapsed() < Duration::from_secs(15));
    assert_eq!(
        value(
            &points,
            "otel_gpu_receiver.nvml.timeouts",
            &[("nvml.call", "nvmlDeviceGetPowerUsage")]
        ),
        1.0
    );
    // Without the hung reading, and with every other reading of the same GPU,
    // including those made after it.
    assert!(!has(&points, "hw.power", &[("hw.id", &g0)]));
    assert!(has(&points, "hw.energy", &[("hw.id", &g0)]));
    assert!(has(
        &points,
        "nvidia.gpu.clock.frequency",
        &[("hw.id", &g0)]
    ));
    assert!(has(
        &points,
        "nvidia.gpu.performance_state",
        &[("hw.id", &g0)]
    ));
    assert!(close(value(&points, "hw.power", &[("hw.id", &g1)]), 101.5));
    // While the worker is still stuck in it, the call is not made again: the next
    // cycle neither waits for it nor counts another timeout.
    let started = Instant::now();
    let points = run.cycle();
    assert!(started.elapsed() < Duration::from_secs(15));
    assert_eq!(
        value(
            &points,
            "otel_gpu_receiver.nvml.timeouts",
            &[("nvml.call", "nvmlDeviceGetPowerUsage")]
        ),
        1.0
    );
    assert!(has(&points, "hw.energy", &[("hw.id", &g0)]));
    assert_eq!(run.session.timeouts(), vec![("nvmlDeviceGetPowerUsage", 1)]);
    // One worker abandoned in the hung call, one that took over.
    assert_eq!(run.session.workers_started(), 2);
}

#[test]
fn a_missing_library_means_no_gpu_readings_and_no_failure() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = GpuConfig {
        nvml_lib: Some(dir.path().join("libnvidia-ml.so.1")),
        ..GpuConfig::default()
    };
    let inventory = Inventory::default();
    let mut session = GpuSession::open(cfg, inventory.clone());
    assert!(!session.is_loaded());
    for _ in 0..2 {
        let mut p = Points::default();
        session.collect(&mut p);
        let points = p.into_vec();
        // No GPU series, only the source's own: its state says why.
        assert!(
            points
                .iter()
                .all(|p| p.name.starts_with("otel_gpu_receiver.")),
            "{points:#?}"
        );
        assert_eq!(source_state(&points), "no_library");
        assert_eq!(value(&points, "otel_gpu_receiver.gpu.devices", &[]), 0.0);
    }
    // One failed attempt, counted (the backoff's first wait is 1 s).
    let mut p = Points::default();
    session.collect(&mut p);
    assert_eq!(
        value(
            &p.into_vec(),
            "otel_gpu_receiver.nvml.errors",
            &[
                ("nvml.call", "nvmlInit_v2"),
                ("error.type", "library_not_found")
            ]
        ),
        1.0
    );
    assert_eq!(inventory.state(), Some(SourceState::NoLibrary));
    assert!(
        inventory
            .degraded()
            .is_some_and(|d| d.contains("no_library"))
    );
}

#[test]
fn a_driver_that_is_not_loaded_means_host_only() {
    // nvmlInit_v2 answers NVML_ERROR_DRIVER_NOT_LOADED.
    let mut run = Run::new("devices 2\ninit_error 9");
    assert!(!run.session.is_loaded());
    let points = run.cycle();
    assert!(
        points
            .iter()
            .all(|p| p.name.starts_with("otel_gpu_receiver.")),
        "{points:#?}"
    );
    assert_eq!(source_state(&points), "no_driver");
    assert_eq!(
        value(
            &points,
            "otel_gpu_receiver.nvml.errors",
            &[
                ("nvml.call", "nvmlInit_v2"),
                ("error.type", "driver_not_loaded")
            ]
        ),
        1.0
    );
}

#[test]
fn per_process_memory_and_utilization_are_attributed_to_pid_and_name() {
    // pids above Linux's pid_max, so /proc has none and the name comes from NVML.
    let script = "devices 2\n\
                  dev 0 proc 4194401 1073741824 55 20 trainer\n\
                  dev 0 proc 4194402 536870912 5 1 notebook\n\
                  dev 1 proc 4194403 1073741824 70 30 infer\n\
                  dev 1 proc 4194403 1073741824 70 30 infer";
    let mut run = Run::with(script, |c| c.per_process = true);
    let points = run.cycle();
    for (pid, name, gpu, bytes, sm) in [
        ("4194401", "trainer", 0, GIB, 0.55),
        ("4194402", "notebook", 0, GIB / 2.0, 0.05),
        ("4194403", "infer", 1, 2.0 * GIB, 0.70),
    ] {
        let id = uuid(gpu);
        let with = [
            ("process.pid", pid),
            ("process.executable.name", name),
            ("hw.id", id.as_str()),
        ];
        assert!(close(
            value(&points, "process.gpu.memory.usage", &with),
            bytes
        ));
        let mut util = with.to_vec();
        util.push(("hw.gpu.task", "general"));
        assert!(close(value(&points, "process.gpu.utilization", &util), sm));
    }
    // A pid listed twice (one entry per MIG instance, say) is one series, summed.
    assert_eq!(select(&points, "process.gpu.memory.usage", &[]).len(), 3);
    assert_eq!(
        select(
            &points,
            "process.gpu.utilization",
            &[("process.pid", "4194403"), ("hw.gpu.task", "general")]
        )
        .len(),
        1
    );

    // Opt-in: without --per-process there are no per-process series.
    let mut off = Run::new(script);
    let points = off.cycle();
    assert!(!points.iter().any(|p| p.name.starts_with("process.gpu.")));
    assert_eq!(
        off.fake.count("nvmlDeviceGetComputeRunningProcesses_v3", 0),
        0
    );
}

#[test]
fn pending_remaps_predict_failure_and_hardware_slowdown_degrades() {
    let mut run = Run::new(
        "devices 4\n\
         dev 1 remap_pending 1\n\
         dev 2 throttle 8\n\
         dev 3 pages_pending 1\n\
         dev 0 nvlinks 2",
    );
    let points = run.cycle();
    assert_eq!(status(&points, &uuid(0)), vec![("ok".to_owned(), 1)]);
    assert_eq!(
        status(&points, &uuid(1)),
        vec![("predicted_failure".to_owned(), 1)]
    );
    assert_eq!(status(&points, &uuid(2)), vec![("degraded".to_owned(), 1)]);
    assert_eq!(
        status(&points, &uuid(3)),
        vec![("predicted_failure".to_owned(), 1)]
    );
    let id2 = uuid(2);
    assert_eq!(
        value(
            &points,
            "nvidia.gpu.throttle.active",
            &[
                ("hw.id", &id2),
                ("nvidia.gpu.throttle.reason", "hw_slowdown")
            ]
        ),
        1.0
    );
    // NVLink per link and direction, KiB → bytes.
    let id0 = uuid(0);
    for (link, tx, rx) in [("0", 1000.0, 2000.0), ("1", 2000.0, 4000.0)] {
        assert!(close(
            value(
                &points,
                "nvidia.gpu.nvlink.io",
                &[
                    ("hw.id", &id0),
                    ("nvidia.gpu.nvlink.link", link),
                    ("network.io.direction", "transmit")
                ]
            ),
            tx * 1024.0
        ));
        assert!(close(
            value(
                &points,
                "nvidia.gpu.nvlink.io",
                &[
                    ("hw.id", &id0),
                    ("nvidia.gpu.nvlink.link", link),
                    ("network.io.direction", "receive")
                ]
            ),
            rx * 1024.0
        ));
    }
    assert!(!has(
        &points,
        "nvidia.gpu.nvlink.io",
        &[("hw.id", &uuid(1))]
    ));
}

#[test]
fn a_gpu_that_appears_later_is_discovered() {
    let mut run = Run::new("devices 1\ndevices_at 3 2");
    assert_eq!(status(&run.cycle(), &uuid(1)), vec![]);
    assert_eq!(status(&run.cycle(), &uuid(1)), vec![]);
    let points = run.cycle();
    assert_eq!(status(&points, &uuid(1)), vec![("ok".to_owned(), 1)]);
    assert!(has(&points, "hw.power", &[("hw.id", &uuid(1))]));
    assert_eq!(run.inventory.devices().len(), 2);
}

#[test]
fn a_gpu_that_drops_off_the_list_is_failed_until_it_comes_back() {
    // GPU 2 is not enumerated in cycles 3 and 4.
    let mut run = Run::new("devices 3\ndevices_at 3 2\ndevices_at 5 3");
    let g2 = uuid(2);
    for cycle in 1..=6 {
        let points = run.cycle();
        if (3..5).contains(&cycle) {
            assert_eq!(
                status(&points, &g2),
                vec![("failed".to_owned(), 1)],
                "cycle {cycle}"
            );
            assert!(
                !has(&points, "hw.power", &[("hw.id", &g2)]),
                "cycle {cycle}"
            );
        } else {
            assert_eq!(
                status(&points, &g2),
                vec![("ok".to_owned(), 1)],
                "cycle {cycle}"
            );
            assert!(close(value(&points, "hw.power", &[("hw.id", &g2)]), 102.5));
        }
        assert_eq!(
            status(&points, &uuid(0)),
            vec![("ok".to_owned(), 1)],
            "cycle {cycle}"
        );
    }
    assert_eq!(run.inventory.devices().len(), 3);
}

#[test]
fn a_hung_device_lookup_is_abandoned_and_the_known_gpus_still_report() {
    let mut run = Run::with("devices 2\ncount_sleep 2 30000", |c| {
        c.call_timeout = Duration::from_secs(1);
        c.budget = Duration::from_secs(8);
    });
    run.cycle();
    let started = Instant::now();
    let points = run.cycle(); // nvmlDeviceGetCount_v2 hangs for 30 s
    assert!(started.elapsed() < Duration::from_secs(15));
    assert_eq!(
        value(
            &points,
            "otel_gpu_receiver.nvml.timeouts",
            &[("nvml.call", "nvmlDeviceGetCount_v2")]
        ),
        1.0
    );
    for i in 0..2 {
        assert_eq!(status(&points, &uuid(i)), vec![("ok".to_owned(), 1)]);
        assert!(has(&points, "hw.power", &[("hw.id", &uuid(i))]));
    }
    // The next lookup answers again.
    let points = run.cycle();
    assert!(has(&points, "hw.power", &[("hw.id", &uuid(1))]));
    assert_eq!(run.session.timeouts(), vec![("nvmlDeviceGetCount_v2", 1)]);
}

#[test]
fn while_nvml_is_hung_the_gpus_health_is_not_guessed() {
    // Every GPU's power call hangs: four abandoned workers is the limit.
    let mut run = Run::with(
        "devices 4\ndev * sleep nvmlDeviceGetPowerUsage 30000",
        |c| {
            c.call_timeout = Duration::from_secs(1);
            c.budget = Duration::from_secs(8);
        },
    );
    let started = Instant::now();
    let points = run.cycle();
    assert!(started.elapsed() < Duration::from_secs(15));
    assert_eq!(
        value(
            &points,
            "otel_gpu_receiver.nvml.timeouts",
            &[("nvml.call", "nvmlDeviceGetPowerUsage")]
        ),
        4.0
    );
    // The next cycles skip NVML until those calls return, count the skip, and report
    // no hw.status at all rather than a made-up "ok".
    let started = Instant::now();
    let points = run.cycle();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(
        value(
            &points,
            "otel_gpu_receiver.nvml.timeouts",
            &[("nvml.call", "skipped")]
        ),
        1.0
    );
    assert!(!points.iter().any(|p| p.name == "hw.status"), "{points:#?}");
    assert!(!points.iter().any(|p| p.name == "hw.power"));
    assert_eq!(run.session.workers_started(), 4);
}

#[test]
fn reconfigured_mig_instances_are_forgotten_so_the_device_table_stays_bounded() {
    // New MIG UUIDs every 3 cycles, one instance fewer every other time; rediscovery
    // every cycle, so each reconfiguration is seen.
    let mut run = Run::with("devices 1\ndev 0 mig 2\ndev 0 mig_churn 3", |c| {
        c.rediscover_every = 1;
    });
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..60 {
        let points = run.cycle();
        let devices = run.inventory.devices();
        let migs: Vec<_> = devices.iter().filter(|d| d.parent_uuid.is_some()).collect();
        assert!(migs.len() <= 2, "{devices:#?}");
        seen.extend(migs.iter().map(|d| d.uuid.clone()));
        // A vanished instance is not reported as a failed device.
        assert!(
            select(&points, "hw.status", &[("hw.state", "failed")])
                .iter()
                .all(|p| p.value == Value::Int(0)),
            "{points:#?}"
        );
        assert_eq!(
            value(&points, "otel_gpu_receiver.gpu.devices", &[]),
            devices.len() as f64
        );
    }
    assert!(seen.len() >= 20, "the MIG UUIDs changed: {seen:?}");
}

// ---------------------------------------------------------------------------------------
// Issue 13: NVML comes and goes, MIG and MPS, transient errors, Xid from 0, the budget.

/// Retries at once, so that each cycle makes one initialisation attempt.
fn no_backoff(c: &mut GpuConfig) {
    c.init_backoff = Duration::ZERO;
    c.init_backoff_max = Duration::ZERO;
}

/// The `hw.status` series that are 1, per GPU (or MIG instance) UUID.
fn states_on(points: &[Point]) -> Vec<(String, String)> {
    let mut v: Vec<_> = select(points, "hw.status", &[])
        .into_iter()
        .filter(|p| p.value == Value::Int(1))
        .map(|p| (attr(p, "hw.id").unwrap(), attr(p, "hw.state").unwrap()))
        .collect();
    v.sort();
    v
}

fn nvml_errors(points: &[Point], call: &str, kind: &str) -> f64 {
    select(
        points,
        "otel_gpu_receiver.nvml.errors",
        &[("nvml.call", call), ("error.type", kind)],
    )
    .first()
    .map_or(0.0, |p| p.value.as_f64())
}

#[test]
fn a_driver_that_loads_late_is_picked_up_by_the_retries() {
    // nvmlInit_v2 answers DRIVER_NOT_LOADED three times (the GPU Operator is still
    // installing the driver), then succeeds.
    let mut run = Run::with("devices 2\ninit_fail 3 9", no_backoff);
    assert!(!run.session.is_loaded());
    let mut states = Vec::new();
    let mut points = Vec::new();
    for cycle in 1..=4 {
        points = run.cycle();
        states.push(source_state(&points));
        if cycle < 4 {
            assert!(
                !points.iter().any(|p| p.name.starts_with("hw.")),
                "cycle {cycle}"
            );
            assert_eq!(run.inventory.state(), Some(SourceState::NoDriver));
        }
    }
    assert_eq!(states, ["no_driver", "no_driver", "no_driver", "up"]);
    assert!(run.session.is_loaded());
    assert_eq!(run.inventory.state(), Some(SourceState::Up));
    assert_eq!(run.inventory.degraded(), None);
    assert_eq!(
        states_on(&points),
        vec![(uuid(0), "ok".into()), (uuid(1), "ok".into())]
    );
    assert_eq!(run.inventory.devices().len(), 2);
    // Each failed attempt counted; one attempt per cycle (the first made when opening).
    assert_eq!(
        nvml_errors(&points, "nvmlInit_v2", "driver_not_loaded"),
        3.0
    );
    assert_eq!(run.fake.count("nvmlInit_v2", -1), 4);

    // NVML's LIBRARY_NOT_FOUND is a missing library, not a missing driver.
    let mut run = Run::with("devices 1\ninit_fail 1 12", no_backoff);
    assert_eq!(source_state(&run.cycle()), "no_library");
    let points = run.cycle();
    assert_eq!(source_state(&points), "up");
    assert_eq!(states_on(&points), vec![(uuid(0), "ok".into())]);
}

#[test]
fn a_library_that_appears_late_is_loaded() {
    let fake = FakeNvml::new("devices 1");
    let dir = tempfile::tempdir().unwrap();
    let lib = dir.path().join("libnvidia-ml.so.1");
    let inventory = Inventory::default();
    let mut cfg = GpuConfig {
        nvml_lib: Some(lib.clone()),
        ..GpuConfig::default()
    };
    no_backoff(&mut cfg);
    let mut session = GpuSession::open(cfg, inventory.clone());
    let mut cycle = || {
        let mut p = Points::default();
        session.collect(&mut p);
        p.into_vec()
    };
    for _ in 0..2 {
        let points = cycle();
        assert_eq!(source_state(&points), "no_library");
        assert!(!points.iter().any(|p| p.name.starts_with("hw.")));
    }
    assert!(inventory.degraded().is_some());
    // The driver container mounts the library.
    std::fs::copy(&fake.lib, &lib).unwrap();
    std::fs::copy(
        fake.dir.path().join("fake_nvml.script"),
        dir.path().join("fake_nvml.script"),
    )
    .unwrap();
    let points = cycle();
    assert_eq!(source_state(&points), "up");
    assert_eq!(states_on(&points), vec![(uuid(0), "ok".into())]);
    assert!(has(&points, "hw.power", &[("hw.id", &uuid(0))]));
    assert_eq!(inventory.degraded(), None);
}

#[test]
fn while_the_driver_is_missing_attempts_back_off() {
    // 100 ms, 200 ms, then 400 ms between attempts, against a cycle every ~20 ms.
    let mut run = Run::with("devices 1\ninit_error 9", |c| {
        c.init_backoff = Duration::from_millis(100);
        c.init_backoff_max = Duration::from_millis(400);
    });
    let started = Instant::now();
    let mut cycles = 0;
    while started.elapsed() < Duration::from_millis(1500) {
        assert_eq!(source_state(&run.cycle()), "no_driver");
        cycles += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    // Attempts at about 0, 0.1, 0.3, 0.7 and 1.1 s.
    let attempts = run.fake.count("nvmlInit_v2", -1);
    assert!(
        (3..=7).contains(&attempts),
        "{attempts} attempts in {cycles} cycles"
    );
    assert!(cycles >= 20, "{cycles}");
}

#[test]
fn a_driver_that_goes_away_mid_run_is_initialised_again_when_it_returns() {
    // From cycle 3 every call answers UNINITIALIZED (the driver was unloaded), and
    // nvmlInit_v2 answers DRIVER_NOT_LOADED twice before the driver is back.
    let mut run = Run::with("devices 2\ndriver_gone 3 2 1", no_backoff);
    let mut seen = Vec::new();
    let mut energy = Vec::new();
    let mut last = Vec::new();
    for _ in 1..=7 {
        let points = run.cycle();
        seen.push((source_state(&points), states_on(&points).len()));
        if let Some(p) = select(&points, "hw.energy", &[("hw.id", &uuid(0))]).first() {
            energy.push(p.value.as_f64());
        }
        last = points;
    }
    let expect: Vec<(String, usize)> = [
        ("up", 2),
        ("up", 2),
        ("no_driver", 0),
        ("no_driver", 0),
        ("no_driver", 0),
        ("up", 2),
        ("up", 2),
    ]
    .into_iter()
    .map(|(s, n)| (s.to_owned(), n))
    .collect();
    assert_eq!(seen, expect);
    // The GPUs were looked up again with the new library state, and their counters go on.
    assert_eq!(run.inventory.devices().len(), 2);
    assert_eq!(energy.len(), 4, "{energy:?}");
    assert!(energy.windows(2).all(|w| w[0] < w[1]), "{energy:?}");
    assert_eq!(
        states_on(&last),
        vec![(uuid(0), "ok".into()), (uuid(1), "ok".into())]
    );
    assert_eq!(
        value(
            &last,
            "hw.errors",
            &[("hw.id", &uuid(1)), ("error.type", "xid")]
        ),
        0.0
    );
    // The loss and the refused attempts were counted.
    assert_eq!(
        nvml_errors(&last, "nvmlDeviceGetCount_v2", "uninitialized"),
        1.0
    );
    assert_eq!(nvml_errors(&last, "nvmlInit_v2", "driver_not_loaded"), 2.0);
    assert_eq!(run.fake.count("nvmlInit_v2", -1), 4);
}

#[test]
fn a_call_that_finds_the_driver_gone_stops_the_cycle_and_nvml_is_initialised_again() {
    // GPU 1's power reading answers DRIVER_NOT_LOADED in cycle 3 only.
    let mut run = Run::with(
        "devices 2\ndev 1 fail nvmlDeviceGetPowerUsage 9 3 4",
        no_backoff,
    );
    run.cycle();
    run.cycle();
    let points = run.cycle();
    assert_eq!(source_state(&points), "no_driver");
    // What was read before is kept; health is not guessed.
    assert!(has(&points, "hw.power", &[("hw.id", &uuid(0))]));
    assert!(states_on(&points).is_empty());
    assert_eq!(
        nvml_errors(&points, "nvmlDeviceGetPowerUsage", "driver_not_loaded"),
        1.0
    );
    // The calls after it were not made: 36 errors would have followed otherwise.
    assert!(!has(
        &points,
        "nvidia.gpu.performance_state",
        &[("hw.id", &uuid(1))]
    ));
    let points = run.cycle();
    assert_eq!(source_state(&points), "up");
    assert_eq!(
        states_on(&points),
        vec![(uuid(0), "ok".into()), (uuid(1), "ok".into())]
    );
    assert!(has(&points, "hw.power", &[("hw.id", &uuid(1))]));
    assert_eq!(run.fake.count("nvmlInit_v2", -1), 2);
}

#[test]
fn a_mig_instance_removed_by_a_reconfiguration_is_removed_not_failed() {
    // At cycle 3 GPU 0 goes from two MIG instances to one.
    let mut run = Run::new("devices 1\ndev 0 mig 2\nmig_at 3 0 1");
    let (m0, m1) = (mig_uuid(0, 0), mig_uuid(0, 1));
    for _ in 0..2 {
        let points = run.cycle();
        assert_eq!(
            states_on(&points),
            vec![
                (uuid(0), "ok".into()),
                (m0.clone(), "ok".into()),
                (m1.clone(), "ok".into())
            ]
        );
    }
    // Cycle 3: its handle no longer answers; it is neither ok nor failed.
    let points = run.cycle();
    assert_eq!(
        states_on(&points),
        vec![(uuid(0), "ok".into()), (m0.clone(), "ok".into())]
    );
    // Cycle 4 looks the devices up again: it is gone for good.
    for cycle in 4..=9 {
        let points = run.cycle();
        assert!(
            !points
                .iter()
                .any(|p| attr(p, "hw.id").as_deref() == Some(m1.as_str())),
            "cycle {cycle}"
        );
        assert!(
            !select(&points, "hw.status", &[("hw.state", "failed")])
                .iter()
                .any(|p| p.value == Value::Int(1)),
            "cycle {cycle}"
        );
        assert_eq!(value(&points, "otel_gpu_receiver.gpu.devices", &[]), 2.0);
        assert_eq!(select(&points, "nvidia.gpu.mig.info", &[]).len(), 1);
        assert!(
            !points
                .iter()
                .any(|p| p.name == "otel_gpu_receiver.nvml.errors"),
            "a removed instance is not an error"
        );
        if cycle == 5 {
            // (The fake's counts are written as a cycle starts: these are up to cycle 4.)
            assert_eq!(run.fake.count("nvmlDeviceGetHandleByIndex_v2", -1), 2);
        }
    }
    // No full rediscovery every cycle: the devices were looked up at cycle 1 and 4 only.
    assert_eq!(run.fake.count("nvmlDeviceGetHandleByIndex_v2", -1), 2);
    assert_eq!(run.inventory.devices().len(), 2);
}

#[test]
fn not_supported_is_asked_again_at_the_scheduled_rediscovery() {
    // The power reading answers NOT_SUPPORTED in cycles 1 and 2 (a firmware that is
    // still coming up, say), and works from cycle 3. Rediscovery every 4 cycles.
    let mut run = Run::with("devices 1\ndev 0 fail nvmlDeviceGetPowerUsage 3 0 3", |c| {
        c.rediscover_every = 4
    });
    for cycle in 1..=3 {
        assert!(
            !has(&run.cycle(), "hw.power", &[("hw.id", &uuid(0))]),
            "cycle {cycle}"
        );
    }
    // Remembered: asked once in cycles 1 to 3.
    let points = run.cycle();
    assert_eq!(run.fake.count("nvmlDeviceGetPowerUsage", 0), 1);
    // Cycle 4 is a scheduled rediscovery: asked again, and it answers.
    assert!(close(
        value(&points, "hw.power", &[("hw.id", &uuid(0))]),
        100.5
    ));
    run.cycle();
    assert_eq!(run.fake.count("nvmlDeviceGetPowerUsage", 0), 2);
}

#[test]
fn a_gpu_that_leaves_mig_mode_reports_its_utilization_again() {
    // MIG mode (no utilisation rates) until cycle 3, when it is switched off.
    let mut run = Run::new("devices 1\ndev 0 mig 2\nmig_at 3 0 0");
    let general = |points: &[Point]| {
        select(
            points,
            "hw.gpu.utilization",
            &[("hw.id", &uuid(0)), ("hw.gpu.task", "general")],
        )
        .len()
    };
    for _ in 0..3 {
        assert_eq!(general(&run.cycle()), 0);
    }
    let points = run.cycle();
    assert_eq!(general(&points), 1);
    assert!(close(
        value(
            &points,
            "hw.gpu.utilization",
            &[("hw.id", &uuid(0)), ("hw.gpu.task", "general")]
        ),
        0.10
    ));
    assert_eq!(states_on(&points), vec![(uuid(0), "ok".into())]);
    assert!(select(&points, "nvidia.gpu.mig.info", &[]).is_empty());
}

/// pid → hw.id of the process.gpu.memory.usage series.
fn process_gpu(points: &[Point]) -> Vec<(String, String, f64)> {
    let mut v: Vec<_> = select(points, "process.gpu.memory.usage", &[])
        .into_iter()
        .map(|p| {
            (
                attr(p, "process.pid").unwrap(),
                attr(p, "hw.id").unwrap(),
                p.value.as_f64(),
            )
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

const MIG_PROCS: &str = "devices 1\n\
                         dev 0 mig 2\n\
                         dev 0 proc 4194401 1073741824 0 0 trainer 2 0\n\
                         dev 0 proc 4194402 536870912 0 0 infer 1 0\n\
                         dev 0 mps 4194403 268435456 client 2 0";

#[test]
fn processes_in_mig_instances_and_mps_clients_carry_the_instance_uuid() {
    let expect = vec![
        ("4194401".to_owned(), mig_uuid(0, 1), GIB),
        ("4194402".to_owned(), mig_uuid(0, 0), GIB / 2.0),
        ("4194403".to_owned(), mig_uuid(0, 1), GIB / 4.0),
    ];
    let mut run = Run::with(MIG_PROCS, |c| c.per_process = true);
    assert_eq!(process_gpu(&run.cycle()), expect);

    // Without the privileges for the GPU's own list, each instance lists its processes.
    let mut run = Run::with(
        &format!("{MIG_PROCS}\ndev 0 fail nvmlDeviceGetComputeRunningProcesses_v3 4"),
        |c| c.per_process = true,
    );
    let points = run.cycle();
    assert_eq!(process_gpu(&points), expect);
    assert!(
        !points
            .iter()
            .any(|p| p.name == "otel_gpu_receiver.nvml.errors")
    );

    // MPS clients are asked for once where NVML does not support them.
    let mut run = Run::with(
        &format!("{MIG_PROCS}\ndev 0 fail nvmlDeviceGetMPSComputeRunningProcesses_v3 3"),
        |c| c.per_process = true,
    );
    for _ in 0..3 {
        assert_eq!(process_gpu(&run.cycle()), expect[..2].to_vec());
    }
    run.cycle();
    assert_eq!(
        run.fake
            .count("nvmlDeviceGetMPSComputeRunningProcesses_v3", 0),
        1
    );
}

#[test]
fn a_process_in_a_mig_instance_created_since_discovery_is_found_at_the_next_cycle() {
    // A third instance (gpu instance 3) is created at cycle 3, and a process starts in it.
    // Another process claims an instance (5) that NVML never lists.
    let mut run = Run::with(
        "devices 1\n\
         dev 0 mig 2\n\
         mig_at 3 0 3\n\
         dev 0 proc 4194404 1048576 0 0 late 3 0 3\n\
         dev 0 proc 4194405 2048 0 0 ghost 5 0",
        |c| c.per_process = true,
    );
    let ghost = ("4194405".to_owned(), uuid(0), 2048.0);
    for _ in 0..2 {
        assert_eq!(process_gpu(&run.cycle()), vec![ghost.clone()]);
    }
    // Cycle 3: the instance is not known yet; the process is reported on its GPU.
    let points = run.cycle();
    assert_eq!(
        process_gpu(&points),
        vec![("4194404".to_owned(), uuid(0), 1048576.0), ghost.clone()]
    );
    // Cycle 4 looked the devices up again.
    let points = run.cycle();
    assert_eq!(
        process_gpu(&points),
        vec![
            ("4194404".to_owned(), mig_uuid(0, 2), 1048576.0),
            ghost.clone()
        ]
    );
    assert_eq!(value(&points, "otel_gpu_receiver.gpu.devices", &[]), 4.0);
    assert_eq!(
        states_on(&points).iter().filter(|(_, s)| s == "ok").count(),
        4
    );
    // Each unknown instance asked for one rediscovery (the ghost's at cycle 2, the new
    // instance's at cycle 4), not one per cycle.
    for _ in 5..=9 {
        run.cycle();
    }
    assert_eq!(run.fake.count("nvmlDeviceGetHandleByIndex_v2", -1), 3);
}

#[test]
fn fields_that_fail_on_their_own_during_a_reset_are_asked_again_and_counted() {
    // GPU 0: every field answers GPU_IS_LOST on its own in cycles 2 and 3 (a reset),
    // while the call itself succeeds. GPU 1: every field is NOT_SUPPORTED then.
    let mut run = Run::new(
        "devices 2\n\
         dev 0 nvlinks 2\n\
         dev 0 field_error * 15 2 4\n\
         dev 1 field_error * 3 2 4",
    );
    let field_series = |points: &[Point], id: &str| {
        let mut n = 0;
        for (name, with) in [
            ("hw.temperature", vec![("hw.sensor_location", "memory")]),
            ("hw.gpu.io", vec![]),
            ("nvidia.gpu.memory.remapped_rows", vec![]),
            ("nvidia.gpu.memory.retired_pages", vec![]),
            ("nvidia.gpu.memory.remap_failure", vec![]),
        ] {
            let mut with = with;
            with.push(("hw.id", id));
            n += select(points, name, &with).len();
        }
        n
    };
    let nvlink = |points: &[Point]| select(points, "nvidia.gpu.nvlink.io", &[]).len();
    // Memory temperature, PCIe bytes ×2, remapped rows ×2, remap failure, retired
    // pages ×2 (the pending-remap field only decides hw.status).
    let points = run.cycle();
    assert_eq!(field_series(&points, &uuid(0)), 8);
    assert_eq!(field_series(&points, &uuid(1)), 8);
    assert_eq!(nvlink(&points), 4);
    for cycle in 2..=3 {
        let points = run.cycle();
        assert_eq!(field_series(&points, &uuid(0)), 0, "cycle {cycle}");
        assert_eq!(field_series(&points, &uuid(1)), 0, "cycle {cycle}");
        // The link count failed too: no NVLink this cycle.
        assert_eq!(nvlink(&points), 0, "cycle {cycle}");
        // Nothing else of the GPUs is affected.
        assert_eq!(
            states_on(&points),
            vec![(uuid(0), "ok".into()), (uuid(1), "ok".into())]
        );
        // 9 fields and the link count of GPU 0 per cycle; GPU 1's NOT_SUPPORTED is
        // not an error.
        assert_eq!(
            nvml_errors(&points, "nvmlDeviceGetFieldValues", "gpu_lost"),
            10.0 * f64::from(cycle - 1),
            "cycle {cycle}"
        );
        assert_eq!(
            nvml_errors(&points, "nvmlDeviceGetFieldValues", "not_supported"),
            0.0
        );
    }
    // Nothing was remembered as not supported: all back at cycle 4.
    let points = run.cycle();
    assert_eq!(field_series(&points, &uuid(0)), 8);
    assert_eq!(field_series(&points, &uuid(1)), 8);
    assert_eq!(nvlink(&points), 4);
    assert_eq!(
        select(&points, "nvidia.gpu.nvlink.errors", &[("hw.id", &uuid(0))]).len(),
        8
    );
}

#[test]
fn nvlink_errors_aggregate_ecc_and_remap_failure_are_read() {
    let mut run = Run::new(
        "devices 2\n\
         dev 0 nvlinks 2\n\
         dev 0 nvlink_errors 3 1 20 5\n\
         dev 1 remap_failure 1\n\
         dev 1 retired_dbe 2",
    );
    let points = run.cycle();
    let id0 = uuid(0);
    for (link, mul) in [("0", 1.0), ("1", 2.0)] {
        for (kind, base) in [
            ("replay", 3.0),
            ("recovery", 1.0),
            ("crc_flit", 20.0),
            ("crc_data", 5.0),
        ] {
            assert_eq!(
                value(
                    &points,
                    "nvidia.gpu.nvlink.errors",
                    &[
                        ("hw.id", &id0),
                        ("nvidia.gpu.nvlink.link", link),
                        ("error.type", kind)
                    ]
                ),
                base * mul
            );
        }
    }
    // A GPU without NVLink has no NVLink series.
    assert!(!has(
        &points,
        "nvidia.gpu.nvlink.errors",
        &[("hw.id", &uuid(1))]
    ));
    // A failed row remap: the flag, and the GPU predicted to fail.
    let id1 = uuid(1);
    assert_eq!(
        value(
            &points,
            "nvidia.gpu.memory.remap_failure",
            &[("hw.id", &id1)]
        ),
        1.0
    );
    assert_eq!(
        value(
            &points,
            "nvidia.gpu.memory.retired_pages",
            &[
                ("hw.id", &id1),
                ("nvidia.gpu.memory.retirement.cause", "double_bit")
            ]
        ),
        2.0
    );
    assert_eq!(
        status(&points, &id1),
        vec![("predicted_failure".to_owned(), 1)]
    );
}

#[test]
fn process_utilization_follows_the_last_seen_timestamp_and_keeps_each_pids_latest_sample() {
    // The first two queries fail, so the third one (last seen: 0) gets every sample the
    // driver kept: three per process, the older ones at half the utilisation.
    let mut run = Run::with(
        "devices 2\n\
         dev 0 proc 4194401 1073741824 60 20 trainer\n\
         dev 0 fail nvmlDeviceGetProcessUtilization 999 1 3",
        |c| c.per_process = true,
    );
    let util = |points: &[Point]| {
        select(
            points,
            "process.gpu.utilization",
            &[("process.pid", "4194401"), ("hw.gpu.task", "general")],
        )
        .iter()
        .map(|p| p.value.as_f64())
        .collect::<Vec<_>>()
    };
    for _ in 0..2 {
        assert!(util(&run.cycle()).is_empty());
    }
    // Then one new sample per cycle, and always the latest value.
    for cycle in 3..=6 {
        let points = run.cycle();
        assert_eq!(util(&points), [0.60], "cycle {cycle}");
        // GPU 1 runs nothing: the driver answers NOT_FOUND, which is no error.
        assert!(!has(
            &points,
            "process.gpu.utilization",
            &[("hw.id", &uuid(1))]
        ));
        assert_eq!(
            nvml_errors(&points, "nvmlDeviceGetProcessUtilization", "unknown"),
            2.0
        );
        assert_eq!(
            nvml_errors(&points, "nvmlDeviceGetProcessUtilization", "not_found"),
            0.0
        );
    }
}

#[test]
fn xid_counters_start_at_0_when_a_gpu_is_discovered() {
    let mut run = Run::new("devices 2\nxid 3 1 79");
    let points = run.cycle();
    for i in 0..2 {
        let id = uuid(i);
        let codes: Vec<String> = select(&points, "nvidia.gpu.xid.events", &[("hw.id", &id)])
            .iter()
            .map(|p| {
                assert_eq!(p.value, Value::Int(0));
                attr(p, "nvidia.gpu.xid.code").unwrap()
            })
            .collect();
        for code in [
            "13", "31", "43", "48", "61", "62", "63", "64", "74", "79", "92", "94", "95",
        ] {
            assert!(codes.iter().any(|c| c == code), "{code} not in {codes:?}");
        }
        assert_eq!(
            value(
                &points,
                "hw.errors",
                &[("hw.id", &id), ("error.type", "xid")]
            ),
            0.0
        );
    }
    assert!(select(&points, "nvidia.gpu.xid.last_time", &[]).is_empty());
    // Then the first Xid 79 on GPU 1 turns its 0 into 1.
    let deadline = Instant::now() + Duration::from_secs(20);
    let points = loop {
        let points = run.cycle();
        if value(
            &points,
            "nvidia.gpu.xid.events",
            &[("hw.id", &uuid(1)), ("nvidia.gpu.xid.code", "79")],
        ) == 1.0
        {
            break points;
        }
        assert!(Instant::now() < deadline, "the Xid never arrived");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        value(
            &points,
            "hw.errors",
            &[("hw.id", &uuid(1)), ("error.type", "xid")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &points,
            "nvidia.gpu.xid.events",
            &[("hw.id", &uuid(0)), ("nvidia.gpu.xid.code", "79")]
        ),
        0.0
    );
}

#[test]
fn when_the_budget_runs_out_every_gpu_still_reports_its_health() {
    // Each power reading takes 400 ms: the 1 s budget covers two or three of them.
    let mut run = Run::with("devices 4\ndev * sleep nvmlDeviceGetPowerUsage 400", |c| {
        c.call_timeout = Duration::from_secs(1);
        c.budget = Duration::from_secs(1);
    });
    let started = Instant::now();
    let points = run.cycle();
    let took = started.elapsed();
    assert!(took < Duration::from_millis(1600), "{took:?}");
    // The health calls of every GPU came first.
    assert_eq!(states_on(&points).len(), 4, "{:?}", states_on(&points));
    assert!(states_on(&points).iter().all(|(_, s)| s == "ok"));
    // The last GPU's other readings were not reached; the overrun is counted.
    assert!(!has(&points, "hw.power", &[("hw.id", &uuid(3))]));
    assert_eq!(
        value(
            &points,
            "otel_gpu_receiver.nvml.timeouts",
            &[("nvml.call", "budget")]
        ),
        1.0
    );
    // The worker finishes the call it was in and stays usable: cycle after cycle, the
    // same worker (none dies or is given up on), every GPU's health, and the source up.
    for cycle in 2..=4 {
        std::thread::sleep(Duration::from_millis(600));
        let points = run.cycle();
        assert_eq!(states_on(&points).len(), 4, "cycle {cycle}");
        assert_eq!(source_state(&points), "up");
    }
    assert_eq!(run.session.workers_started(), 1);
}

#[test]
fn an_initialisation_that_hangs_is_abandoned_and_tried_again() {
    // The first nvmlInit_v2 takes 5 s; the call deadline is 300 ms.
    let started = Instant::now();
    let mut run = Run::with("devices 1\ninit_sleep 1 5000", |c| {
        no_backoff(c);
        c.call_timeout = Duration::from_millis(300);
        c.budget = Duration::from_secs(2);
    });
    let points = run.cycle();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(source_state(&points), "hung");
    assert_eq!(
        value(
            &points,
            "otel_gpu_receiver.nvml.timeouts",
            &[("nvml.call", "nvmlInit_v2")]
        ),
        1.0
    );
    assert_eq!(
        run.inventory.degraded().map(|d| d.contains("hung")),
        Some(true)
    );
    // The next attempt, on a fresh worker, answers.
    let points = run.cycle();
    assert_eq!(source_state(&points), "up");
    assert_eq!(states_on(&points), vec![(uuid(0), "ok".into())]);
    assert_eq!(run.session.workers_started(), 2);
}
