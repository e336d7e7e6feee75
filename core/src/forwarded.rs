//! What a function learns about the request beyond what the client sent: who sent it
//! (`X-Forwarded-For`, `X-Forwarded-Proto`, RFC 7239 `Forwarded`) and a request id to find it
//! by in every log; and which client headers never reach it (the platform's own `x-wavelink-*`).

use std::net::IpAddr;

/// A request's id: kept if the client sent a usable one, made otherwise; passed to the function,
/// returned to the client and written in the access log.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Headers with this prefix are the platform's own (proxy ↔ Wavelet, proxy → client): a client
/// that sets one could pose as the proxy to a Wavelet or mislead a function, so the proxy
/// removes them from every request before adding its own.
pub const INTERNAL_HEADER_PREFIX: &str = "x-wavelink-";

/// Longest client request id kept (Heroku's router allows 20-200 characters; Envoy any UUID).
const MAX_REQUEST_ID: usize = 200;

/// Whether a header name (lower case, as `http` keeps them) is one of the platform's own.
pub fn is_internal_header(name: &str) -> bool {
    name.len() >= INTERNAL_HEADER_PREFIX.len()
        && name[..INTERNAL_HEADER_PREFIX.len()].eq_ignore_ascii_case(INTERNAL_HEADER_PREFIX)
}

/// Whether a client's `x-request-id` is kept: 1 to 200 visible ASCII characters, so it cannot
/// break a log line or a header.
pub fn usable_request_id(value: &[u8]) -> bool {
    !value.is_empty() && value.len() <= MAX_REQUEST_ID && value.iter().all(|b| b.is_ascii_graphic())
}

/// A new request id: 128 random bits as 32 hex digits.
pub fn new_request_id(rng: &mut fastrand::Rng) -> String {
    format!("{:032x}", rng.u128(..))
}

/// `X-Forwarded-For` towards the function: the client's address appended to what came (the
/// list a chain of proxies builds, nearest last).
pub fn x_forwarded_for(previous: Option<&str>, client: IpAddr) -> String {
    match previous.map(str::trim).filter(|p| !p.is_empty()) {
        Some(previous) => format!("{previous}, {client}"),
        None => client.to_string(),
    }
}

/// RFC 7239 `Forwarded` towards the function: this hop's element appended to what came.
pub fn forwarded(previous: Option<&str>, client: IpAddr, proto: &str, host: Option<&str>) -> String {
    let node = match client {
        IpAddr::V4(v4) => v4.to_string(),
        // An IPv6 node is bracketed and so must be quoted (RFC 7239 §6).
        IpAddr::V6(v6) => format!("\"[{v6}]\""),
    };
    let mut element = format!("for={node};proto={proto}");
    if let Some(host) = host {
        element.push_str(";host=");
        element.push_str(&token_or_quoted(host));
    }
    match previous.map(str::trim).filter(|p| !p.is_empty()) {
        Some(previous) => format!("{previous}, {element}"),
        None => element,
    }
}

/// A value as an RFC 7230 token when it is one, else as a quoted string.
fn token_or_quoted(value: &str) -> String {
    let tchar = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if !value.is_empty() && value.chars().all(tchar) {
        value.to_owned()
    } else {
        let escaped: String = value
            .chars()
            .filter(|c| *c == '\t' || (' '..='~').contains(c))
            .flat_map(|c| if c == '"' || c == '\\' { vec!['\\', c] } else { vec![c] })
            .collect();
        format!("\"{escaped}\"")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_headers_are_the_x_wavelink_ones_in_any_case() {
        assert!(is_internal_header("x-wavelink-function"));
        assert!(is_internal_header("X-WaveLink-Track"));
        assert!(!is_internal_header("x-wavelin"));
        assert!(!is_internal_header("x-request-id"));
    }

    #[test]
    fn a_client_request_id_is_kept_only_if_it_is_printable_and_short() {
        assert!(usable_request_id(b"abc-123"));
        assert!(usable_request_id(&[b'a'; 200]));
        assert!(!usable_request_id(&[b'a'; 201]));
        assert!(!usable_request_id(b""));
        assert!(!usable_request_id(b"two words"));
        assert!(!usable_request_id(b"line\nbreak"));
        let mut rng = fastrand::Rng::with_seed(7);
        let id = new_request_id(&mut rng);
        assert_eq!(id.len(), 32);
        assert!(usable_request_id(id.as_bytes()));
        assert_ne!(id, new_request_id(&mut rng));
    }

    #[test]
    fn forwarded_for_appends_the_client() {
        let client: IpAddr = "192.0.2.43".parse().unwrap();
        assert_eq!(x_forwarded_for(None, client), "192.0.2.43");
        assert_eq!(x_forwarded_for(Some(" "), client), "192.0.2.43");
        assert_eq!(x_forwarded_for(Some("203.0.113.7"), client), "203.0.113.7, 192.0.2.43");
    }

    #[test]
    fn forwarded_follows_rfc_7239() {
        let v4: IpAddr = "192.0.2.43".parse().unwrap();
        let v6: IpAddr = "2001:db8:cafe::17".parse().unwrap();
        assert_eq!(
            forwarded(None, v4, "http", Some("a.b.example.com")),
            "for=192.0.2.43;proto=http;host=a.b.example.com"
        );
        assert_eq!(forwarded(None, v6, "https", None), "for=\"[2001:db8:cafe::17]\";proto=https");
        assert_eq!(
            forwarded(Some("for=198.51.100.17"), v4, "http", Some("a.example.com:8080")),
            "for=198.51.100.17, for=192.0.2.43;proto=http;host=\"a.example.com:8080\""
        );
        assert_eq!(token_or_quoted("a\"b\\c"), "\"a\\\"b\\\\c\"");
    }
}
