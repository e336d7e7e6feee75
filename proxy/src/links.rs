//! What the proxy reaches besides instances: the Wavelets it spills to and the controller it
//! asks for Regular Instances in `sync` mode. Shared by the router and every function.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tracing::debug;
use wavelink_core::FunctionId;
use wavelink_core::slots::SlotCounter;
use wavelink_server::auth::InternalAuth;

use crate::instance::PeerSettings;
use crate::wavelets::Wavelets;

const POKE_TIMEOUT: Duration = Duration::from_secs(2);

pub struct Links {
    pub wavelets: ArcSwap<Wavelets>,
    /// Admin addresses of the controllers, for `sync` mode: every replica is asked and only the
    /// leader writes, so the proxy need not know which one leads.
    pub controllers: ArcSwap<Vec<SocketAddr>>,
    epoch: Instant,
    /// Requests waiting for a slot, every function together, and the most allowed: one bound
    /// on what queued connections cost the proxy, whatever each function's queue-depth.
    queued: SlotCounter,
    pub max_queued: AtomicU32,
    /// How instances are reached (one setting for all: not a copy in every function).
    pub peer_settings: PeerSettings,
    /// The token sent to Wavelets and the controller, and required by the admin API's changes.
    pub auth: ArcSwap<InternalAuth>,
}

impl Links {
    pub fn new(wavelets: Wavelets, peer_settings: PeerSettings) -> Self {
        Links {
            peer_settings,
            auth: ArcSwap::from_pointee(InternalAuth::unchecked()),
            wavelets: ArcSwap::from_pointee(wavelets),
            controllers: ArcSwap::from_pointee(Vec::new()),
            epoch: Instant::now(),
            queued: SlotCounter::default(),
            max_queued: AtomicU32::new(u32::MAX),
        }
    }

    /// Takes a place in the proxy-wide queue; false when it is full.
    pub fn try_enqueue(&self) -> bool {
        self.queued.try_reserve(self.max_queued.load(Relaxed))
    }

    /// Gives a place in the proxy-wide queue back.
    pub fn dequeued(&self) {
        self.queued.release();
    }

    /// Microseconds since this proxy's links were made: the clock pokes are paced on.
    pub fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    /// `sync` mode: asks the controller for `want` Regular Instances now, without waiting for
    /// the answer (the request waits for the instance in the queue). The caller paces pokes
    /// (`core::autoscale::PokePacer`).
    pub fn poke(&self, function: &FunctionId, want: u32) {
        let controllers = self.controllers.load_full();
        if controllers.is_empty() {
            return;
        }
        let path = format!("/v1/functions/{}/{}/poke", function.namespace, function.name);
        let body = format!("{{\"want\":{want}}}").into_bytes();
        let auth = self.auth.load_full();
        tokio::spawn(async move {
            for &controller in controllers.iter() {
                let call = wavelink_server::client::call_authorized(
                    controller,
                    http::Method::POST,
                    &path,
                    Some(body.clone()),
                    &auth,
                    POKE_TIMEOUT,
                );
                if let Err(e) = call.await {
                    debug!(%controller, error = %e, "poking the controller failed");
                }
            }
        });
    }
}
