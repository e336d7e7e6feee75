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
