//! The OTLP exporter's HTTP client: the gateway's own `outbound` client
//! (pingora's connector), so tracing brings no second HTTP stack. The SDK's
//! batch processor exports from a thread of its own and blocks on the
//! export; the request itself runs on a one-thread runtime started here,
//! which also keeps the collector connection pooled between batches.

use crate::config::{OtlpEndpoint, Upstream};
use crate::outbound::{Body, Client, Pool};
use async_trait::async_trait;
use bytes::Bytes;
use opentelemetry_http::{HttpClient, HttpError, Request, Response};
use pingora_http::RequestHeader;
use std::sync::Arc;
use std::time::Duration;

/// One export may take this long, connection included.
pub(super) const TIMEOUT: Duration = Duration::from_secs(10);
/// A collector's answer is a few bytes; anything bigger is not read.
const MAX_RESPONSE: usize = 64 * 1024;

#[derive(Debug)]
pub(super) struct Sender {
    runtime: tokio::runtime::Handle,
    client: Arc<Client>,
    endpoint: Arc<OtlpEndpoint>,
}

impl Sender {
    pub(super) fn start(endpoint: &OtlpEndpoint) -> std::io::Result<Sender> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let runtime = rt.handle().clone();
        std::thread::Builder::new()
            .name("ssegate-otlp".into())
            .spawn(move || rt.block_on(std::future::pending::<()>()))?;
        Ok(Sender {
            runtime,
            client: Arc::new(Client::new()),
            endpoint: Arc::new(endpoint.clone()),
        })
    }
}

#[async_trait]
impl HttpClient for Sender {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let client = self.client.clone();
        let endpoint = self.endpoint.clone();
        self.runtime
            .spawn(async move { send(&client, &endpoint, request).await })
            .await?
    }
}

/// The collector's addresses, looked up for each export (a name may move;
/// an IP address needs no lookup).
async fn pool(endpoint: &OtlpEndpoint) -> Result<Pool, HttpError> {
    let servers: Vec<std::net::SocketAddr> =
        tokio::net::lookup_host((endpoint.host.as_str(), endpoint.port))
            .await?
            .collect();
    Ok(Pool::new(Upstream {
        connect_timeout: Duration::from_secs(2),
        read_timeout: TIMEOUT,
        fail_timeout: Duration::from_secs(1),
        ..Upstream::fixed("otlp", servers)
    }))
}

async fn send(
    client: &Client,
    endpoint: &OtlpEndpoint,
    request: Request<Bytes>,
) -> Result<Response<Bytes>, HttpError> {
    let pool = pool(endpoint).await?;
    let (parts, body) = request.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map_or(endpoint.path.as_str(), |p| p.as_str());
    let mut req = RequestHeader::build(parts.method, path.as_bytes(), None)?;
    for (name, value) in &parts.headers {
        req.append_header(name.clone(), value.clone())?;
    }
    req.insert_header("host", format!("{}:{}", endpoint.host, endpoint.port))?;
    req.insert_header("content-length", body.len().to_string())?;
    let exchange = async {
        let resp = client.send(&pool, &req, Body::Full(&body)).await?;
        let status = resp.status();
        let answer = resp.read_bounded(MAX_RESPONSE).await?;
        Ok::<_, HttpError>((status, answer))
    };
    let (status, answer) = tokio::time::timeout(TIMEOUT, exchange).await??;
    Ok(Response::builder().status(status).body(answer)?)
}
