//! Leader election on a `coordination.k8s.io/v1` Lease, so that of several controller replicas
//! exactly one writes. The rules are [`wavelink_core::lease`]; this is the reading and writing.
//!
//! Every write carries the resourceVersion read, so of two candidates racing for an expired lease
//! one gets 409 Conflict and stays a follower. A leader acts only until shortly before its lease
//! could expire, so a partitioned leader stops before anyone else may start.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, PostParams};
use tracing::{debug, info, warn};
use wavelink_core::lease::{LeaseAction, LeaseRecord, acting_until_ms, decide};

pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
    /// Unix milliseconds until which this replica may act as leader (0: not leader).
    acting_until_ms: AtomicU64,
}

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("lease {name}: {source}")]
    Api { name: String, source: kube::Error },
}

impl LeaderElector {
    pub fn new(client: Client, namespace: &str, name: &str, identity: String, duration: Duration) -> Self {
        LeaderElector {
            api: Api::namespaced(client, namespace),
            name: name.to_owned(),
            identity,
            duration: duration.max(Duration::from_secs(1)),
            acting_until_ms: AtomicU64::new(0),
        }
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    pub fn is_leader(&self) -> bool {
        now_ms() < self.acting_until_ms.load(Ordering::Acquire)
    }

    /// How often to try: a third of the lease, as client-go's defaults (15 s lease, 5 s retry
    /// after a 10 s renew deadline) roughly do.
    pub fn retry_interval(&self) -> Duration {
        self.duration / 3
    }

    /// Runs elections until the future is dropped.
    pub async fn run(&self) {
        loop {
            if let Err(e) = self.round().await {
                warn!(error = %e, "leader election round failed");
            }
            tokio::time::sleep(self.retry_interval()).await;
        }
    }

    /// One read-decide-write round. Returns whether this replica leads afterwards.
    pub async fn round(&self) -> Result<bool, LeaseError> {
        let api_error = |source| LeaseError::Api { name: self.name.clone(), source };
        let now = now_ms();
        let current = self.api.get_opt(&self.name).await.map_err(api_error)?;
        let record = current.as_ref().map(record_of);
        let action = decide(record.as_ref(), &self.identity, now);
        if let LeaseAction::Follow { holder } = &action {
            if self.acting_until_ms.swap(0, Ordering::AcqRel) != 0 {
                info!(holder, "lost leadership");
            }
            debug!(holder, "following");
            return Ok(false);
        }
        let write = match current {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta { name: Some(self.name.clone()), ..Default::default() },
                    spec: Some(self.spec(now, None, 0)),
                };
                self.api.create(&PostParams::default(), &lease).await
            }
            Some(mut lease) => {
                lease.spec = Some(match action {
                    LeaseAction::Renew => LeaseSpec {
                        renew_time: Some(micro_time(now)),
                        lease_duration_seconds: Some(self.duration_seconds()),
                        holder_identity: Some(self.identity.clone()),
                        ..lease.spec.take().unwrap_or_default()
                    },
                    LeaseAction::Acquire { transitions } => self.spec(now, Some(now), transitions),
                    // Decided on a lease that exists, so never Create or Follow here.
                    LeaseAction::Create | LeaseAction::Follow { .. } => self.spec(now, Some(now), 0),
                });
                // The resourceVersion read stays in the metadata: a concurrent write makes ours 409.
                self.api.replace(&self.name, &PostParams::default(), &lease).await
            }
        };
        match write {
            Ok(_) => {
                let was_leader = self.is_leader();
                self.acting_until_ms.store(acting_until_ms(now, self.duration), Ordering::Release);
                if !was_leader {
                    info!(lease = %self.name, identity = %self.identity, "became leader");
                }
                Ok(true)
            }
            // Someone wrote between our read and write: they won this round.
            Err(kube::Error::Api(status)) if status.code == 409 => {
                self.acting_until_ms.store(0, Ordering::Release);
                debug!("lost a race for the lease");
                Ok(false)
            }
            Err(e) => Err(api_error(e)),
        }
    }

    /// Gives the lease up (on shutdown), so another replica takes over at once instead of after
    /// the lease runs out.
    pub async fn release(&self) {
        if !self.is_leader() {
            return;
        }
        self.acting_until_ms.store(0, Ordering::Release);
        let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await else { return };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.renew_time = None;
        match self.api.replace(&self.name, &PostParams::default(), &lease).await {
            Ok(_) => info!(lease = %self.name, "released leadership"),
            Err(e) => warn!(error = %e, "releasing the lease failed; it will expire"),
        }
    }

    fn spec(&self, now: u64, acquired: Option<u64>, transitions: u32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.duration_seconds()),
            acquire_time: Some(micro_time(acquired.unwrap_or(now))),
            renew_time: Some(micro_time(now)),
            lease_transitions: Some(i32::try_from(transitions).unwrap_or(i32::MAX)),
            ..Default::default()
        }
    }

    fn duration_seconds(&self) -> i32 {
        i32::try_from(self.duration.as_secs().max(1)).unwrap_or(i32::MAX)
    }
}

fn record_of(lease: &Lease) -> LeaseRecord {
    let spec = lease.spec.as_ref();
    LeaseRecord {
        holder: spec.and_then(|s| s.holder_identity.clone()),
        renewed_at_ms: spec.and_then(|s| s.renew_time.as_ref()).and_then(|t| u64::try_from(t.0.as_millisecond()).ok()),
        duration: Duration::from_secs(
            spec.and_then(|s| s.lease_duration_seconds).and_then(|s| u64::try_from(s).ok()).unwrap_or(15),
        ),
        transitions: spec.and_then(|s| s.lease_transitions).and_then(|t| u32::try_from(t).ok()).unwrap_or(0),
    }
}

fn micro_time(ms: u64) -> MicroTime {
    MicroTime(Timestamp::from_millisecond(i64::try_from(ms).unwrap_or(i64::MAX)).unwrap_or(Timestamp::UNIX_EPOCH))
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Request, Response, StatusCode};
    use kube::client::Body;
    use tower_test::mock::Handle;

    fn lease_json(holder: &str, renewed: Timestamp) -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "l", "namespace": "ns", "resourceVersion": "7"},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15, "renewTime": renewed.to_string(), "leaseTransitions": 2}
        })
    }

    fn respond(status: StatusCode, body: serde_json::Value) -> Response<Body> {
        Response::builder().status(status).body(Body::from(serde_json::to_vec(&body).unwrap())).unwrap()
    }

    fn elector() -> (LeaderElector, Handle<Request<Body>, Response<Body>>) {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(service, "ns");
        (LeaderElector::new(client, "ns", "l", "me".into(), Duration::from_secs(15)), handle)
    }

    #[tokio::test]
    async fn a_valid_lease_of_another_replica_is_only_read() {
        let (elector, mut handle) = elector();
        let server = tokio::spawn(async move {
            let (request, send) = handle.next_request().await.expect("GET");
            assert_eq!(request.method(), http::Method::GET);
            assert_eq!(request.uri().path(), "/apis/coordination.k8s.io/v1/namespaces/ns/leases/l");
            send.send_response(respond(StatusCode::OK, lease_json("other", Timestamp::now())));
            handle
        });
        assert!(!elector.round().await.expect("round"));
        assert!(!elector.is_leader());
        drop(server.await.expect("server"));
    }

    #[tokio::test]
    async fn losing_the_race_for_an_expired_lease_leaves_a_follower() {
        let (elector, mut handle) = elector();
        let server = tokio::spawn(async move {
            let (_, send) = handle.next_request().await.expect("GET");
            let long_ago = Timestamp::from_second(1_000_000).unwrap();
            send.send_response(respond(StatusCode::OK, lease_json("other", long_ago)));
            let (request, send) = handle.next_request().await.expect("PUT");
            assert_eq!(request.method(), http::Method::PUT);
            let body = request.into_body().collect_bytes().await.expect("body");
            let lease: serde_json::Value = serde_json::from_slice(&body).expect("json");
            assert_eq!(lease["metadata"]["resourceVersion"], "7", "the write is guarded by what was read");
            assert_eq!(lease["spec"]["holderIdentity"], "me");
            assert_eq!(lease["spec"]["leaseTransitions"], 3);
            let conflict = serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                "message": "the object has been modified", "reason": "Conflict", "code": 409});
            send.send_response(respond(StatusCode::CONFLICT, conflict));
        });
        assert!(!elector.round().await.expect("a conflict is not an error"));
        assert!(!elector.is_leader());
        server.await.expect("server");
    }

    #[tokio::test]
    async fn a_missing_lease_is_created_and_makes_a_leader() {
        let (elector, mut handle) = elector();
        let server = tokio::spawn(async move {
            let (_, send) = handle.next_request().await.expect("GET");
            let not_found = serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                "message": "not found", "reason": "NotFound", "code": 404});
            send.send_response(respond(StatusCode::NOT_FOUND, not_found));
            let (request, send) = handle.next_request().await.expect("POST");
            assert_eq!(request.method(), http::Method::POST);
            send.send_response(respond(StatusCode::CREATED, lease_json("me", Timestamp::now())));
        });
        assert!(elector.round().await.expect("round"));
        assert!(elector.is_leader());
        server.await.expect("server");
    }
}
