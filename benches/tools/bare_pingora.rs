//! pingora's minimal reverse proxy — a `ProxyHttp` that only names the
//! upstream, as in pingora's own examples — for the pass-through benchmark
//! (benches/compare.sh `proxy`, benches/callgrind-pass.sh): measured in the
//! same run as nginx and ssegate, it separates pingora's cost from ours.
//!
//!   cargo build --release --example bare_pingora
//!   target/release/examples/bare_pingora [LISTEN] [UPSTREAM] [THREADS]
//!   (defaults 127.0.0.1:8092, 127.0.0.1:8091, 2 — ssegate's worker count here)

use async_trait::async_trait;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::Server;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_proxy::{ProxyHttp, Session};

#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

struct Bare {
    upstream: String,
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();
    fn new_ctx(&self) {}

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut (),
    ) -> pingora_error::Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(
            self.upstream.as_str(),
            false,
            String::new(),
        )))
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:8092".into());
    let upstream = args.next().unwrap_or_else(|| "127.0.0.1:8091".into());
    let threads = args.next().and_then(|t| t.parse().ok()).unwrap_or(2);
    let conf = ServerConf {
        threads,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = pingora_proxy::http_proxy_service(&server.configuration, Bare { upstream });
    proxy.add_tcp(&listen);
    server.add_service(proxy);
    server.run_forever();
}
