//! Function identity: `<namespace>/<name>`, reachable at `<name>.<namespace>.<domain>`.

use std::fmt;

/// A function's identity. Both parts are DNS-1123 labels, as for Kubernetes objects, because they
/// become parts of a host name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FunctionId {
    pub namespace: String,
    pub name: String,
}

impl FunctionId {
    /// Builds an id, checking both parts are DNS-1123 labels.
    pub fn new(namespace: &str, name: &str) -> Result<Self, String> {
        check_dns_label("namespace", namespace)?;
        check_dns_label("name", name)?;
        Ok(FunctionId { namespace: namespace.to_owned(), name: name.to_owned() })
    }

    /// The host clients use: `<name>.<namespace>.<domain>`, lower case.
    pub fn host(&self, domain: &str) -> String {
        format!("{}.{}.{}", self.name, self.namespace, domain.trim_end_matches('.')).to_ascii_lowercase()
    }
}

impl fmt::Display for FunctionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Strips an optional `:port` and a trailing dot from a Host header value; `None` if nothing is
/// left. Case is kept: callers compare case-insensitively.
pub fn host_without_port(host: &str) -> Option<&str> {
    let host = match host.rsplit_once(':') {
        // "[::1]" splits into "[:" and "1]": not a port, so the host is kept whole.
        Some((name, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    (!host.is_empty()).then_some(host)
}

fn check_dns_label(what: &str, label: &str) -> Result<(), String> {
    let valid = !label.is_empty()
        && label.len() <= 63
        && label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !label.starts_with('-')
        && !label.ends_with('-');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{what} {label:?} is not a DNS label (1-63 lower-case letters, digits or '-', \
             starting and ending with a letter or digit)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_dns_labels() {
        assert!(FunctionId::new("default", "hello-2").is_ok());
        for bad in ["", "Hello", "-x", "x-", "a.b", "a_b", &"x".repeat(64)] {
            assert!(FunctionId::new("default", bad).is_err(), "{bad:?}");
            assert!(FunctionId::new(bad, "hello").is_err(), "{bad:?}");
        }
    }

    #[test]
    fn host_is_name_namespace_domain() {
        let id = FunctionId::new("prod", "resize").unwrap();
        assert_eq!(id.host("Example.COM."), "resize.prod.example.com");
        assert_eq!(id.to_string(), "prod/resize");
    }

    #[test]
    fn host_header_port_and_trailing_dot_are_stripped() {
        assert_eq!(host_without_port("a.b.example.com:8080"), Some("a.b.example.com"));
        assert_eq!(host_without_port("a.b.example.com."), Some("a.b.example.com"));
        assert_eq!(host_without_port("a.b.example.com"), Some("a.b.example.com"));
        assert_eq!(host_without_port("[::1]:80"), Some("[::1]"));
        assert_eq!(host_without_port(":80"), None);
        assert_eq!(host_without_port(""), None);
    }
}
