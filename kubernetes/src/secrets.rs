//! `kubernetes.io/tls` Secrets the proxy serves, watched by name: a renewed certificate (what
//! cert-manager writes) reaches the TLS listener within the watch's latency, with no restart.
//! Each Secret has a watch of its own (a field selector on its name), so the proxy needs read
//! access to those Secrets only, not to every Secret of a namespace.

use std::future::Future;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use tracing::warn;

use crate::catalog::NamespacedName;

/// The PEM certificate chain and key of a `kubernetes.io/tls` Secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSecret {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

/// What a Secret holds now, as far as TLS goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretState {
    Usable(TlsSecret),
    /// Missing, deleted, or without `tls.crt` and `tls.key`: serve nothing from it.
    Unusable(String),
}

/// Reads `tls.crt` and `tls.key`.
pub fn tls_secret(secret: &Secret) -> SecretState {
    let data = secret.data.as_ref();
    let field = |key: &str| data.and_then(|d| d.get(key)).map(|b| b.0.clone()).filter(|b| !b.is_empty());
    match (field("tls.crt"), field("tls.key")) {
        (Some(cert_pem), Some(key_pem)) => SecretState::Usable(TlsSecret { cert_pem, key_pem }),
        _ => SecretState::Unusable("the Secret has no tls.crt and tls.key".into()),
    }
}

/// Watches one Secret; calls `on_change` with its state after the first list and after every
/// change. Runs until dropped; the watch retries with backoff and the last state stays meanwhile.
pub fn watch_tls_secret(
    client: Client,
    secret: NamespacedName,
    mut on_change: impl FnMut(&NamespacedName, SecretState) + Send + 'static,
) -> impl Future<Output = ()> + Send + 'static {
    let api: Api<Secret> = Api::namespaced(client, &secret.namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={}", secret.name));
    async move {
        let mut events = std::pin::pin!(watcher::watcher(api, config).default_backoff());
        // A (re)list in progress: whether the Secret was in it.
        let mut listed: Option<SecretState> = None;
        while let Some(event) = events.next().await {
            match event {
                Ok(Event::Init) => listed = Some(SecretState::Unusable("the Secret does not exist".into())),
                Ok(Event::InitApply(object)) => listed = Some(tls_secret(&object)),
                Ok(Event::InitDone) => {
                    if let Some(state) = listed.take() {
                        on_change(&secret, state);
                    }
                }
                Ok(Event::Apply(object)) => on_change(&secret, tls_secret(&object)),
                Ok(Event::Delete(_)) => on_change(&secret, SecretState::Unusable("the Secret was deleted".into())),
                Err(e) => warn!(secret = %secret, error = %e, "watching a TLS Secret failed; retrying"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::ByteString;

    use super::*;

    #[test]
    fn a_tls_secret_gives_its_pem_and_anything_else_is_unusable() {
        let mut data = BTreeMap::new();
        data.insert("tls.crt".to_owned(), ByteString(b"CERT".to_vec()));
        data.insert("tls.key".to_owned(), ByteString(b"KEY".to_vec()));
        let secret = Secret { data: Some(data.clone()), ..Default::default() };
        assert_eq!(
            tls_secret(&secret),
            SecretState::Usable(TlsSecret { cert_pem: b"CERT".to_vec(), key_pem: b"KEY".to_vec() })
        );
        data.remove("tls.key");
        assert!(matches!(tls_secret(&Secret { data: Some(data), ..Default::default() }), SecretState::Unusable(_)));
        assert!(matches!(tls_secret(&Secret::default()), SecretState::Unusable(_)));
    }
}
