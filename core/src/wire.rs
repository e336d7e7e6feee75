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
    fn status_classes_cover_every_code_and_no_response() {
        assert_eq!(STATUS_CLASSES[status_class(Some(101))], "1xx");
        assert_eq!(STATUS_CLASSES[status_class(Some(200))], "2xx");
        assert_eq!(STATUS_CLASSES[status_class(Some(404))], "4xx");
        assert_eq!(STATUS_CLASSES[status_class(Some(599))], "5xx");
        assert_eq!(STATUS_CLASSES[status_class(Some(600))], "client_closed");
        assert_eq!(STATUS_CLASSES[status_class(None)], "client_closed");
    }
}
