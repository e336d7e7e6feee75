//! Names on the wire between clients, the proxy and Wavelets.

/// Proxy → Wavelet: which function a forwarded request is for (`<namespace>/<name>`).
pub const FUNCTION_HEADER: &str = "x-wavelink-function";
/// Proxy → client: which track served the request (`regular` or `emergency`).
pub const TRACK_HEADER: &str = "x-wavelink-track";
/// Wavelet → proxy, on a 503: why it turned the request away; [`WAVELET_FULL`] means "try
/// another Wavelet".
pub const WAVELET_HEADER: &str = "x-wavelink-wavelet";
/// The Wavelet is at its node-wide instance cap.
pub const WAVELET_FULL: &str = "full";
/// The Wavelet cannot start this function yet (its image is being pulled on that node); other
/// functions are not affected.
pub const WAVELET_UNAVAILABLE: &str = "unavailable";

/// gRPC requests are recognised by their content type (`application/grpc`, `application/grpc+proto`, ...).
pub fn is_grpc(content_type: &[u8]) -> bool {
    content_type.len() >= 16 && content_type[..16].eq_ignore_ascii_case(b"application/grpc")
}

/// The gRPC status a gRPC client should see for an HTTP status the proxy answers with itself,
/// per gRPC's own mapping (doc/http-grpc-status-mapping.md): overload and unreachable instances
/// are UNAVAILABLE (14), which clients retry; an unknown function is UNIMPLEMENTED (12).
pub fn grpc_status_for_http(status: u16) -> u8 {
    match status {
        400 => 13,                   // INTERNAL
        401 => 16,                   // UNAUTHENTICATED
        403 => 7,                    // PERMISSION_DENIED
        404 => 12,                   // UNIMPLEMENTED
        429 | 502 | 503 | 504 => 14, // UNAVAILABLE
        _ => 2,                      // UNKNOWN
    }
}

/// A `grpc-message` value: percent-encoded as the gRPC HTTP/2 protocol asks (printable ASCII
/// except `%` as is, every other byte as `%XX`).
pub fn grpc_message(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.trim_end().bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The `code` label of request counters; `client_closed` is a client that hung up before an
/// answer (nginx's 499).
pub const STATUS_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "client_closed"];

/// Index into [`STATUS_CLASSES`] of a response status (`None`: no response was written).
pub fn status_class(status: Option<u16>) -> usize {
    match status {
        Some(s @ 100..=599) => usize::from(s / 100) - 1,
        _ => STATUS_CLASSES.len() - 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_requests_get_grpc_statuses_and_encoded_messages() {
        assert!(is_grpc(b"application/grpc"));
        assert!(is_grpc(b"Application/gRPC+proto"));
        assert!(!is_grpc(b"application/json"));
        assert!(!is_grpc(b"application/grp"));
        assert_eq!(grpc_status_for_http(503), 14);
        assert_eq!(grpc_status_for_http(504), 14);
        assert_eq!(grpc_status_for_http(404), 12);
        assert_eq!(grpc_status_for_http(418), 2);
        assert_eq!(grpc_message("no slot: 100% busy\n"), "no slot: 100%25 busy");
        assert_eq!(grpc_message("caf\u{e9}"), "caf%C3%A9");
    }

    #[test]
    fn status_classes_cover_every_code_and_no_response() {
        assert_eq!(STATUS_CLASSES[status_class(Some(101))], "1xx");
        assert_eq!(STATUS_CLASSES[status_class(Some(200))], "2xx");
        assert_eq!(STATUS_CLASSES[status_class(Some(404))], "4xx");
        assert_eq!(STATUS_CLASSES[status_class(Some(599))], "5xx");
        assert_eq!(STATUS_CLASSES[status_class(Some(600))], "client_closed");
        assert_eq!(STATUS_CLASSES[status_class(None)], "client_closed");
    }
}
