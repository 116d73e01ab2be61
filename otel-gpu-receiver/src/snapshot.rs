//! One collection cycle's readings. Families produce typed readings that convert to
//! [`Point`]s; the instruments read their points from the latest [`Snapshot`].

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use opentelemetry::{KeyValue, Value as AttrValue};

use crate::catalogue::{self, CATALOGUE, MetricDesc};

/// A metric value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    /// An integer reading.
    Int(i64),
    /// A floating-point reading.
    Float(f64),
}

impl Value {
    /// The value as `f64`.
    pub fn as_f64(self) -> f64 {
        match self {
            Self::Int(i) => i as f64,
            Self::Float(f) => f,
        }
    }

    /// The value as `i64` (floats are truncated).
    pub fn as_i64(self) -> i64 {
        match self {
            Self::Int(i) => i,
            Self::Float(f) => f as i64,
        }
    }
}

impl From<u64> for Value {
    fn from(v: u64) -> Self {
        Self::Int(i64::try_from(v).unwrap_or(i64::MAX))
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Self::Int(v)
    }
}

impl From<f64> for Value {
    fn from(v: f64) -> Self {
        Self::Float(v)
    }
}

/// One series' value in a snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// The catalogue name.
    pub name: &'static str,
    /// Series attributes.
    pub attributes: Vec<KeyValue>,
    /// The reading.
    pub value: Value,
}

/// Where families put their points during a cycle.
#[derive(Debug, Default)]
pub struct Points {
    points: Vec<Point>,
}

impl Points {
    /// Adds a point.
    pub fn push(&mut self, name: &'static str, attributes: Vec<KeyValue>, value: impl Into<Value>) {
        self.points.push(Point {
            name,
            attributes,
            value: value.into(),
        });
    }

    /// Number of points so far.
    pub fn len(&self) -> usize {
        self.points.len()
    }

    /// No points yet.
    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// Moves every point out of `other` into `self`.
    pub fn append(&mut self, other: &mut Points) {
        self.points.append(&mut other.points);
    }

    /// The points, in insertion order.
    pub fn into_vec(self) -> Vec<Point> {
        self.points
    }
}

/// Everything one collection cycle read, grouped by metric name.
#[derive(Debug, Clone)]
pub struct Snapshot {
    by_name: HashMap<&'static str, Vec<Point>>,
    series: usize,
    /// When the cycle that produced it finished.
    pub taken_at: SystemTime,
}

impl Default for Snapshot {
    fn default() -> Self {
        Self::new(Points::default())
    }
}

impl Snapshot {
    /// Groups `points` by metric name.
    pub fn new(points: Points) -> Self {
        let mut by_name: HashMap<&'static str, Vec<Point>> = HashMap::new();
        let series = points.len();
        for p in points.into_vec() {
            by_name.entry(p.name).or_default().push(p);
        }
        Self {
            by_name,
            series,
            taken_at: SystemTime::now(),
        }
    }

    /// The points of one metric (empty when the metric was not read this cycle).
    pub fn points(&self, name: &str) -> &[Point] {
        self.by_name.get(name).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Every point with its catalogue entry, in catalogue order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static MetricDesc, &Point)> + '_ {
        CATALOGUE
            .iter()
            .flat_map(move |d| self.points(d.name).iter().map(move |p| (d, p)))
    }

    /// Number of series (points) in the snapshot.
    pub fn series(&self) -> usize {
        self.series
    }

    /// Points whose name is not in the catalogue (a bug; tests assert it is empty).
    pub fn uncatalogued(&self) -> Vec<&'static str> {
        self.by_name
            .keys()
            .copied()
            .filter(|n| catalogue::find(n).is_none())
            .collect()
    }
}

/// String attribute values shared between cycles.
///
/// Families build their attributes afresh every cycle, with owned strings. The SDK's
/// observable instruments clone each attribute set twice per series and export (their map
/// is drained at every collect), and cloning an owned string allocates and copies it.
/// Interned values are `Arc<str>`s that the same series reuse from one cycle to the next,
/// so those clones are reference counts. Values no snapshot uses any more are dropped
/// at the next cycle, so the set follows pid and pod churn.
#[derive(Debug, Default)]
pub struct AttributeInterner {
    values: HashSet<Arc<str>>,
}

impl AttributeInterner {
    /// Replaces every string attribute value of `snapshot` with its shared copy.
    pub fn intern(&mut self, snapshot: &mut Snapshot) {
        for points in snapshot.by_name.values_mut() {
            for kv in points.iter_mut().flat_map(|p| p.attributes.iter_mut()) {
                let AttrValue::String(s) = &kv.value else {
                    continue;
                };
                let shared = match self.values.get(s.as_str()) {
                    Some(v) => v.clone(),
                    None => {
                        let v: Arc<str> = Arc::from(s.as_str());
                        self.values.insert(v.clone());
                        v
                    }
                };
                kv.value = AttrValue::String(shared.into());
            }
        }
        // Held here only: no snapshot (this one or the one it replaces) uses it.
        self.values.retain(|v| Arc::strong_count(v) > 1);
    }

    /// Distinct values held.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Nothing held.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

/// Called with every snapshot stored, on the storing (collection) thread.
type Subscriber = Box<dyn FnMut(&Snapshot) + Send>;

/// The latest snapshot, shared by the collection task (writer) and the instruments (readers).
#[derive(Clone, Default)]
pub struct SnapshotCell(Arc<Shared>);

#[derive(Default)]
struct Shared {
    latest: RwLock<Arc<Snapshot>>,
    subscribers: Mutex<Vec<Subscriber>>,
    /// Set when the SDK reads the snapshots (OTLP push): see [`AttributeInterner`].
    interner: Mutex<Option<AttributeInterner>>,
}

impl std::fmt::Debug for SnapshotCell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotCell")
            .field("series", &self.load().series())
            .finish_non_exhaustive()
    }
}

impl SnapshotCell {
    /// Swaps in a new snapshot, then hands it to the subscribers.
    pub fn store(&self, mut snapshot: Snapshot) {
        if let Some(i) = self
            .0
            .interner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()
        {
            i.intern(&mut snapshot);
        }
        let new = Arc::new(snapshot);
        *self.0.latest.write().unwrap_or_else(|e| e.into_inner()) = new.clone();
        let mut subscribers = self.0.subscribers.lock().unwrap_or_else(|e| e.into_inner());
        for s in subscribers.iter_mut() {
            s(&new);
        }
    }

    /// The latest snapshot (cheap: an `Arc` clone under a short read lock).
    pub fn load(&self) -> Arc<Snapshot> {
        self.0
            .latest
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Shares string attribute values between the snapshots stored from now on (see
    /// [`AttributeInterner`]); worth it when the SDK's instruments read them.
    pub fn share_attributes(&self) {
        self.0
            .interner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert_with(AttributeInterner::default);
    }

    /// Calls `f` with every snapshot stored from now on, on the thread that stores it,
    /// after readers can see it (the Prometheus exposition renders here, once per cycle).
    pub fn subscribe(&self, f: impl FnMut(&Snapshot) + Send + 'static) {
        self.0
            .subscribers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Box::new(f));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_groups_points_by_name_in_catalogue_order() {
        let mut p = Points::default();
        p.push("system.uptime", vec![], 5.0);
        p.push(
            "system.cpu.time",
            vec![KeyValue::new("cpu.mode", "user")],
            1.0,
        );
        let s = Snapshot::new(p);
        let names: Vec<_> = s.iter().map(|(d, _)| d.name).collect();
        assert_eq!(names, ["system.cpu.time", "system.uptime"]);
        assert_eq!(s.series(), 2);
        assert!(s.uncatalogued().is_empty());
    }

    #[test]
    fn the_cell_returns_the_latest_snapshot() {
        let cell = SnapshotCell::default();
        let mut p = Points::default();
        p.push("system.uptime", vec![], 7.0);
        cell.store(Snapshot::new(p));
        assert_eq!(
            cell.load().points("system.uptime")[0].value,
            Value::Float(7.0)
        );
    }

    #[test]
    fn shared_attributes_are_reused_between_cycles_and_dropped_when_unused() {
        let cell = SnapshotCell::default();
        cell.share_attributes();
        let cycle = |pod: &str| {
            let mut p = Points::default();
            p.push(
                "hw.power",
                vec![
                    KeyValue::new("hw.id", "GPU-0".to_owned()),
                    KeyValue::new("k8s.pod.name", pod.to_owned()),
                ],
                1.0,
            );
            Snapshot::new(p)
        };
        let value = |s: &Snapshot, i: usize| match &s.points("hw.power")[0].attributes[i].value {
            AttrValue::String(v) => v.as_str().as_ptr(),
            other => panic!("{other:?}"),
        };
        cell.store(cycle("a"));
        let first = cell.load();
        cell.store(cycle("b"));
        let second = cell.load();
        // The same value is the same allocation in both cycles; the equality is unchanged.
        assert_eq!(value(&first, 0), value(&second, 0));
        assert_eq!(
            second.points("hw.power")[0].attributes[1],
            KeyValue::new("k8s.pod.name", "b")
        );
        drop((first, second));
        cell.store(cycle("c"));
        let held = cell
            .0
            .interner
            .lock()
            .unwrap()
            .as_ref()
            .map(AttributeInterner::len);
        // GPU-0 and c, plus b of the snapshot just replaced (dropped at the next cycle).
        assert_eq!(held, Some(3));
        cell.store(cycle("c"));
        let held = cell
            .0
            .interner
            .lock()
            .unwrap()
            .as_ref()
            .map(AttributeInterner::len);
        assert_eq!(held, Some(2));
    }
}
