//! Requests the gateway makes to upstream pools itself (forward auth, GRIP
//! routes), as opposed to requests pingora proxies. One reqwest client per
//! pool carries the pool's timeouts; servers are picked round robin with the
//! pool's passive health, and a refused connection moves on to the next server.

use crate::upstream::UpstreamPool;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

#[derive(Debug)]
pub struct Fetcher {
    pools: HashMap<String, (Arc<UpstreamPool>, reqwest::Client)>,
}

/// Why a request to an upstream got no response.
#[derive(Debug)]
pub enum FetchError {
    UnknownUpstream(String),
    /// Every server refused or could not be reached.
    Connect(String),
    Timeout(String),
    Other(String),
}

impl FetchError {
    /// The status a client gets for it.
    pub fn status(&self) -> u16 {
        match self {
            FetchError::Timeout(_) => 504,
            _ => 502,
        }
    }
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FetchError::UnknownUpstream(u) => write!(f, "unknown upstream {u}"),
            FetchError::Connect(u) => write!(f, "upstream {u}: connection failed"),
            FetchError::Timeout(u) => write!(f, "upstream {u}: timed out"),
            FetchError::Other(u) => write!(f, "upstream {u}: request failed"),
        }
    }
}

impl Fetcher {
    pub fn new(pools: &HashMap<String, Arc<UpstreamPool>>) -> Result<Fetcher, String> {
        let mut out = HashMap::new();
        for (name, pool) in pools {
            let client = reqwest::Client::builder()
                // Responses pass through as the backend sent them.
                .redirect(reqwest::redirect::Policy::none())
                .no_proxy()
                .connect_timeout(pool.config.connect_timeout)
                .read_timeout(pool.config.read_timeout)
                .pool_idle_timeout(std::time::Duration::from_secs(30))
                .build()
                .map_err(|e| format!("upstream {name}: cannot build its HTTP client: {e}"))?;
            out.insert(name.clone(), (pool.clone(), client));
        }
        Ok(Fetcher { pools: out })
    }

    /// Send the request `build` makes for a server; on a refused connection
    /// try the next server when `retry` (the body can be sent again).
    pub async fn send(
        &self,
        upstream: &str,
        retry: bool,
        mut build: impl FnMut(&reqwest::Client, SocketAddr) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, FetchError> {
        let (pool, client) = self
            .pools
            .get(upstream)
            .ok_or_else(|| FetchError::UnknownUpstream(upstream.to_string()))?;
        let mut tried = Vec::new();
        loop {
            let Some((index, addr)) = pool.pick(&tried) else {
                return Err(FetchError::Connect(upstream.to_string()));
            };
            tried.push(index);
            match build(client, addr).send().await {
                Ok(r) => return Ok(r),
                Err(e) if e.is_connect() => {
                    pool.mark_failed(index);
                    if !retry || tried.len() >= pool.len() {
                        return Err(FetchError::Connect(upstream.to_string()));
                    }
                }
                Err(e) if e.is_timeout() => return Err(FetchError::Timeout(upstream.to_string())),
                Err(e) => {
                    tracing::debug!(upstream, error = %e, "upstream request failed");
                    return Err(FetchError::Other(upstream.to_string()));
                }
            }
        }
    }
}
