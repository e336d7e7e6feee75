//! Authenticated internal traffic: a shared token, read from a file (on Kubernetes a Secret
//! mounted as a volume; `wavelink up` writes one for its components), that proxy → Wavelet
//! requests and every mutating admin call carry and their receivers check.
//!
//! A token file holds one token per line. Callers send the first; receivers accept any, so a
//! token is rotated without a restart or a refused call: add the new one as a second line, then
//! (once every component has read it, within [`RELOAD_INTERVAL`]) move it first, then remove the
//! old one. The file is read again at most once per [`RELOAD_INTERVAL`], when a token is next
//! needed, so a Secret's update reaches running components.
//!
//! Without a token file, checks pass and nothing is sent: components started by hand on a
//! single-user machine keep working; each then logs once that it accepts anyone.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::{Response, StatusCode};
use tracing::warn;

/// Proxy → Wavelet: the token, on the data path (a client's own `Authorization` header goes to
/// the function untouched). An internal header: the proxy removes a client's, the Wavelet
/// removes it before the instance.
pub const TOKEN_HEADER: &str = "x-wavelink-token";

/// How often a token file is read again.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(10);

/// Shortest token accepted: a guessable one protects nothing.
const MIN_TOKEN_LEN: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("reading the token file {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("the token file {0} has no token of at least {MIN_TOKEN_LEN} visible characters")]
    NoToken(PathBuf),
}

/// The tokens of one file, read again now and then.
pub struct InternalAuth {
    /// `None`: no token configured, nothing checked.
    file: Option<PathBuf>,
    tokens: ArcSwap<Vec<String>>,
    started: Instant,
    /// When the file was last read, in ms since `started`.
    read_at_ms: AtomicU64,
}

impl std::fmt::Debug for InternalAuth {
    // Never the tokens themselves.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InternalAuth").field("file", &self.file).finish_non_exhaustive()
    }
}

impl InternalAuth {
    /// No token: every check passes. Logs that once, as a warning.
    pub fn open(component: &str) -> Arc<Self> {
        warn!(
            component,
            "no internal token file (internal-token-file, --token-file): admin changes and \
                          Wavelet requests are accepted from anyone who can reach the ports"
        );
        Arc::new(Self::unchecked())
    }

    /// No token, without the warning: the state before a component's token is set.
    pub fn unchecked() -> Self {
        InternalAuth {
            file: None,
            tokens: ArcSwap::from_pointee(Vec::new()),
            started: Instant::now(),
            read_at_ms: AtomicU64::new(0),
        }
    }

    /// The tokens of `file`, which must hold at least one.
    pub fn from_file(file: &Path) -> Result<Arc<Self>, AuthError> {
        let tokens = read_tokens(file)?;
        Ok(Arc::new(InternalAuth {
            file: Some(file.to_owned()),
            tokens: ArcSwap::from_pointee(tokens),
            started: Instant::now(),
            read_at_ms: AtomicU64::new(0),
        }))
    }

    /// `from_file` when a file is given, else [`InternalAuth::open`].
    pub fn from_optional_file(file: Option<&Path>, component: &str) -> Result<Arc<Self>, AuthError> {
        match file {
            Some(file) => Self::from_file(file),
            None => Ok(Self::open(component)),
        }
    }

    pub fn is_checked(&self) -> bool {
        self.file.is_some()
    }

    /// The current tokens, the file read again if it is due.
    fn tokens(&self) -> Arc<Vec<String>> {
        if let Some(file) = &self.file {
            let now = self.started.elapsed().as_millis() as u64;
            let last = self.read_at_ms.load(Relaxed);
            let due = now.saturating_sub(last) >= RELOAD_INTERVAL.as_millis() as u64;
            // One caller reads it; the others go on with what they have.
            if due && self.read_at_ms.compare_exchange(last, now, Relaxed, Relaxed).is_ok() {
                match read_tokens(file) {
                    Ok(tokens) => {
                        if **self.tokens.load() != tokens {
                            self.tokens.store(Arc::new(tokens));
                        }
                    }
                    // A file being replaced, or gone: keep the tokens we have.
                    Err(e) => warn!(error = %e, "cannot read the token file again; keeping the tokens read before"),
                }
            }
        }
        self.tokens.load_full()
    }

    /// The token to send (`None` without a token file).
    pub fn token(&self) -> Option<String> {
        self.file.as_ref()?;
        self.tokens().first().cloned()
    }

    /// `Authorization: Bearer …` to send on admin calls, if there is a token.
    pub fn authorization(&self) -> Option<String> {
        self.token().map(|t| format!("Bearer {t}"))
    }

    /// Whether a presented token is one of ours (always, without a token file).
    pub fn accepts(&self, presented: Option<&[u8]>) -> bool {
        if self.file.is_none() {
            return true;
        }
        let Some(presented) = presented else { return false };
        // Every token compared in full whatever matched: the time taken tells nothing.
        self.tokens().iter().fold(false, |found, token| constant_time_eq(token.as_bytes(), presented) | found)
    }

    /// Whether an `Authorization` header value carries one of our tokens as a bearer token.
    pub fn accepts_authorization(&self, header: Option<&[u8]>) -> bool {
        let bearer = header.and_then(|h| h.strip_prefix(b"Bearer ").or_else(|| h.strip_prefix(b"bearer ")));
        self.accepts(bearer)
    }

    /// `None` if the admin request may go on, else the 401 to answer.
    pub fn check_admin(&self, authorization: Option<&http::HeaderValue>) -> Option<Response<Vec<u8>>> {
        if self.accepts_authorization(authorization.map(|v| v.as_bytes())) {
            return None;
        }
        let body = b"this call changes state: send Authorization: Bearer <internal token>\n".to_vec();
        let mut response = Response::new(body);
        *response.status_mut() = StatusCode::UNAUTHORIZED;
        let headers = response.headers_mut();
        headers.insert(http::header::WWW_AUTHENTICATE, http::HeaderValue::from_static("Bearer realm=\"wavelink\""));
        headers.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain; charset=utf-8"));
        Some(response)
    }
}

fn read_tokens(file: &Path) -> Result<Vec<String>, AuthError> {
    let text = std::fs::read_to_string(file).map_err(|e| AuthError::Read(file.to_owned(), e))?;
    let tokens: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|t| t.len() >= MIN_TOKEN_LEN && t.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .collect();
    if tokens.is_empty() {
        return Err(AuthError::NoToken(file.to_owned()));
    }
    Ok(tokens)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Writes a new random token (256 bits, hex) to `file`, readable by its owner only.
pub fn write_new_token(file: &Path) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let token: String = (0..4).map(|_| format!("{:016x}", fastrand::u64(..))).collect();
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(file)?;
    f.write_all(token.as_bytes())?;
    f.write_all(b"\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("wavelink-auth-{name}-{}-{:x}", std::process::id(), fastrand::u32(..)));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("token")
    }

    #[test]
    fn only_a_listed_token_is_accepted_and_the_first_is_sent() {
        let file = scratch("listed");
        std::fs::write(&file, "first-token-0123456789\n  second-token-0123456789  \nshort\n").unwrap();
        let auth = InternalAuth::from_file(&file).unwrap();
        assert_eq!(auth.token().as_deref(), Some("first-token-0123456789"));
        assert!(auth.accepts(Some(b"first-token-0123456789")));
        assert!(auth.accepts(Some(b"second-token-0123456789")));
        for wrong in [&b"short"[..], b"", b"first-token-012345678", b"first-token-0123456789x"] {
            assert!(!auth.accepts(Some(wrong)), "{wrong:?}");
        }
        assert!(!auth.accepts(None));
        assert!(auth.accepts_authorization(Some(b"Bearer second-token-0123456789")));
        assert!(!auth.accepts_authorization(Some(b"Basic second-token-0123456789")));
        assert!(auth.check_admin(None).is_some_and(|r| r.status() == StatusCode::UNAUTHORIZED));
        let _ = std::fs::remove_dir_all(file.parent().unwrap());
    }

    #[test]
    fn a_file_without_a_usable_token_is_an_error_and_no_file_checks_nothing() {
        let file = scratch("empty");
        std::fs::write(&file, "short\n\n").unwrap();
        assert!(matches!(InternalAuth::from_file(&file), Err(AuthError::NoToken(_))));
        assert!(matches!(InternalAuth::from_file(&file.with_extension("missing")), Err(AuthError::Read(..))));
        let open = InternalAuth::unchecked();
        assert!(open.accepts(None) && open.check_admin(None).is_none());
        assert_eq!(open.authorization(), None);
        let _ = std::fs::remove_dir_all(file.parent().unwrap());
    }

    #[test]
    fn a_new_token_is_random_private_and_never_overwrites() {
        use std::os::unix::fs::PermissionsExt;
        let file = scratch("new");
        write_new_token(&file).unwrap();
        let auth = InternalAuth::from_file(&file).unwrap();
        assert_eq!(auth.token().map(|t| t.len()), Some(64));
        assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(write_new_token(&file).is_err(), "an existing token is kept");
        let _ = std::fs::remove_dir_all(file.parent().unwrap());
    }

    #[test]
    fn a_rotated_file_is_read_again_once_due() {
        let file = scratch("rotate");
        std::fs::write(&file, "old-token-0123456789\n").unwrap();
        // Started two intervals ago and never read since: the next use reads the file.
        let Some(earlier) = Instant::now().checked_sub(RELOAD_INTERVAL * 2) else { return };
        let auth = InternalAuth {
            file: Some(file.clone()),
            tokens: ArcSwap::from_pointee(vec!["old-token-0123456789".to_owned()]),
            started: earlier,
            read_at_ms: AtomicU64::new(0),
        };
        std::fs::write(&file, "new-token-0123456789\nold-token-0123456789\n").unwrap();
        assert_eq!(auth.token().as_deref(), Some("new-token-0123456789"), "read again when due");
        assert!(auth.accepts(Some(b"old-token-0123456789")), "the old one still accepted during the rotation");
        // Within the interval the file is not read: a broken file changes nothing.
        std::fs::write(&file, "").unwrap();
        assert_eq!(auth.token().as_deref(), Some("new-token-0123456789"));
        let _ = std::fs::remove_dir_all(file.parent().unwrap());
    }
}
