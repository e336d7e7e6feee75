//! The one write the standard track makes: `PATCH deployments/<name>/scale`.

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};

/// Field manager recorded on the writes, so `kubectl` shows who set the replicas.
pub const FIELD_MANAGER: &str = "wavelink-controller";

/// Sets a Deployment's `spec.replicas` through its scale subresource (a merge patch: nothing else
/// of the Deployment is touched, and a concurrent edit of other fields never conflicts).
pub async fn set_replicas(
    client: &Client,
    namespace: &str,
    deployment: &str,
    replicas: u32,
) -> Result<(), kube::Error> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let patch = serde_json::json!({ "spec": { "replicas": replicas } });
    api.patch_scale(
        deployment,
        &PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() },
        &Patch::Merge(&patch),
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Request, Response};
    use kube::client::Body;

    #[tokio::test]
    async fn patches_the_scale_subresource_with_a_merge_patch() {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(service, "default");
        let server = tokio::spawn(async move {
            let (request, send) = handle.next_request().await.expect("a request");
            assert_eq!(request.method(), http::Method::PATCH);
            assert_eq!(request.uri().path(), "/apis/apps/v1/namespaces/apps/deployments/hello/scale");
            assert_eq!(request.headers()["content-type"], "application/merge-patch+json");
            assert!(request.uri().query().unwrap_or_default().contains("fieldManager=wavelink-controller"));
            let body = request.into_body().collect_bytes().await.expect("body");
            let patch: serde_json::Value = serde_json::from_slice(&body).expect("json");
            assert_eq!(patch, serde_json::json!({"spec": {"replicas": 4}}));
            let scale = serde_json::json!({
                "apiVersion": "autoscaling/v1", "kind": "Scale",
                "metadata": {"name": "hello", "namespace": "apps"},
                "spec": {"replicas": 4}, "status": {"replicas": 2}
            });
            send.send_response(Response::builder().body(Body::from(serde_json::to_vec(&scale).unwrap())).unwrap());
        });
        set_replicas(&client, "apps", "hello", 4).await.expect("patched");
        server.await.expect("server checks");
    }
}
