//! The kubelet pod-resources client: which pod and container holds which GPU.
//!
//! The kubelet serves `v1.PodResourcesLister` on a unix socket (by default
//! [`DEFAULT_SOCKET`]). We call `List` at most once per collection cycle, always under a
//! deadline, and map the device IDs it returns to GPU UUIDs.
//!
//! Device plugins name GPUs differently. NVIDIA's plugin reports UUIDs (`GPU-…`, `MIG-…`,
//! `GPU-…::3` for a time-sliced replica); others report device names (`nvidia0`, the minor
//! number of `/dev/nvidia0`) or indices. Each ID is recognised by its shape, so no flag says
//! which kind a cluster uses (dcgm-exporter needs one).
//!
//! A missing socket or a permission error is not a failure: it means "not on Kubernetes",
//! or "not given the socket", and attribution to pods is simply off (one info line).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

/// The generated pod-resources API (package `v1` of `proto/`).
#[allow(
    missing_docs,
    missing_debug_implementations,
    clippy::all,
    clippy::pedantic
)]
pub mod pb {
    tonic::include_proto!("v1");
}

use pb::pod_resources_lister_client::PodResourcesListerClient;
use pb::{ListPodResourcesRequest, ListPodResourcesResponse};

/// Where the kubelet serves the pod-resources API.
pub const DEFAULT_SOCKET: &str = "/var/lib/kubelet/pod-resources/kubelet.sock";
/// The deadline of one `List` call, connection included.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// A `List` call did not produce an answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KubeletError {
    /// The socket does not exist, or we may not open it: attribution to pods is off.
    #[error("kubelet pod-resources socket {path} is not usable")]
    Unavailable {
        /// The socket.
        path: PathBuf,
        /// Why (not found, permission denied).
        #[source]
        source: std::io::Error,
    },
    /// Connecting failed for another reason (refused, not a socket).
    #[error("connecting to the kubelet at {path}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The call ran past its deadline.
    #[error("kubelet List did not answer within {0:?}")]
    Timeout(Duration),
    /// The call failed (transport error, unparsable response, kubelet error).
    #[error("kubelet List failed")]
    Rpc(#[source] tonic::Status),
    /// The client thread is gone (it panicked or could not start).
    #[error("kubelet client thread is gone")]
    ThreadGone,
}

impl KubeletError {
    /// A short, low-cardinality name for counting (`error.type`).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Unavailable { .. } => "kubelet_unavailable",
            Self::Connect { .. } => "kubelet_connect",
            Self::Timeout(_) => "kubelet_timeout",
            Self::Rpc(_) => "kubelet_rpc",
            Self::ThreadGone => "kubelet_thread_gone",
        }
    }

    /// True when this means "no kubelet for us here", which turns attribution off quietly.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable { .. })
    }
}

/// An async pod-resources client over a unix socket.
///
/// The connection is made on the first call and kept; a failed call drops it, and the next
/// call connects again.
#[derive(Debug)]
pub struct KubeletClient {
    socket: PathBuf,
    timeout: Duration,
    client: Option<PodResourcesListerClient<Channel>>,
}

impl KubeletClient {
    /// A client for `socket` whose calls end after `timeout`.
    pub fn new(socket: impl Into<PathBuf>, timeout: Duration) -> Self {
        Self {
            socket: socket.into(),
            timeout,
            client: None,
        }
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Calls `List` once, under the deadline.
    ///
    /// # Errors
    /// [`KubeletError::Unavailable`] when the socket is missing or not permitted,
    /// [`KubeletError::Timeout`] past the deadline, otherwise [`KubeletError::Connect`] or
    /// [`KubeletError::Rpc`].
    pub async fn list(&mut self) -> Result<ListPodResourcesResponse, KubeletError> {
        let timeout = self.timeout;
        match tokio::time::timeout(timeout, self.list_inner()).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => {
                self.client = None;
                Err(e)
            }
            Err(_) => {
                self.client = None;
                Err(KubeletError::Timeout(timeout))
            }
        }
    }

    async fn list_inner(&mut self) -> Result<ListPodResourcesResponse, KubeletError> {
        if self.client.is_none() {
            self.client = Some(self.connect().await?);
        }
        let Some(client) = self.client.as_mut() else {
            return Err(KubeletError::ThreadGone);
        };
        let mut request = tonic::Request::new(ListPodResourcesRequest {});
        request.set_timeout(self.timeout);
        client
            .list(request)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|status| match status.code() {
                // The kubelet (or tonic, from the grpc-timeout header) gave up first.
                tonic::Code::DeadlineExceeded => KubeletError::Timeout(self.timeout),
                tonic::Code::Cancelled if status.message().contains("Timeout") => {
                    KubeletError::Timeout(self.timeout)
                }
                _ => KubeletError::Rpc(status),
            })
    }

    async fn connect(&self) -> Result<PodResourcesListerClient<Channel>, KubeletError> {
        let path = self.socket.clone();
        // Probe once by hand: the error kinds (not found, permission denied) are what decides
        // between "attribution off" and "a failure", and tonic would wrap them.
        if let Err(source) = tokio::net::UnixStream::connect(&path).await {
            return Err(connect_error(path, source));
        }
        // The URI is required by the API but never used: the connector dials the socket.
        // No tonic-level timeouts: `list` puts one deadline over connect and call together,
        // so that a hang anywhere is the same `Timeout`.
        let endpoint = Endpoint::from_static("http://kubelet.invalid");
        let connector = tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        });
        let channel = endpoint.connect_with_connector_lazy(connector);
        // Responses are small; the limit is a guard against a garbage length prefix.
        Ok(PodResourcesListerClient::new(channel).max_decoding_message_size(16 * 1024 * 1024))
    }
}

/// Sorts a failed connect: no socket, or no permission, means "no kubelet for us" (attribution
/// off, quietly); anything else is a failure worth counting.
fn connect_error(path: PathBuf, source: std::io::Error) -> KubeletError {
    match source.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => {
            KubeletError::Unavailable { path, source }
        }
        _ => KubeletError::Connect { path, source },
    }
}

/// What a failed call of this cycle left in the cache.
#[derive(Debug, Clone, Copy)]
enum CachedError {
    Unavailable,
    Failed(&'static str),
}

/// A [`KubeletClient`] on a thread of its own, for the synchronous collection cycle.
///
/// `List` runs at most once per cycle; later calls in the same cycle get the cached answer.
/// The caller never waits longer than the deadline, even when the kubelet hangs.
#[derive(Debug)]
pub struct KubeletSource {
    socket: PathBuf,
    timeout: Duration,
    requests: Option<mpsc::Sender<()>>,
    replies: Option<mpsc::Receiver<Result<ListPodResourcesResponse, KubeletError>>>,
    /// A call that ran past its deadline and whose answer has not arrived yet.
    in_flight: bool,
    cached: Option<(
        u64,
        Result<std::sync::Arc<ListPodResourcesResponse>, CachedError>,
    )>,
    calls: u64,
}

impl KubeletSource {
    /// A source for `socket`; nothing is started until the first [`list`](Self::list).
    pub fn new(socket: impl Into<PathBuf>, timeout: Duration) -> Self {
        Self {
            socket: socket.into(),
            timeout,
            requests: None,
            replies: None,
            in_flight: false,
            cached: None,
            calls: 0,
        }
    }

    /// How many `List` calls were made so far.
    pub fn calls(&self) -> u64 {
        self.calls
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The pod list for `cycle`: a `List` call on the first request of the cycle, the cached
    /// answer after that.
    ///
    /// # Errors
    /// See [`KubeletClient::list`]. A cached failure is returned as
    /// [`KubeletError::Unavailable`] again, or as [`KubeletError::Rpc`] with the original kind
    /// in its message.
    pub fn list(
        &mut self,
        cycle: u64,
    ) -> Result<std::sync::Arc<ListPodResourcesResponse>, KubeletError> {
        self.list_until(cycle, None)
    }

    /// Like [`list`](Self::list), waiting for the answer no later than `until`: the GPU
    /// source's budget ends there. With no time left the kubelet is not asked, and that
    /// counts as a timeout.
    ///
    /// # Errors
    /// As [`list`](Self::list).
    pub fn list_until(
        &mut self,
        cycle: u64,
        until: Option<std::time::Instant>,
    ) -> Result<std::sync::Arc<ListPodResourcesResponse>, KubeletError> {
        if let Some((c, cached)) = &self.cached
            && *c == cycle
        {
            return match cached {
                Ok(list) => Ok(list.clone()),
                Err(CachedError::Unavailable) => Err(KubeletError::Unavailable {
                    path: self.socket.clone(),
                    source: std::io::Error::other("unavailable earlier in this cycle"),
                }),
                Err(CachedError::Failed(kind)) => {
                    Err(KubeletError::Rpc(tonic::Status::unavailable(*kind)))
                }
            };
        }
        let result = self.call(until).map(std::sync::Arc::new);
        let cached = match &result {
            Ok(list) => Ok(list.clone()),
            Err(e) if e.is_unavailable() => Err(CachedError::Unavailable),
            Err(e) => Err(CachedError::Failed(e.kind())),
        };
        self.cached = Some((cycle, cached));
        result
    }

    fn call(
        &mut self,
        until: Option<std::time::Instant>,
    ) -> Result<ListPodResourcesResponse, KubeletError> {
        // Off Kubernetes the socket is missing: say so without waking the client thread
        // (one stat instead of a thread and two context switches per cycle). A socket that exists is
        // always dialled, so that the client sorts refusals and hangs as before.
        if let Err(source) = std::fs::symlink_metadata(&self.socket)
            && matches!(
                source.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied
            )
        {
            self.calls += 1;
            return Err(connect_error(self.socket.clone(), source));
        }
        if self.requests.is_none() {
            self.start()?;
        }
        let (Some(requests), Some(replies)) = (&self.requests, &self.replies) else {
            return Err(KubeletError::ThreadGone);
        };
        if self.in_flight {
            // The previous call hung past its deadline; its answer (or its own timeout) is
            // still due. Collect it if it has come, never wait for it.
            match replies.try_recv() {
                Ok(_) => self.in_flight = false,
                Err(mpsc::TryRecvError::Empty) => return Err(KubeletError::Timeout(self.timeout)),
                Err(mpsc::TryRecvError::Disconnected) => return self.gone(),
            }
        }
        // The client enforces the deadline itself; the margin covers scheduling only. The
        // wait never runs past the source's budget.
        let wait = self.timeout + Duration::from_millis(500);
        let wait = until.map_or(wait, |u| {
            wait.min(u.saturating_duration_since(std::time::Instant::now()))
        });
        if wait.is_zero() {
            return Err(KubeletError::Timeout(self.timeout));
        }
        self.calls += 1;
        if requests.send(()).is_err() {
            return self.gone();
        }
        match replies.recv_timeout(wait) {
            Ok(r) => r,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                self.in_flight = true;
                Err(KubeletError::Timeout(self.timeout))
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => self.gone(),
        }
    }

    fn gone(&mut self) -> Result<ListPodResourcesResponse, KubeletError> {
        self.requests = None;
        self.replies = None;
        self.in_flight = false;
        Err(KubeletError::ThreadGone)
    }

    fn start(&mut self) -> Result<(), KubeletError> {
        let (req_tx, req_rx) = mpsc::channel::<()>();
        let (rep_tx, rep_rx) = mpsc::channel();
        let socket = self.socket.clone();
        let timeout = self.timeout;
        std::thread::Builder::new()
            .name("kubelet-client".into())
            .spawn(move || {
                let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return;
                };
                let mut client = KubeletClient::new(socket, timeout);
                while req_rx.recv().is_ok() {
                    let r = rt.block_on(client.list());
                    if rep_tx.send(r).is_err() {
                        return;
                    }
                }
            })
            .map_err(|_| KubeletError::ThreadGone)?;
        self.requests = Some(req_tx);
        self.replies = Some(rep_rx);
        Ok(())
    }
}

/// One GPU as NVML sees it: enough to recognise it under any device-plugin naming.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuIdentity {
    /// `GPU-…` (or `MIG-…`) UUID: the `hw.id`.
    pub uuid: String,
    /// NVML index.
    pub index: u32,
    /// Minor number (`/dev/nvidia<minor>`), when NVML reported it; the index is used when not.
    pub minor_number: Option<u32>,
}

/// A container that the kubelet gave a GPU to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Holder {
    /// `k8s.namespace.name`.
    pub namespace: String,
    /// `k8s.pod.name`.
    pub pod: String,
    /// `k8s.container.name`.
    pub container: String,
}

/// Which containers hold which GPU, by GPU UUID.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allocations {
    /// GPU UUID → holders, sorted, without duplicates.
    pub by_gpu: BTreeMap<String, Vec<Holder>>,
    /// Device IDs of NVIDIA resources whose shape was not recognised.
    pub unrecognised_ids: usize,
}

impl Allocations {
    /// Maps a `List` answer onto this node's GPUs. Only NVIDIA resources count
    /// (`nvidia.com/*` device-plugin resources, and DRA devices of an NVIDIA driver).
    pub fn from_list(list: &ListPodResourcesResponse, gpus: &[GpuIdentity]) -> Self {
        let mut out = Self::default();
        for pod in &list.pod_resources {
            for c in &pod.containers {
                let holder = Holder {
                    namespace: pod.namespace.clone(),
                    pod: pod.name.clone(),
                    container: c.name.clone(),
                };
                let mut add = |uuid: String| {
                    let holders = out.by_gpu.entry(uuid).or_default();
                    if !holders.contains(&holder) {
                        holders.push(holder.clone());
                    }
                };
                let mut unrecognised = 0;
                let plugin_ids = c
                    .devices
                    .iter()
                    .filter(|d| d.resource_name.starts_with("nvidia.com/"))
                    .flat_map(|d| &d.device_ids);
                for id in plugin_ids {
                    match resolve_device_id(id, gpus) {
                        Some(uuid) => add(uuid),
                        None => unrecognised += 1,
                    }
                }
                let claims = c
                    .dynamic_resources
                    .iter()
                    .flat_map(|d| &d.claim_resources)
                    .filter(|r| r.driver_name.contains("nvidia.com"));
                for r in claims {
                    // A DRA device is named twice (device name, CDI names); one match is enough.
                    let names = std::iter::once(r.device_name.as_str())
                        .chain(r.cdi_devices.iter().map(|d| d.name.as_str()));
                    match names.filter_map(|n| resolve_device_id(n, gpus)).next() {
                        Some(uuid) => add(uuid),
                        None => unrecognised += 1,
                    }
                }
                out.unrecognised_ids += unrecognised;
            }
        }
        for holders in out.by_gpu.values_mut() {
            holders.sort();
        }
        out
    }

    /// The holders of one GPU.
    pub fn holders(&self, uuid: &str) -> &[Holder] {
        self.by_gpu.get(uuid).map(Vec::as_slice).unwrap_or(&[])
    }
}

/// Maps one device ID, whatever its naming, to a GPU UUID.
///
/// Recognised shapes: `GPU-<uuid>` and `MIG-<uuid>` (returned as they are, even for a GPU
/// NVML did not list, so the allocation is still visible), with an optional `::<replica>`
/// suffix (time-slicing); `nvidia<minor>`; a bare index `<n>`; a DRA device name
/// `gpu-<n>`; a CDI name `<vendor>/<class>=<any of these>`.
pub fn resolve_device_id(id: &str, gpus: &[GpuIdentity]) -> Option<String> {
    let id = id.trim();
    let id = id.split_once("::").map_or(id, |(base, _replica)| base);
    if let Some((_kind, name)) = id.split_once('=') {
        return resolve_device_id(name, gpus);
    }
    if let Some(index) = id.strip_prefix("gpu-").and_then(parse_number) {
        return gpus
            .iter()
            .find(|g| g.index == index)
            .map(|g| g.uuid.clone());
    }
    if is_uuid_id(id) {
        // Prefer NVML's spelling (case) when it knows the GPU.
        return Some(
            gpus.iter()
                .find(|g| g.uuid.eq_ignore_ascii_case(id))
                .map_or_else(|| id.to_owned(), |g| g.uuid.clone()),
        );
    }
    if let Some(minor) = id.strip_prefix("nvidia").and_then(parse_number) {
        return gpus
            .iter()
            .find(|g| g.minor_number.unwrap_or(g.index) == minor)
            .map(|g| g.uuid.clone());
    }
    let index = parse_number(id)?;
    gpus.iter()
        .find(|g| g.index == index)
        .map(|g| g.uuid.clone())
}

/// `GPU-<uuid>` or `MIG-<uuid>`, any case: the rest is hex digits and dashes.
fn is_uuid_id(id: &str) -> bool {
    let Some((prefix, rest)) = id.split_at_checked(4) else {
        return false;
    };
    (prefix.eq_ignore_ascii_case("GPU-") || prefix.eq_ignore_ascii_case("MIG-"))
        && rest.bytes().any(|b| b.is_ascii_hexdigit())
        && rest.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

fn parse_number(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpus() -> Vec<GpuIdentity> {
        vec![
            GpuIdentity {
                uuid: "GPU-aaaa".into(),
                index: 0,
                minor_number: Some(1),
            },
            GpuIdentity {
                uuid: "GPU-bbbb".into(),
                index: 1,
                minor_number: None,
            },
        ]
    }

    #[test]
    fn every_device_id_shape_resolves_to_the_same_uuid() {
        let g = gpus();
        assert_eq!(
            resolve_device_id("GPU-aaaa", &g).as_deref(),
            Some("GPU-aaaa")
        );
        assert_eq!(
            resolve_device_id("gpu-AAAA", &g).as_deref(),
            Some("GPU-aaaa")
        );
        assert_eq!(
            resolve_device_id("GPU-aaaa::3", &g).as_deref(),
            Some("GPU-aaaa")
        );
        // A MIG instance (resource nvidia.com/mig-1g.10gb) is its own hw.id, known to NVML
        // or not.
        let mig = "MIG-0f3e5d8b-2a7c-4e1f-9b6d-3a8c5e2f7b4d";
        assert_eq!(resolve_device_id(mig, &g).as_deref(), Some(mig));
        // nvidia<N> is the minor number, not the index.
        assert_eq!(
            resolve_device_id("nvidia1", &g).as_deref(),
            Some("GPU-aaaa")
        );
        assert_eq!(resolve_device_id("0", &g).as_deref(), Some("GPU-aaaa"));
        assert_eq!(resolve_device_id("gpu-1", &g).as_deref(), Some("GPU-bbbb"));
        assert_eq!(
            resolve_device_id("k8s.gpu.nvidia.com/device=gpu-0", &g).as_deref(),
            Some("GPU-aaaa")
        );
    }

    #[test]
    fn a_minor_number_without_nvml_minor_falls_back_to_the_index() {
        assert_eq!(
            resolve_device_id("nvidia1", &gpus()[1..]).as_deref(),
            Some("GPU-bbbb")
        );
    }

    #[test]
    fn unknown_shapes_and_absent_gpus_do_not_resolve() {
        let g = gpus();
        for id in [
            "",
            "GPU-",
            "nvidia",
            "nvidia7",
            "7",
            "-1",
            "all",
            "=",
            "gpu-x",
            "gpu-0-mig-1g.5gb",
            "💥",
        ] {
            assert_eq!(resolve_device_id(id, &g), None, "{id:?}");
        }
    }

    #[test]
    fn dra_devices_of_an_nvidia_driver_count_and_others_do_not() {
        use pb::{CdiDevice, ClaimResource, ContainerResources, DynamicResource, PodResources};
        let claim = |driver: &str, device: &str, cdi: &str| ClaimResource {
            cdi_devices: vec![CdiDevice { name: cdi.into() }],
            driver_name: driver.into(),
            pool_name: "node-1".into(),
            device_name: device.into(),
        };
        let list = ListPodResourcesResponse {
            pod_resources: vec![PodResources {
                name: "p".into(),
                namespace: "ns".into(),
                containers: vec![ContainerResources {
                    name: "c".into(),
                    dynamic_resources: vec![DynamicResource {
                        claim_name: "gpu".into(),
                        claim_namespace: "ns".into(),
                        claim_resources: vec![
                            claim("gpu.nvidia.com", "gpu-1", "k8s.gpu.nvidia.com/device=gpu-1"),
                            // The device name is not ours, the CDI name is: one match is enough.
                            claim("gpu.nvidia.com", "odd-name", "k8s.gpu.nvidia.com/device=0"),
                            claim("gpu.nvidia.com", "nope", "k8s.gpu.nvidia.com/device=nope"),
                            claim("fpga.example.com", "gpu-0", "example.com/fpga=gpu-0"),
                        ],
                    }],
                    ..Default::default()
                }],
            }],
        };
        let a = Allocations::from_list(&list, &gpus());
        assert_eq!(a.holders("GPU-bbbb").len(), 1);
        assert_eq!(a.holders("GPU-aaaa").len(), 1);
        assert_eq!(a.holders("GPU-aaaa")[0].container, "c");
        assert_eq!(a.unrecognised_ids, 1);
    }

    #[test]
    fn no_socket_and_no_permission_turn_attribution_off_other_errors_count() {
        use std::io::{Error, ErrorKind};
        let p = PathBuf::from("/x.sock");
        assert!(connect_error(p.clone(), Error::from(ErrorKind::NotFound)).is_unavailable());
        // As root the permission case cannot be produced on a real socket; this is the sorting.
        assert!(
            connect_error(p.clone(), Error::from(ErrorKind::PermissionDenied)).is_unavailable()
        );
        let refused = connect_error(p, Error::from(ErrorKind::ConnectionRefused));
        assert!(!refused.is_unavailable());
        assert_eq!(refused.kind(), "kubelet_connect");
    }

    #[test]
    fn a_cached_unavailable_answer_stays_unavailable_within_the_cycle() {
        let dir = std::env::temp_dir().join("otel-gpu-receiver-no-such-dir-for-test");
        let mut s = KubeletSource::new(dir.join("kubelet.sock"), Duration::from_secs(1));
        assert!(s.list(1).unwrap_err().is_unavailable());
        assert!(s.list(1).unwrap_err().is_unavailable());
        assert_eq!(s.calls(), 1);
    }

    /// Length-delimited field `num` (wire type 2) holding `body`.
    fn ld(num: u32, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        prost::encoding::encode_key(num, prost::encoding::WireType::LengthDelimited, &mut out);
        prost::encoding::encode_varint(body.len() as u64, &mut out);
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn bytes_laid_out_with_the_kubelets_field_numbers_decode_into_our_types() {
        use prost::Message as _;
        // Encoded by hand from the published field numbers, not from our .proto: this is
        // what a kubelet sends.
        let mut numa = Vec::new();
        prost::encoding::encode_key(1, prost::encoding::WireType::Varint, &mut numa);
        prost::encoding::encode_varint(1, &mut numa); // NUMANode.ID = 1
        let topology = ld(1, &numa); // TopologyInfo.nodes
        let devices = [
            ld(1, b"nvidia.com/gpu"), // ContainerDevices.resource_name
            ld(2, b"GPU-aaaa"),       // ContainerDevices.device_ids
            ld(3, &topology),         // ContainerDevices.topology
        ]
        .concat();
        let claim = [
            ld(1, &ld(1, b"k8s.gpu.nvidia.com/device=gpu-1")), // ClaimResource.cdi_devices
            ld(2, b"gpu.nvidia.com"),                          // ClaimResource.driver_name
            ld(3, b"node-1"),                                  // ClaimResource.pool_name
            ld(4, b"gpu-1"),                                   // ClaimResource.device_name
        ]
        .concat();
        let dynamic = [
            ld(2, b"claim"), // DynamicResource.claim_name
            ld(3, b"ml"),    // DynamicResource.claim_namespace
            ld(4, &claim),   // DynamicResource.claim_resources
        ]
        .concat();
        let mut cpu_ids = Vec::new();
        prost::encoding::encode_varint(3, &mut cpu_ids);
        prost::encoding::encode_varint(5, &mut cpu_ids);
        let container = [
            ld(1, b"main"),    // ContainerResources.name
            ld(2, &devices),   // ContainerResources.devices
            ld(3, &cpu_ids),   // ContainerResources.cpu_ids (packed)
            ld(5, &dynamic),   // ContainerResources.dynamic_resources
            ld(99, b"future"), // a field a later kubelet may add: skipped
        ]
        .concat();
        let pod = [ld(1, b"trainer"), ld(2, b"ml"), ld(3, &container)].concat();
        let bytes = ld(1, &pod); // ListPodResourcesResponse.pod_resources

        let list = ListPodResourcesResponse::decode(bytes.as_slice()).unwrap();
        let p = &list.pod_resources[0];
        assert_eq!((p.name.as_str(), p.namespace.as_str()), ("trainer", "ml"));
        let c = &p.containers[0];
        assert_eq!(c.name, "main");
        assert_eq!(c.cpu_ids, vec![3, 5]);
        assert_eq!(c.devices[0].resource_name, "nvidia.com/gpu");
        assert_eq!(c.devices[0].device_ids, vec!["GPU-aaaa".to_owned()]);
        assert_eq!(c.devices[0].topology.as_ref().unwrap().nodes[0].id, 1);
        let d = &c.dynamic_resources[0];
        assert_eq!(
            (d.claim_name.as_str(), d.claim_namespace.as_str()),
            ("claim", "ml")
        );
        let r = &d.claim_resources[0];
        assert_eq!(r.driver_name, "gpu.nvidia.com");
        assert_eq!(r.pool_name, "node-1");
        assert_eq!(r.device_name, "gpu-1");
        assert_eq!(r.cdi_devices[0].name, "k8s.gpu.nvidia.com/device=gpu-1");

        let a = Allocations::from_list(&list, &gpus());
        assert_eq!(a.holders("GPU-aaaa")[0].pod, "trainer");
        assert_eq!(a.holders("GPU-bbbb")[0].container, "main");
    }

    #[test]
    fn get_and_allocatable_messages_use_the_kubelets_field_numbers() {
        use prost::Message as _;
        let req = [ld(1, b"trainer"), ld(2, b"ml")].concat();
        let r = pb::GetPodResourcesRequest::decode(req.as_slice()).unwrap();
        assert_eq!(
            (r.pod_name.as_str(), r.pod_namespace.as_str()),
            ("trainer", "ml")
        );

        let pod = [ld(1, b"trainer"), ld(2, b"ml")].concat();
        let resp = pb::GetPodResourcesResponse::decode(ld(1, &pod).as_slice()).unwrap();
        assert_eq!(resp.pod_resources.unwrap().name, "trainer");

        let memory = [ld(1, b"hugepages-1Gi"), {
            let mut v = Vec::new();
            prost::encoding::encode_key(2, prost::encoding::WireType::Varint, &mut v);
            prost::encoding::encode_varint(1 << 30, &mut v);
            v
        }]
        .concat();
        let alloc = [
            ld(1, &[ld(1, b"nvidia.com/gpu"), ld(2, b"GPU-aaaa")].concat()),
            ld(3, &memory),
        ]
        .concat();
        let a = pb::AllocatableResourcesResponse::decode(alloc.as_slice()).unwrap();
        assert_eq!(a.devices[0].device_ids, vec!["GPU-aaaa".to_owned()]);
        assert_eq!(a.memory[0].memory_type, "hugepages-1Gi");
        assert_eq!(a.memory[0].size, 1 << 30);
    }
}
