//! Test support for attribution: a fake kubelet (a tonic server built from the same
//! `proto/` as the agent's client, on a unix socket in a temp dir, scripted per test), raw
//! misbehaving sockets, and fixture `/proc` and pod-log trees.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use otel_gpu_receiver::attribution::kubelet::pb::pod_resources_lister_server::{
    PodResourcesLister, PodResourcesListerServer,
};
use otel_gpu_receiver::attribution::kubelet::pb::{
    AllocatableResourcesRequest, AllocatableResourcesResponse, ContainerDevices,
    ContainerResources, GetPodResourcesRequest, GetPodResourcesResponse, ListPodResourcesRequest,
    ListPodResourcesResponse, PodResources,
};
use tokio::io::AsyncWriteExt;
use tonic::{Request, Response, Status};

/// What the fake kubelet does when `List` is called.
#[derive(Debug, Clone)]
pub enum Script {
    /// Answer with this list.
    Respond(ListPodResourcesResponse),
    /// Never answer.
    Hang,
    /// Fail with this status.
    Fail(Status),
}

#[derive(Debug, Clone)]
struct Service {
    script: Arc<Mutex<Script>>,
    calls: Arc<AtomicUsize>,
}

#[tonic::async_trait]
impl PodResourcesLister for Service {
    async fn list(
        &self,
        _: Request<ListPodResourcesRequest>,
    ) -> Result<Response<ListPodResourcesResponse>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let script = self.script.lock().unwrap().clone();
        match script {
            Script::Respond(r) => Ok(Response::new(r)),
            Script::Hang => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Err(Status::deadline_exceeded("hung"))
            }
            Script::Fail(s) => Err(s),
        }
    }

    async fn get_allocatable_resources(
        &self,
        _: Request<AllocatableResourcesRequest>,
    ) -> Result<Response<AllocatableResourcesResponse>, Status> {
        let Script::Respond(list) = self.script.lock().unwrap().clone() else {
            return Err(Status::unavailable("scripted"));
        };
        let devices = list
            .pod_resources
            .into_iter()
            .flat_map(|p| p.containers)
            .flat_map(|c| c.devices)
            .collect();
        Ok(Response::new(AllocatableResourcesResponse {
            devices,
            ..Default::default()
        }))
    }

    async fn get(
        &self,
        request: Request<GetPodResourcesRequest>,
    ) -> Result<Response<GetPodResourcesResponse>, Status> {
        let r = request.into_inner();
        let Script::Respond(list) = self.script.lock().unwrap().clone() else {
            return Err(Status::unavailable("scripted"));
        };
        let pod = list
            .pod_resources
            .into_iter()
            .find(|p| p.name == r.pod_name && p.namespace == r.pod_namespace)
            .ok_or_else(|| Status::not_found("no such pod"))?;
        Ok(Response::new(GetPodResourcesResponse {
            pod_resources: Some(pod),
        }))
    }
}

/// A scripted kubelet pod-resources server on `<tempdir>/kubelet.sock`.
#[derive(Debug)]
pub struct FakeKubelet {
    pub socket: PathBuf,
    script: Arc<Mutex<Script>>,
    calls: Arc<AtomicUsize>,
    rt: Option<tokio::runtime::Runtime>,
    _dir: tempfile::TempDir,
}

impl FakeKubelet {
    /// Starts serving `script`.
    pub fn start(script: Script) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("kubelet.sock");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let script = Arc::new(Mutex::new(script));
        let calls = Arc::new(AtomicUsize::new(0));
        let service = Service {
            script: script.clone(),
            calls: calls.clone(),
        };
        let listener = {
            let _guard = rt.enter();
            tokio::net::UnixListener::bind(&socket).unwrap()
        };
        rt.spawn(async move {
            tonic::transport::Server::builder()
                .add_service(PodResourcesListerServer::new(service))
                .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener))
                .await
        });
        Self {
            socket,
            script,
            calls,
            rt: Some(rt),
            _dir: dir,
        }
    }

    /// Changes what the next `List` does.
    pub fn set(&self, script: Script) {
        *self.script.lock().unwrap() = script;
    }

    /// `List` calls received so far.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

impl Drop for FakeKubelet {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// How a raw (non-gRPC) socket misbehaves.
#[derive(Debug, Clone, Copy)]
pub enum Raw {
    /// Accepts and writes bytes that are not HTTP/2.
    Garbage,
    /// Accepts and never says anything.
    Silent,
}

/// A unix socket that accepts connections and misbehaves as told.
#[derive(Debug)]
pub struct RawSocket {
    pub socket: PathBuf,
    rt: Option<tokio::runtime::Runtime>,
    _dir: tempfile::TempDir,
}

impl RawSocket {
    pub fn start(how: Raw) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("kubelet.sock");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = {
            let _guard = rt.enter();
            tokio::net::UnixListener::bind(&socket).unwrap()
        };
        rt.spawn(async move {
            let mut open = Vec::new();
            while let Ok((mut s, _)) = listener.accept().await {
                if let Raw::Garbage = how {
                    let _ = s
                        .write_all(b"\x00\x00\x12\x07garbage, not a kubelet\xff\xfe\xfd\n")
                        .await;
                }
                // Keep it open: a closed socket would be a quicker, easier failure.
                open.push(s);
            }
        });
        Self {
            socket,
            rt: Some(rt),
            _dir: dir,
        }
    }
}

impl Drop for RawSocket {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// One container's devices for a [`pod`].
pub fn container(name: &str, resource: &str, ids: &[&str]) -> ContainerResources {
    ContainerResources {
        name: name.into(),
        devices: vec![ContainerDevices {
            resource_name: resource.into(),
            device_ids: ids.iter().map(|s| (*s).to_owned()).collect(),
            topology: None,
        }],
        ..Default::default()
    }
}

/// A pod for a `List` answer.
pub fn pod(namespace: &str, name: &str, containers: Vec<ContainerResources>) -> PodResources {
    PodResources {
        name: name.into(),
        namespace: namespace.into(),
        containers,
    }
}

/// A `List` answer.
pub fn list(pods: Vec<PodResources>) -> ListPodResourcesResponse {
    ListPodResourcesResponse {
        pod_resources: pods,
    }
}

/// A 64-hex container ID made from a small number, for fixtures.
pub fn container_id(n: u8) -> String {
    format!("{n:02x}").repeat(32)
}

/// A pod UID made from a small number, for fixtures.
pub fn pod_uid(n: u8) -> String {
    format!("{n:08x}-0000-4000-8000-{n:012x}")
}

/// A temporary `/proc` with cgroup files and a temporary `/var/log/pods`.
#[derive(Debug)]
pub struct Node {
    pub dir: tempfile::TempDir,
}

impl Node {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("proc")).unwrap();
        std::fs::create_dir_all(dir.path().join("pods")).unwrap();
        Self { dir }
    }

    pub fn proc_root(&self) -> PathBuf {
        self.dir.path().join("proc")
    }

    pub fn pod_log_dir(&self) -> PathBuf {
        self.dir.path().join("pods")
    }

    /// `pid` runs in a containerd container of pod `uid` (cgroup v2, systemd driver).
    pub fn pod_process(&self, pid: u32, uid: &str, container: &str) -> &Self {
        let slice = uid.replace('-', "_");
        self.cgroup(
            pid,
            &format!(
                "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{slice}.slice/cri-containerd-{container}.scope\n"
            ),
        )
    }

    /// Writes `<proc>/<pid>/cgroup`.
    pub fn cgroup(&self, pid: u32, text: &str) -> &Self {
        let d = self.proc_root().join(pid.to_string());
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("cgroup"), text).unwrap();
        self
    }

    /// The NVIDIA driver's `/proc/driver/nvidia/gpus/<pci>/information` for one GPU.
    pub fn driver_info(&self, pci: &str, uuid: &str, minor: u32) -> &Self {
        let d = self.proc_root().join("driver/nvidia/gpus").join(pci);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(
            d.join("information"),
            format!(
                "Model: \t\t NVIDIA H100 80GB HBM3\nIRQ:   \t\t 140\nGPU UUID: \t {uuid}\n\
                 Video BIOS: \t 96.00.74.00.01\nBus Type: \t PCIe\nDMA Size: \t 52 bits\n\
                 DMA Mask: \t 0xfffffffffffff\nBus Location: \t {pci}\nDevice Minor: \t {minor}\n\
                 GPU Excluded:\t No\n"
            ),
        )
        .unwrap();
        self
    }

    /// The kubelet's log directory for a pod.
    pub fn pod_dir(&self, namespace: &str, name: &str, uid: &str) -> &Self {
        std::fs::create_dir_all(self.pod_log_dir().join(format!("{namespace}_{name}_{uid}")))
            .unwrap();
        self
    }
}

impl Default for Node {
    fn default() -> Self {
        Self::new()
    }
}

/// Waits until `path` exists (a server binding), at most 5 s.
pub fn wait_for(path: &Path) {
    for _ in 0..500 {
        if path.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("{} never appeared", path.display());
}
