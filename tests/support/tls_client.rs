//! A TLS client for tests: self-signed certificates made with rcgen, and rustls connections
//! that record the certificate the server showed (tests compare it exactly, which is stronger
//! than a chain check), with HTTP/1.1 or HTTP/2 on top.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

/// A certificate for `names`, self-signed, with its PEM files in `dir`.
pub struct TestCertificate {
    pub der: CertificateDer<'static>,
    pub cert_pem: String,
    pub key_pem: String,
}

pub fn certificate(names: &[&str]) -> TestCertificate {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let rcgen::CertifiedKey { cert, signing_key } = rcgen::generate_simple_self_signed(names).expect("rcgen");
    TestCertificate { der: cert.der().clone(), cert_pem: cert.pem(), key_pem: signing_key.serialize_pem() }
}

impl TestCertificate {
    pub fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let (cert, key) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
        write_atomically(&cert, &self.cert_pem);
        write_atomically(&key, &self.key_pem);
        (cert, key)
    }
}

/// As a renewal tool does (a rename), so a reader never sees half a file.
pub fn write_atomically(path: &Path, text: &str) {
    let partial = path.with_extension("partial");
    std::fs::write(&partial, text).expect("write");
    std::fs::rename(&partial, path).expect("rename");
}

/// Accepts any certificate and remembers the leaf it was shown.
#[derive(Debug)]
struct Recorder {
    leaf: std::sync::Mutex<Option<CertificateDer<'static>>>,
    provider: rustls::crypto::CryptoProvider,
}

impl rustls::client::danger::ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        *self.leaf.lock().unwrap() = Some(end_entity.clone().into_owned());
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// One TLS connection: the certificate served, the protocol agreed, and the stream.
pub struct TlsConnection {
    pub leaf: CertificateDer<'static>,
    pub alpn: Option<Vec<u8>>,
    pub stream: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
}

/// Connects with `sni` as the server name (`None`: an IP address, so no SNI is sent).
pub async fn tls_connect(addr: SocketAddr, sni: Option<&str>, alpn: &[&[u8]]) -> std::io::Result<TlsConnection> {
    let provider = rustls::crypto::ring::default_provider();
    let recorder = Arc::new(Recorder { leaf: Default::default(), provider: provider.clone() });
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .map_err(std::io::Error::other)?
        .dangerous()
        .with_custom_certificate_verifier(recorder.clone())
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let name = match sni {
        Some(host) => ServerName::try_from(host.to_owned()).map_err(std::io::Error::other)?,
        None => ServerName::IpAddress(addr.ip().into()),
    };
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let stream = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await?;
    let alpn = stream.get_ref().1.alpn_protocol().map(|p| p.to_vec());
    let leaf = recorder.leaf.lock().unwrap().clone().expect("the verifier saw a certificate");
    Ok(TlsConnection { leaf, alpn, stream })
}

pub type Answer = (http::StatusCode, http::HeaderMap, Bytes);

pub fn request(host: &str, path: &str) -> http::Request<Full<Bytes>> {
    http::Request::get(format!("https://{host}{path}"))
        .header("host", host)
        .body(Full::new(Bytes::new()))
        .expect("request")
}

/// One request over HTTP/1.1 on the connection.
pub async fn http1(connection: TlsConnection, host: &str, path: &str) -> std::io::Result<Answer> {
    let io = hyper_util::rt::TokioIo::new(connection.stream);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.map_err(std::io::Error::other)?;
    tokio::spawn(conn);
    let mut request = request(host, path);
    *request.uri_mut() = path.parse().expect("path");
    let response = sender.send_request(request).await.map_err(std::io::Error::other)?;
    let (parts, body) = response.into_parts();
    let body = body.collect().await.map_err(std::io::Error::other)?.to_bytes();
    Ok((parts.status, parts.headers, body))
}

/// Requests as concurrent streams of one HTTP/2 connection.
pub async fn http2(connection: TlsConnection, host: &str, paths: &[&str]) -> std::io::Result<Vec<Answer>> {
    let io = hyper_util::rt::TokioIo::new(connection.stream);
    let (sender, conn) = hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
        .await
        .map_err(std::io::Error::other)?;
    tokio::spawn(conn);
    let streams: Vec<_> = paths
        .iter()
        .map(|path| {
            let mut sender = sender.clone();
            let request = request(host, path);
            tokio::spawn(async move {
                let response = sender.send_request(request).await.map_err(std::io::Error::other)?;
                let (parts, body) = response.into_parts();
                let body = body.collect().await.map_err(std::io::Error::other)?.to_bytes();
                Ok::<Answer, std::io::Error>((parts.status, parts.headers, body))
            })
        })
        .collect();
    let mut answers = Vec::new();
    for stream in streams {
        answers.push(stream.await.map_err(std::io::Error::other)??);
    }
    Ok(answers)
}
