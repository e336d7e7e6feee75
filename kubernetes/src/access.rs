//! Which Kubernetes API calls each component makes, found by running the real code against a
//! recording fake apiserver (tower_test), so RBAC in `manifests/` can be checked against what
//! the code does rather than against a hand-kept list.

use std::collections::BTreeSet;
use std::fmt;

use http::{Method, Request};

/// One RBAC permission: API group, resource (with `/subresource`), verb.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Access {
    pub group: String,
    pub resource: String,
    pub verb: String,
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let group = if self.group.is_empty() { "core" } else { &self.group };
        write!(f, "{} {}/{}", self.verb, group, self.resource)
    }
}

/// The permission a request needs, from its method, path and query (as the apiserver's
/// authorizer derives it).
pub fn access_of<B>(request: &Request<B>) -> Option<Access> {
    let path = request.uri().path();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    // /api/v1/... or /apis/<group>/<version>/...
    let (group, rest) = match segments.as_slice() {
        ["api", _version, rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (*group, rest),
        _ => return None,
    };
    let rest = match rest {
        ["namespaces", _ns, rest @ ..] if !rest.is_empty() => rest,
        other => other,
    };
    let (resource, named) = match rest {
        [resource] => (resource.to_string(), false),
        [resource, _name] => (resource.to_string(), true),
        [resource, _name, sub] => (format!("{resource}/{sub}"), true),
        _ => return None,
    };
    let watching = request.uri().query().is_some_and(|q| q.split('&').any(|p| p == "watch=true"));
    let verb = match *request.method() {
        Method::GET if watching => "watch",
        Method::GET if named => "get",
        Method::GET => "list",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE if named => "delete",
        Method::DELETE => "deletecollection",
        _ => return None,
    };
    Some(Access { group: group.to_owned(), resource, verb: verb.to_owned() })
}

/// A set of permissions, printable one per line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccessSet(pub BTreeSet<Access>);

impl fmt::Display for AccessSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for a in &self.0 {
            writeln!(f, "  {a}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
pub mod recorded {
    //! Runs each component's Kubernetes code against a fake apiserver that answers every call
    //! plausibly and records the permission it needed.

    use std::sync::Arc;
    use std::time::Duration;

    use http::{Request, Response, StatusCode};
    use kube::Client;
    use kube::client::Body;
    use parking_lot::Mutex;

    use super::*;
    use crate::catalog::ClusterRejection;
    use crate::events::{REASON_IMAGE, RejectionEvents, WarningEvents};
    use crate::{ClusterView, LeaderElector, scale};

    /// A fake apiserver: a client whose requests are answered by `answer` and recorded.
    fn fake_apiserver() -> (Client, Arc<Mutex<AccessSet>>, tokio::task::JoinHandle<()>) {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let seen = Arc::new(Mutex::new(AccessSet::default()));
        let record = seen.clone();
        let server = tokio::spawn(async move {
            let lease = Arc::new(Mutex::new(None::<serde_json::Value>));
            while let Some((request, send)) = handle.next_request().await {
                if let Some(access) = access_of(&request) {
                    record.lock().0.insert(access.clone());
                    let body = request.into_body().collect_bytes().await.unwrap_or_default();
                    send.send_response(answer(&access, &body, &lease));
                }
            }
        });
        (Client::new(service, "default"), seen, server)
    }

    fn json(status: StatusCode, value: serde_json::Value) -> Response<Body> {
        let bytes = serde_json::to_vec(&value).unwrap_or_default();
        Response::builder().status(status).body(Body::from(bytes)).unwrap_or_else(|_| Response::new(Body::empty()))
    }

    fn answer(access: &Access, body: &[u8], lease: &Mutex<Option<serde_json::Value>>) -> Response<Body> {
        let sent: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
        match (access.resource.as_str(), access.verb.as_str()) {
            // A watch that ends at once: the watcher re-lists after a backoff.
            (_, "watch") => Response::new(Body::empty()),
            (resource, "list") => json(
                StatusCode::OK,
                serde_json::json!({"kind": format!("{resource}List"), "apiVersion": "v1",
                    "metadata": {"resourceVersion": "1"}, "items": []}),
            ),
            ("deployments/scale", "patch") => json(
                StatusCode::OK,
                serde_json::json!({"apiVersion": "autoscaling/v1", "kind": "Scale",
                    "metadata": {"name": "f", "namespace": "ns"}, "spec": {"replicas": 1}}),
            ),
            ("leases", "get") => match lease.lock().clone() {
                Some(current) => json(StatusCode::OK, current),
                None => json(
                    StatusCode::NOT_FOUND,
                    serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                        "reason": "NotFound", "code": 404, "message": "not found"}),
                ),
            },
            ("leases", "create" | "update") => {
                let mut stored = sent.clone();
                stored["metadata"]["resourceVersion"] = "2".into();
                *lease.lock() = Some(stored.clone());
                json(StatusCode::OK, stored)
            }
            // Events and anything else: echo what was sent.
            _ => json(StatusCode::OK, sent),
        }
    }

    /// What reading the cluster costs: proxy and Wavelet do only this.
    pub async fn cluster_view() -> AccessSet {
        let (client, seen, server) = fake_apiserver();
        let (view, drive) = ClusterView::start(client, None);
        let drive = tokio::spawn(drive);
        let _ = tokio::time::timeout(Duration::from_secs(5), view.ready()).await;
        drive.abort();
        server.abort();
        seen.lock().clone()
    }

    /// Deployment `ns/f`, as events name it.
    fn deployment_ref() -> k8s_openapi::api::core::v1::ObjectReference {
        k8s_openapi::api::core::v1::ObjectReference {
            api_version: Some("apps/v1".into()),
            kind: Some("Deployment".into()),
            name: Some("f".into()),
            namespace: Some("ns".into()),
            uid: Some("u".into()),
            ..Default::default()
        }
    }

    /// What a Wavelet does: read the cluster, and report a function whose image it cannot use
    /// on its Deployment, twice (create, then patch of the series).
    pub async fn wavelet() -> AccessSet {
        let (client, seen, server) = fake_apiserver();
        let (view, drive) = ClusterView::start(client.clone(), None);
        let drive = tokio::spawn(drive);
        let _ = tokio::time::timeout(Duration::from_secs(5), view.ready()).await;
        let events = WarningEvents::new(client, "wavelink-wavelet", "node-1".into());
        let deployment = deployment_ref();
        let _ = events.report(&deployment, REASON_IMAGE, "StartEmergencyInstance", "first").await;
        let _ = events.report(&deployment, REASON_IMAGE, "StartEmergencyInstance", "second").await;
        drive.abort();
        server.abort();
        seen.lock().clone()
    }

    /// Everything the controller does: read the cluster, scale, report a rejected function
    /// twice (create, then patch of the series), and hold, renew and release the Lease.
    pub async fn controller() -> AccessSet {
        let (client, seen, server) = fake_apiserver();
        let (view, drive) = ClusterView::start(client.clone(), None);
        let drive = tokio::spawn(drive);
        let _ = tokio::time::timeout(Duration::from_secs(5), view.ready()).await;
        let _ = scale::set_replicas(&client, "ns", "f", 1).await;
        let events = RejectionEvents::new(client.clone(), "me".into());
        let mut rejection = ClusterRejection {
            rejected: wavelink_core::RejectedFunction { function: "ns/f".into(), error: "first".into() },
            deployment: deployment_ref(),
        };
        let _ = events.report(std::slice::from_ref(&rejection)).await;
        rejection.rejected.error = "second".into();
        let _ = events.report(std::slice::from_ref(&rejection)).await;
        let leader = LeaderElector::new(client, "wavelink-system", "lease", "me".into(), Duration::from_secs(15));
        let _ = leader.round().await;
        let _ = leader.round().await;
        leader.release().await;
        drive.abort();
        server.abort();
        seen.lock().clone()
    }

    /// The permissions the RBAC objects named `roles` in `manifests/<file>` grant.
    fn granted(file: &str, roles: &[&str]) -> AccessSet {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests").join(file);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut set = AccessSet::default();
        for document in serde_yaml_ng::Deserializer::from_str(&text) {
            let value = <serde_json::Value as serde::Deserialize>::deserialize(document).expect("YAML");
            let kind = value["kind"].as_str().unwrap_or_default();
            let name = value["metadata"]["name"].as_str().unwrap_or_default();
            if !matches!(kind, "ClusterRole" | "Role") || !roles.contains(&name) {
                continue;
            }
            for rule in value["rules"].as_array().into_iter().flatten() {
                let list = |key: &str| -> Vec<String> {
                    rule[key].as_array().into_iter().flatten().filter_map(|v| v.as_str().map(str::to_owned)).collect()
                };
                for group in list("apiGroups") {
                    for resource in list("resources") {
                        for verb in list("verbs") {
                            set.0.insert(Access { group: group.clone(), resource: resource.clone(), verb });
                        }
                    }
                }
            }
        }
        set
    }

    #[tokio::test]
    async fn each_components_rbac_grants_exactly_the_calls_its_code_makes() {
        let view = cluster_view().await;
        let grants = granted("proxy.yaml", &["wavelink-proxy"]);
        assert_eq!(grants, view, "wavelink-proxy grants:\n{grants}but its code calls:\n{view}");
        let wavelet = wavelet().await;
        let grants = granted("wavelet.yaml", &["wavelink-wavelet"]);
        assert_eq!(grants, wavelet, "wavelink-wavelet grants:\n{grants}but its code calls:\n{wavelet}");
        let controller = controller().await;
        let grants = granted("controller.yaml", &["wavelink-controller", "wavelink-controller-lease"]);
        assert_eq!(grants, controller, "the controller's roles grant:\n{grants}but its code calls:\n{controller}");
    }

    #[tokio::test]
    async fn the_recorded_calls_are_the_expected_ones() {
        let view = cluster_view().await;
        let names: Vec<String> = view.0.iter().map(ToString::to_string).collect();
        assert_eq!(
            names,
            [
                "list apps/deployments",
                "watch apps/deployments",
                "list discovery.k8s.io/endpointslices",
                "watch discovery.k8s.io/endpointslices"
            ]
        );
        let controller = controller().await;
        for expected in [
            "patch apps/deployments/scale",
            "create events.k8s.io/events",
            "patch events.k8s.io/events",
            "get coordination.k8s.io/leases",
            "create coordination.k8s.io/leases",
            "update coordination.k8s.io/leases",
        ] {
            assert!(controller.0.iter().any(|a| a.to_string() == expected), "{expected} not seen in:\n{controller}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(method: Method, uri: &str) -> String {
        let request = Request::builder().method(method).uri(uri).body(()).unwrap();
        access_of(&request).map(|a| a.to_string()).unwrap_or_default()
    }

    #[test]
    fn requests_map_to_rbac_verbs_and_resources() {
        assert_eq!(access(Method::GET, "/apis/apps/v1/deployments?labelSelector=x"), "list apps/deployments");
        assert_eq!(
            access(Method::GET, "/apis/apps/v1/deployments?watch=true&resourceVersion=1"),
            "watch apps/deployments"
        );
        assert_eq!(
            access(Method::PATCH, "/apis/apps/v1/namespaces/a/deployments/f/scale"),
            "patch apps/deployments/scale"
        );
        assert_eq!(
            access(Method::GET, "/apis/coordination.k8s.io/v1/namespaces/s/leases/l"),
            "get coordination.k8s.io/leases"
        );
        assert_eq!(
            access(Method::PUT, "/apis/coordination.k8s.io/v1/namespaces/s/leases/l"),
            "update coordination.k8s.io/leases"
        );
        assert_eq!(access(Method::POST, "/api/v1/namespaces/a/events"), "create core/events");
        assert_eq!(access(Method::GET, "/api/v1/namespaces"), "list core/namespaces");
    }
}
