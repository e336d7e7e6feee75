//! TLS policy that needs no TLS library: which certificate a server name gets (exact names,
//! then `*.<domain>` wildcards of one label, as RFC 6125 §6.4.3 and every browser match them),
//! and where a plaintext request is redirected to.

use std::collections::HashMap;

/// Values (certificates) by the host names they serve.
#[derive(Debug, Clone)]
pub struct NameTable<T> {
    exact: HashMap<String, T>,
    /// By the domain under the wildcard: `*.example.com` is kept as `example.com`.
    wildcard: HashMap<String, T>,
}

impl<T> Default for NameTable<T> {
    fn default() -> Self {
        NameTable { exact: HashMap::new(), wildcard: HashMap::new() }
    }
}

impl<T> NameTable<T> {
    /// Adds `value` for `name` (`host.example.com` or `*.example.com`); the first value given a
    /// name keeps it, so the order of sources decides, not the order of a hash map. Returns
    /// whether the name was taken (false: a malformed name, or one already served).
    pub fn insert(&mut self, name: &str, value: T) -> bool {
        let name = normalize(name);
        let (table, key) = match name.strip_prefix("*.") {
            Some(domain) if is_host_name(domain) => (&mut self.wildcard, domain.to_owned()),
            Some(_) => return false,
            None if is_host_name(&name) => (&mut self.exact, name),
            None => return false,
        };
        match table.entry(key) {
            std::collections::hash_map::Entry::Occupied(_) => false,
            std::collections::hash_map::Entry::Vacant(entry) => {
                entry.insert(value);
                true
            }
        }
    }

    /// The value for a server name: its exact name, else the wildcard of its parent domain (one
    /// label only: `*.example.com` serves `a.example.com`, not `a.b.example.com` nor
    /// `example.com`).
    pub fn lookup(&self, server_name: &str) -> Option<&T> {
        let name = normalize(server_name);
        if let Some(value) = self.exact.get(&name) {
            return Some(value);
        }
        let (_, parent) = name.split_once('.')?;
        self.wildcard.get(parent)
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcard.is_empty()
    }

    pub fn len(&self) -> usize {
        self.exact.len() + self.wildcard.len()
    }
}

/// Lower case, without a trailing dot: how names compare.
fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

/// Dot-separated labels of letters, digits, '-' and '_' (names a certificate may hold).
fn is_host_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// The `Location` of a redirect to HTTPS: the request's host without its port, the HTTPS port
/// unless it is 443, and the path and query unchanged. `None` when the host is missing or
/// unusable (a redirect must not point anywhere the client did not name).
pub fn https_location(host: Option<&str>, path_and_query: &str, https_port: u16) -> Option<String> {
    let host = host?.trim();
    let bare = if let Some(rest) = host.strip_prefix('[') {
        // An IPv6 literal keeps its brackets.
        let end = rest.find(']')?;
        &host[..end + 2]
    } else {
        host.split(':').next()?
    };
    if bare.is_empty() || bare.bytes().any(|b| b.is_ascii_whitespace() || b == b'/' || b == b'@') {
        return None;
    }
    let path = if path_and_query.starts_with('/') { path_and_query } else { "/" };
    Some(match https_port {
        443 => format!("https://{bare}{path}"),
        port => format!("https://{bare}:{port}{path}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_names_win_over_wildcards_and_wildcards_cover_one_label() {
        let mut table = NameTable::default();
        assert!(table.insert("*.fn.example.com", "wildcard"));
        assert!(table.insert("special.fn.example.com", "exact"));
        assert_eq!(table.lookup("special.fn.example.com"), Some(&"exact"));
        assert_eq!(table.lookup("hello.fn.example.com"), Some(&"wildcard"));
        assert_eq!(table.lookup("a.b.fn.example.com"), None, "one label only");
        assert_eq!(table.lookup("fn.example.com"), None, "the wildcard does not cover its domain");
        assert_eq!(table.lookup("other.org"), None);
    }

    #[test]
    fn names_compare_without_case_or_a_trailing_dot() {
        let mut table = NameTable::default();
        table.insert("Hello.Example.COM.", 1);
        assert_eq!(table.lookup("hello.example.com"), Some(&1));
        assert_eq!(table.lookup("HELLO.example.com."), Some(&1));
    }

    #[test]
    fn the_first_source_of_a_name_keeps_it_and_malformed_names_are_refused() {
        let mut table = NameTable::default();
        assert!(table.insert("a.example.com", 1));
        assert!(!table.insert("a.example.com", 2));
        assert_eq!(table.lookup("a.example.com"), Some(&1));
        for bad in ["", "*.", "a..b", "*.*.example.com", "a b.example.com", "a.example.com/x"] {
            assert!(!table.insert(bad, 3), "{bad:?} accepted");
        }
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn redirects_keep_host_path_and_query_and_name_the_https_port() {
        assert_eq!(
            https_location(Some("hello.default.example.com:8080"), "/a/b?c=d", 8443).as_deref(),
            Some("https://hello.default.example.com:8443/a/b?c=d")
        );
        assert_eq!(https_location(Some("h.example.com"), "/", 443).as_deref(), Some("https://h.example.com/"));
        assert_eq!(https_location(Some("[::1]:8080"), "/x", 8443).as_deref(), Some("https://[::1]:8443/x"));
        assert_eq!(https_location(Some("h.example.com"), "*", 443).as_deref(), Some("https://h.example.com/"));
        assert_eq!(https_location(None, "/", 443), None);
        assert_eq!(https_location(Some("evil.com/x@"), "/", 443), None);
        assert_eq!(https_location(Some(""), "/", 443), None);
    }
}
