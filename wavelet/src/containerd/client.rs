//! The connection to containerd: one gRPC channel over its socket, every request tagged with
//! the namespace the Wavelet works in.

use std::path::PathBuf;
use std::time::Duration;

use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::leases_client::LeasesClient;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::tonic::metadata::MetadataValue;
use containerd_client::tonic::transport::Channel;
use containerd_client::tonic::{self, Request};

use super::egress::Ipv4Cidr;

/// How the Wavelet uses containerd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerdSettings {
    /// containerd's gRPC socket.
    pub socket: PathBuf,
    /// The containerd namespace: `k8s.io` on a Kubernetes node, so images kubelet pulled are used.
    pub namespace: String,
    pub snapshotter: String,
    /// The runtime (shim) for instances.
    pub runtime: String,
    /// The OCI runtime binary the runc shim calls (`runc`, `crun`); the shim's default when unset.
    pub runc_binary: Option<String>,
    /// Instances' cgroups go under this path (cgroupfs driver).
    pub cgroup_parent: String,
    /// Created-but-not-started instances kept per function, so a cold start is only a task start.
    pub prepared_per_function: u32,
    /// How long an image pull may take.
    pub pull_timeout: Duration,
    /// Outbound network for instances, NAT through the Wavelet's namespace from links in this
    /// prefix (egress.rs); `None`: loopback only.
    pub egress: Option<Ipv4Cidr>,
}

impl Default for ContainerdSettings {
    fn default() -> Self {
        ContainerdSettings {
            socket: PathBuf::from("/run/containerd/containerd.sock"),
            namespace: "k8s.io".to_owned(),
            snapshotter: "overlayfs".to_owned(),
            runtime: "io.containerd.runc.v2".to_owned(),
            runc_binary: None,
            cgroup_parent: "/wavelink".to_owned(),
            prepared_per_function: 2,
            pull_timeout: Duration::from_secs(300),
            egress: None,
        }
    }
}

/// A client of one containerd, in one namespace.
#[derive(Clone)]
pub struct Containerd {
    channel: Channel,
    namespace: MetadataValue<tonic::metadata::Ascii>,
    pub settings: ContainerdSettings,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("containerd namespace {0:?} is not a valid name")]
    Namespace(String),
    #[error("connecting to containerd at {socket}: {source}")]
    Connect { socket: PathBuf, source: tonic::transport::Error },
    #[error("containerd at {socket} does not answer: {message}")]
    Version { socket: PathBuf, message: String },
    #[error("removing containers left by a previous run: {0}")]
    Orphans(String),
    #[error("setting up instances' egress: {0}")]
    Egress(String),
}

impl Containerd {
    /// Connects and asks for containerd's version, so a wrong socket fails at start-up.
    pub async fn connect(settings: ContainerdSettings) -> Result<(Containerd, String), ConnectError> {
        let namespace = settings.namespace.parse().map_err(|_| ConnectError::Namespace(settings.namespace.clone()))?;
        let channel = containerd_client::connect(&settings.socket)
            .await
            .map_err(|source| ConnectError::Connect { socket: settings.socket.clone(), source })?;
        let client = Containerd { channel, namespace, settings };
        let mut version = containerd_client::services::v1::version_client::VersionClient::new(client.channel());
        let answer = tokio::time::timeout(Duration::from_secs(10), version.version(()))
            .await
            .map_err(|_| ConnectError::Version { socket: client.settings.socket.clone(), message: "timed out".into() })?
            .map_err(|e| ConnectError::Version {
                socket: client.settings.socket.clone(),
                message: e.message().to_owned(),
            })?;
        Ok((client.clone(), answer.into_inner().version))
    }

    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// A request in our namespace.
    pub fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request.metadata_mut().insert("containerd-namespace", self.namespace.clone());
        request
    }

    /// A request in our namespace whose new resources belong to `lease` (so containerd's
    /// garbage collector leaves them alone until something references them).
    pub fn leased<T>(&self, message: T, lease: &str) -> Request<T> {
        let mut request = self.request(message);
        if let Ok(lease) = lease.parse() {
            request.metadata_mut().insert("containerd-lease", lease);
        }
        request
    }

    pub fn leases(&self) -> LeasesClient<Channel> {
        LeasesClient::new(self.channel())
    }

    pub fn images(&self) -> ImagesClient<Channel> {
        ImagesClient::new(self.channel())
    }

    pub fn content(&self) -> ContentClient<Channel> {
        ContentClient::new(self.channel())
    }

    pub fn snapshots(&self) -> SnapshotsClient<Channel> {
        SnapshotsClient::new(self.channel())
    }

    pub fn containers(&self) -> ContainersClient<Channel> {
        ContainersClient::new(self.channel())
    }

    pub fn tasks(&self) -> TasksClient<Channel> {
        TasksClient::new(self.channel())
    }
}
