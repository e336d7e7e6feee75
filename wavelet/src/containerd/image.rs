//! Images in containerd: what a function's image runs (its config) and which snapshot its
//! unpacked layers end in (the chain id), read once per image from containerd's content store;
//! an image that is absent is pulled once per node through the CRI image service on the same
//! socket (kubelet's own path, so credentials, mirrors and unpacking are what pods get).

use std::time::Duration;

use containerd_client::services::v1::snapshots::StatSnapshotRequest;
use containerd_client::services::v1::{GetImageRequest, ReadContentRequest};
use containerd_client::tonic::{self, Code};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use wavelink_core::container::ImageConfig;

use super::client::Containerd;

/// What the Wavelet needs of an unpacked image.
#[derive(Debug, Clone)]
pub struct ImageInfo {
    /// The name containerd stores it under.
    pub name: String,
    pub config: ImageConfig,
    /// The committed snapshot of its top layer: the parent of every instance's root.
    pub chain_id: String,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ImageError {
    #[error("image {0} is not present on this node")]
    Absent(String),
    #[error("image {image}: {message}")]
    Broken { image: String, message: String },
    #[error("image {image}: containerd: {message}")]
    Rpc { image: String, message: String, unreachable: bool },
}

impl ImageError {
    fn rpc(image: &str, status: &tonic::Status) -> ImageError {
        ImageError::Rpc {
            image: image.to_owned(),
            message: status.message().to_owned(),
            unreachable: super::unreachable(status),
        }
    }

    /// A failure of the call, not of the image: worth trying again at once, not remembering.
    pub fn is_transient(&self) -> bool {
        matches!(self, ImageError::Rpc { .. })
    }
}

#[derive(Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Deserialize)]
struct Platform {
    architecture: String,
    os: String,
}

#[derive(Deserialize)]
struct Manifest {
    #[serde(default)]
    manifests: Vec<Descriptor>,
    #[serde(default)]
    config: Option<Descriptor>,
}

#[derive(Deserialize)]
struct ConfigBlob {
    #[serde(default)]
    config: ImageConfig,
    rootfs: RootFs,
}

#[derive(Deserialize)]
struct RootFs {
    diff_ids: Vec<String>,
}

/// The snapshot of a stack of layers: `chain(L0) = diff(L0)`, `chain(Ln) = sha256(chain(Ln-1) + " " + diff(Ln))`.
pub fn chain_id(diff_ids: &[String]) -> Option<String> {
    let mut ids = diff_ids.iter();
    let mut chain = ids.next()?.clone();
    for diff in ids {
        chain = format!("sha256:{:x}", Sha256::digest(format!("{chain} {diff}").as_bytes()));
    }
    Some(chain)
}

fn is_index(media_type: &str) -> bool {
    media_type.ends_with("image.index.v1+json") || media_type.ends_with("manifest.list.v2+json")
}

fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

impl Containerd {
    /// The image's config and top snapshot, if it is present and unpacked for our snapshotter.
    pub async fn resolve_image(&self, name: &str) -> Result<ImageInfo, ImageError> {
        let rpc = |e: tonic::Status| ImageError::rpc(name, &e);
        let broken = |message: String| ImageError::Broken { image: name.to_owned(), message };
        let image = match self.images().get(self.request(GetImageRequest { name: name.to_owned() })).await {
            Ok(response) => response.into_inner().image,
            Err(e) if e.code() == Code::NotFound => return Err(ImageError::Absent(name.to_owned())),
            Err(e) => return Err(rpc(e)),
        };
        let target = image.and_then(|i| i.target).ok_or_else(|| broken("the image record has no target".into()))?;
        let (mut media_type, mut digest) = (target.media_type, target.digest);
        // An index (several platforms): this node's platform.
        for _ in 0..2 {
            if !is_index(&media_type) {
                break;
            }
            let index: Manifest = serde_json::from_slice(&self.read_blob(&digest).await.map_err(rpc)?)
                .map_err(|e| broken(format!("index {digest}: {e}")))?;
            let chosen = index
                .manifests
                .into_iter()
                .find(|m| m.platform.as_ref().is_none_or(|p| p.os == "linux" && p.architecture == go_arch()))
                .ok_or_else(|| broken(format!("no manifest for linux/{}", go_arch())))?;
            (media_type, digest) = (chosen.media_type, chosen.digest);
        }
        let manifest: Manifest = serde_json::from_slice(&self.read_blob(&digest).await.map_err(rpc)?)
            .map_err(|e| broken(format!("manifest {digest}: {e}")))?;
        let config_digest = manifest.config.ok_or_else(|| broken("the manifest has no config".into()))?.digest;
        let config: ConfigBlob = serde_json::from_slice(&self.read_blob(&config_digest).await.map_err(rpc)?)
            .map_err(|e| broken(format!("config {config_digest}: {e}")))?;
        let chain_id = chain_id(&config.rootfs.diff_ids).ok_or_else(|| broken("the image has no layers".into()))?;
        let stat = StatSnapshotRequest { snapshotter: self.settings.snapshotter.clone(), key: chain_id.clone() };
        match self.snapshots().stat(self.request(stat)).await {
            Ok(_) => {}
            Err(e) if e.code() == Code::NotFound => {
                return Err(broken(format!(
                    "present but not unpacked for the {} snapshotter (snapshot {chain_id} is missing)",
                    self.settings.snapshotter
                )));
            }
            Err(e) => return Err(rpc(e)),
        }
        Ok(ImageInfo { name: name.to_owned(), config: config.config, chain_id })
    }

    async fn read_blob(&self, digest: &str) -> Result<Vec<u8>, tonic::Status> {
        let request = ReadContentRequest { digest: digest.to_owned(), offset: 0, size: 0 };
        let mut stream = self.content().read(self.request(request)).await?.into_inner();
        let mut data = Vec::new();
        while let Some(chunk) = stream.message().await? {
            data.extend_from_slice(&chunk.data);
            // Manifests and configs are small; anything huge is not what we asked for.
            if data.len() > 16 << 20 {
                return Err(tonic::Status::out_of_range(format!("blob {digest} is larger than 16 MiB")));
            }
        }
        Ok(data)
    }

    /// Pulls `name` through the CRI image service (which pulls into the `k8s.io` namespace and
    /// unpacks for the CRI snapshotter), as kubelet would.
    pub async fn pull_through_cri(&self, name: &str, timeout: Duration) -> Result<String, ImageError> {
        let request =
            cri::PullImageRequest { image: Some(cri::ImageSpec { image: name.to_owned(), ..Default::default() }) };
        let mut grpc = tonic::client::Grpc::new(self.channel());
        let rpc = |e: tonic::Status| ImageError::rpc(name, &e);
        grpc.ready().await.map_err(|e| ImageError::Rpc {
            image: name.to_owned(),
            message: e.to_string(),
            unreachable: true,
        })?;
        let mut request = tonic::Request::new(request);
        request.set_timeout(timeout);
        let path = http::uri::PathAndQuery::from_static("/runtime.v1.ImageService/PullImage");
        let codec = tonic_prost::ProstCodec::<cri::PullImageRequest, cri::PullImageResponse>::default();
        let response = grpc.unary(request, path, codec).await.map_err(rpc)?;
        Ok(response.into_inner().image_ref)
    }
}

/// The two messages of the CRI image service (`k8s.io/cri-api`, `runtime.v1`) a pull needs.
mod cri {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ImageSpec {
        #[prost(string, tag = "1")]
        pub image: String,
        #[prost(map = "string, string", tag = "2")]
        pub annotations: std::collections::HashMap<String, String>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PullImageRequest {
        #[prost(message, optional, tag = "1")]
        pub image: Option<ImageSpec>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PullImageResponse {
        #[prost(string, tag = "1")]
        pub image_ref: String,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_oci_definition() {
        let a = "sha256:aaaa".to_owned();
        let b = "sha256:bbbb".to_owned();
        assert_eq!(chain_id(std::slice::from_ref(&a)), Some(a.clone()));
        let expected = format!("sha256:{:x}", Sha256::digest(b"sha256:aaaa sha256:bbbb"));
        assert_eq!(chain_id(&[a, b]), Some(expected));
        assert_eq!(chain_id(&[]), None);
    }
}
