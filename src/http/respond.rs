//! Short local answers with a whole body (health, JSON, refusals), never a stream.

use bytes::Bytes;
use pingora_error::Result;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

pub(crate) async fn send(
    session: &mut Session,
    status: u16,
    content_type: &str,
    body: impl Into<Bytes>,
    extra: &[(&'static str, String)],
) -> Result<()> {
    let body: Bytes = body.into();
    let mut resp = ResponseHeader::build(status, Some(4 + extra.len()))?;
    resp.insert_header("content-type", content_type)?;
    resp.insert_header("content-length", body.len().to_string())?;
    resp.insert_header("cache-control", "no-store")?;
    for (k, v) in extra {
        resp.insert_header(*k, v.as_str())?;
    }
    let head_only = session.req_header().method == http::Method::HEAD;
    session
        .write_response_header(Box::new(resp), head_only || body.is_empty())
        .await?;
    if !head_only && !body.is_empty() {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
}

/// A `text/plain` line.
pub(crate) async fn text(session: &mut Session, status: u16, reason: &str) -> Result<()> {
    send(
        session,
        status,
        "text/plain; charset=utf-8",
        format!("{reason}\n"),
        &[],
    )
    .await
}

pub(crate) async fn json(
    session: &mut Session,
    status: u16,
    value: &serde_json::Value,
) -> Result<()> {
    send(session, status, "application/json", value.to_string(), &[]).await
}
