//! A CRI client: what kubelet says to the container runtime over its unix
//! socket (`runtime.v1` RuntimeService and ImageService, gRPC), blocking.
//!
//! kubelet never executes a CNI plugin: it asks the runtime for a pod
//! sandbox (`RunPodSandbox`), and the runtime (containerd's CRI plugin)
//! creates the pod's network namespace and runs the CNI ADD through libcni.
//! [`kubelet_pod`] and [`kubelet_container`] build the requests the way
//! kubelet's `kuberuntime` does, so the plugin sees what a cluster sends.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    ContainerConfig, ContainerMetadata, CreateContainerRequest, DnsConfig, ExecSyncRequest,
    ImageSpec, LinuxContainerConfig, LinuxContainerSecurityContext, LinuxPodSandboxConfig,
    LinuxSandboxSecurityContext, ListImagesRequest, ListPodSandboxRequest, NamespaceMode,
    NamespaceOption, PodSandbox, PodSandboxConfig, PodSandboxMetadata, PodSandboxState,
    PodSandboxStatus, PodSandboxStatusRequest, RemoveContainerRequest, RemovePodSandboxRequest,
    RunPodSandboxRequest, StartContainerRequest, StatusRequest, StopPodSandboxRequest,
    VersionRequest,
};
use tonic::transport::{Channel, Endpoint, Uri};

/// What a failed CRI call returns: the runtime's gRPC status (its message
/// carries, for a failed sandbox, the CNI plugin's error).
pub type CriResult<T> = Result<T, tonic::Status>;

/// How long one CRI call may take before the client gives up.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// A connection to a runtime's CRI socket. Every call blocks; calls may be
/// made from several threads at once (the channel multiplexes them).
pub struct Cri {
    rt: tokio::runtime::Runtime,
    channel: Channel,
}

impl std::fmt::Debug for Cri {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cri")
    }
}

/// The output of a command run in a container (`ExecSync`).
#[derive(Debug, Clone)]
pub struct ExecOutput {
    pub exit_code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Cri {
    /// Connects to the CRI socket at `socket` (the connection is made on
    /// the first call, and made again after the runtime restarts).
    pub fn connect(socket: &Path) -> Cri {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime for the CRI client");
        let path = socket.to_path_buf();
        let channel = rt.block_on(async move {
            // The URI is a placeholder: the connector dials the socket.
            Endpoint::from_static("http://cri.sock")
                .timeout(CALL_TIMEOUT)
                .connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
                    let path: PathBuf = path.clone();
                    async move { Ok::<_, std::io::Error>(TokioIo::new(dial(&path).await?)) }
                }))
        });
        Cri { rt, channel }
    }

    fn runtime(&self) -> RuntimeServiceClient<Channel> {
        RuntimeServiceClient::new(self.channel.clone())
    }

    fn images(&self) -> ImageServiceClient<Channel> {
        ImageServiceClient::new(self.channel.clone())
    }

    /// `Version`: the runtime's name and version (e.g. `containerd`, `1.6.20`).
    pub fn version(&self) -> CriResult<(String, String)> {
        let req = VersionRequest {
            version: "v1".to_string(),
        };
        let v = self.rt.block_on(self.runtime().version(req))?.into_inner();
        Ok((v.runtime_name, v.runtime_version))
    }

    /// `Status`: true when the runtime reports `NetworkReady` (it has
    /// loaded a CNI config).
    pub fn network_ready(&self) -> CriResult<bool> {
        let req = StatusRequest { verbose: false };
        let status = self.rt.block_on(self.runtime().status(req))?.into_inner();
        let conditions = status.status.map(|s| s.conditions).unwrap_or_default();
        Ok(conditions
            .iter()
            .any(|c| c.r#type == "NetworkReady" && c.status))
    }

    /// `ListImages`: every image reference the runtime knows.
    pub fn image_refs(&self) -> CriResult<Vec<String>> {
        let req = ListImagesRequest { filter: None };
        let images = self
            .rt
            .block_on(self.images().list_images(req))?
            .into_inner();
        Ok(images
            .images
            .into_iter()
            .flat_map(|i| i.repo_tags)
            .collect())
    }

    /// `RunPodSandbox`: creates the pod (its network through CNI ADD);
    /// returns the sandbox id.
    pub fn run_pod(&self, config: &PodSandboxConfig) -> CriResult<String> {
        let req = RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: String::new(),
        };
        let reply = self.rt.block_on(self.runtime().run_pod_sandbox(req))?;
        Ok(reply.into_inner().pod_sandbox_id)
    }

    /// `PodSandboxStatus` of one sandbox.
    pub fn pod_status(&self, id: &str) -> CriResult<PodSandboxStatus> {
        let req = PodSandboxStatusRequest {
            pod_sandbox_id: id.to_string(),
            verbose: false,
        };
        let reply = self.rt.block_on(self.runtime().pod_sandbox_status(req))?;
        reply
            .into_inner()
            .status
            .ok_or_else(|| tonic::Status::internal("PodSandboxStatus without a status"))
    }

    /// The pod's IP as `PodSandboxStatus` reports it (what kubelet puts in
    /// the pod's `status.podIP`).
    pub fn pod_ip(&self, id: &str) -> CriResult<Ipv4Addr> {
        let status = self.pod_status(id)?;
        let ip = status.network.map(|n| n.ip).unwrap_or_default();
        ip.parse()
            .map_err(|_| tonic::Status::internal(format!("sandbox {id} has no IPv4: {ip:?}")))
    }

    /// True when the sandbox is `SANDBOX_READY`.
    pub fn pod_ready(&self, id: &str) -> CriResult<bool> {
        Ok(self.pod_status(id)?.state == PodSandboxState::SandboxReady as i32)
    }

    /// `ListPodSandbox`: every sandbox, ready or not.
    pub fn pods(&self) -> CriResult<Vec<PodSandbox>> {
        let req = ListPodSandboxRequest { filter: None };
        let reply = self.rt.block_on(self.runtime().list_pod_sandbox(req))?;
        Ok(reply.into_inner().items)
    }

    /// `StopPodSandbox`: kills the pod's containers and tears its network
    /// down (CNI DEL).
    pub fn stop_pod(&self, id: &str) -> CriResult<()> {
        let req = StopPodSandboxRequest {
            pod_sandbox_id: id.to_string(),
        };
        self.rt.block_on(self.runtime().stop_pod_sandbox(req))?;
        Ok(())
    }

    /// `RemovePodSandbox`: forgets a stopped pod and its containers.
    pub fn remove_pod(&self, id: &str) -> CriResult<()> {
        let req = RemovePodSandboxRequest {
            pod_sandbox_id: id.to_string(),
        };
        self.rt.block_on(self.runtime().remove_pod_sandbox(req))?;
        Ok(())
    }

    /// `CreateContainer` in sandbox `pod_id`, then `StartContainer`;
    /// returns the container id.
    pub fn start_container(
        &self,
        pod_id: &str,
        pod: &PodSandboxConfig,
        container: &ContainerConfig,
    ) -> CriResult<String> {
        let req = CreateContainerRequest {
            pod_sandbox_id: pod_id.to_string(),
            config: Some(container.clone()),
            sandbox_config: Some(pod.clone()),
        };
        let reply = self.rt.block_on(self.runtime().create_container(req))?;
        let id = reply.into_inner().container_id;
        let start = StartContainerRequest {
            container_id: id.clone(),
        };
        self.rt.block_on(self.runtime().start_container(start))?;
        Ok(id)
    }

    /// `RemoveContainer` (a running container is killed first).
    pub fn remove_container(&self, id: &str) -> CriResult<()> {
        let req = RemoveContainerRequest {
            container_id: id.to_string(),
        };
        self.rt.block_on(self.runtime().remove_container(req))?;
        Ok(())
    }

    /// `ExecSync`: runs `cmd` in a running container and waits for it (at
    /// most `timeout`, whole seconds).
    pub fn exec(
        &self,
        container_id: &str,
        cmd: &[&str],
        timeout: Duration,
    ) -> CriResult<ExecOutput> {
        let req = ExecSyncRequest {
            container_id: container_id.to_string(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: i64::try_from(timeout.as_secs().max(1)).unwrap_or(i64::MAX),
        };
        let out = self
            .rt
            .block_on(self.runtime().exec_sync(req))?
            .into_inner();
        Ok(ExecOutput {
            exit_code: out.exit_code,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// Stops and removes every sandbox (CNI DEL for each); returns the
    /// errors it met, never panics.
    pub fn remove_all_pods(&self) -> Vec<String> {
        let pods = match self.pods() {
            Ok(pods) => pods,
            Err(e) => return vec![format!("ListPodSandbox: {}", e.message())],
        };
        let mut errors = Vec::new();
        for pod in pods {
            if let Err(e) = self
                .stop_pod(&pod.id)
                .and_then(|()| self.remove_pod(&pod.id))
            {
                errors.push(format!("removing sandbox {}: {}", pod.id, e.message()));
            }
        }
        errors
    }
}

async fn dial(path: &Path) -> std::io::Result<tokio::net::UnixStream> {
    tokio::net::UnixStream::connect(path).await
}

/// What kubelet knows of a pod when it asks for its sandbox.
#[derive(Debug, Clone)]
pub struct PodMeta {
    pub name: String,
    pub namespace: String,
    pub uid: String,
    pub attempt: u32,
}

impl PodMeta {
    /// Pod `name` in namespace `default`, with a fresh uid, first attempt.
    pub fn new(name: &str) -> PodMeta {
        PodMeta {
            name: name.to_string(),
            namespace: "default".to_string(),
            uid: pod_uid(),
            attempt: 0,
        }
    }
}

/// A uid as the API server makes them: a random UUID (the kernel's).
fn pod_uid() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/uuid")
        .expect("read /proc/sys/kernel/random/uuid")
        .trim()
        .to_string()
}

/// kubelet's labels on a sandbox and its containers.
fn pod_labels(pod: &PodMeta) -> HashMap<String, String> {
    HashMap::from([
        ("io.kubernetes.pod.name".to_string(), pod.name.clone()),
        (
            "io.kubernetes.pod.namespace".to_string(),
            pod.namespace.clone(),
        ),
        ("io.kubernetes.pod.uid".to_string(), pod.uid.clone()),
        ("app".to_string(), pod.name.clone()),
    ])
}

/// kubelet's namespace options for a pod on the pod network: its own
/// network and IPC namespaces, a PID namespace per container.
fn pod_namespaces() -> NamespaceOption {
    NamespaceOption {
        network: NamespaceMode::Pod as i32,
        pid: NamespaceMode::Container as i32,
        ipc: NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

/// The `PodSandboxConfig` kubelet sends for `pod` (a pod on the pod
/// network, `dnsPolicy: ClusterFirst`, the cgroupfs driver):
/// `cgroup_parent` is the pod's cgroup below `cgroup_root`, `log_dir` the
/// pod's log directory.
pub fn kubelet_pod(pod: &PodMeta, cgroup_root: &str, log_dir: &Path) -> PodSandboxConfig {
    let annotations = HashMap::from([
        ("kubernetes.io/config.source".to_string(), "api".to_string()),
        (
            "kubernetes.io/config.seen".to_string(),
            "2024-01-01T00:00:00.000000000Z".to_string(),
        ),
    ]);
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: pod.name.clone(),
            uid: pod.uid.clone(),
            namespace: pod.namespace.clone(),
            attempt: pod.attempt,
        }),
        hostname: pod.name.clone(),
        log_directory: log_dir.display().to_string(),
        dns_config: Some(DnsConfig {
            servers: vec!["10.96.0.10".to_string()],
            searches: ["svc.cluster.local", "cluster.local"]
                .iter()
                .map(|d| d.to_string())
                .chain([format!("{}.svc.cluster.local", pod.namespace)])
                .collect(),
            options: vec!["ndots:5".to_string()],
        }),
        port_mappings: Vec::new(),
        labels: pod_labels(pod),
        annotations,
        linux: Some(LinuxPodSandboxConfig {
            cgroup_parent: format!("{cgroup_root}/pod{}", pod.uid),
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(pod_namespaces()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        windows: None,
    }
}

/// The `ContainerConfig` kubelet sends for container `name` of `pod`,
/// running `image` with `command`.
pub fn kubelet_container(
    pod: &PodMeta,
    name: &str,
    image: &str,
    command: &[&str],
) -> ContainerConfig {
    let mut labels = pod_labels(pod);
    labels.remove("app");
    labels.insert("io.kubernetes.container.name".to_string(), name.to_string());
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.to_string(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: image.to_string(),
            ..Default::default()
        }),
        command: command.iter().map(|s| s.to_string()).collect(),
        labels,
        log_path: format!("{name}/0.log"),
        linux: Some(LinuxContainerConfig {
            resources: None,
            security_context: Some(LinuxContainerSecurityContext {
                namespace_options: Some(pod_namespaces()),
                ..Default::default()
            }),
        }),
        ..Default::default()
    }
}
