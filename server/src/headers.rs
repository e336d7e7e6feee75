//! Request headers the proxy and the Wavelet rewrite on the way to an instance.

use pingora_http::RequestHeader;
use wavelink_core::forwarded::is_internal_header;

/// Removes every `x-wavelink-*` header: the platform's own, never a client's to set nor an
/// instance's to see (the proxy removes the client's; the Wavelet its own from the proxy).
pub fn remove_internal_headers(request: &mut RequestHeader) {
    // Collected first (the map cannot change while iterated); empty, and not allocated, when
    // there are none, as for almost every request.
    let internal: Vec<http::HeaderName> =
        request.headers.keys().filter(|name| is_internal_header(name.as_str())).cloned().collect();
    for name in internal {
        request.remove_header(&name);
    }
}
