//! Answers a proxy writes itself (404, 503, ...), in full, on the request path.

use bytes::Bytes;
use pingora_core::Result;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

/// Writes a complete small plain-text response with the given extra headers.
pub async fn respond(session: &mut Session, status: u16, headers: &[(&'static str, &str)], body: Bytes) -> Result<()> {
    let mut header = ResponseHeader::build(status, Some(headers.len() + 2))?;
    header.insert_header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8")?;
    header.insert_header(http::header::CONTENT_LENGTH, body.len())?;
    for (name, value) in headers {
        header.insert_header(*name, *value)?;
    }
    session.write_response_header(Box::new(header), body.is_empty()).await?;
    if !body.is_empty() {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
}
