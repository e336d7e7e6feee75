//! Whether a request that failed on its upstream may be sent again: Pingora's own rule (the
//! default `ProxyHttp::error_while_proxy`), for the services that override that hook to add
//! their own handling.

use pingora_core::Error;
use pingora_proxy::Session;

/// Never retries a request that is not idempotent or whose body can no longer be replayed;
/// otherwise an error that left the choice open is retried only if it came from a reused
/// connection (one the upstream may have closed meanwhile).
pub fn retry_if_replayable(e: &mut Error, session: &Session, client_reused: bool) {
    if !session.req_header().method.is_idempotent() || session.as_ref().retry_buffer_truncated() {
        e.set_retry(false);
    } else {
        e.retry.decide_reuse(client_reused);
    }
}
