//! The TLS front of the public listener: a plain pingora TCP listener whose
//! app does the handshake itself (tokio-rustls, certificates from
//! `tls::CertStore`) and hands the connection to the proxy as an IO of our
//! own type (`FrontTls`). pingora then serves it exactly as it would its own
//! TLS stream — h2 or HTTP/1.1 by ALPN, `X-Forwarded-Proto: https`, the
//! client address for limits — but because the type is ours, a TLS
//! HTTP/1.1 stream can be taken out of pingora with its rustls session
//! (`http::detach_tls`), which pingora's own TLS stream does not allow.

use async_trait::async_trait;
use pingora_core::apps::ServerApp;
use pingora_core::listeners::ListenerConfig;
use pingora_core::protocols::l4::stream::L4BufferSettings;
use pingora_core::protocols::raw_connect::ProxyDigest;
use pingora_core::protocols::tls::SslDigest;
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use pingora_core::server::ShutdownWatch;
use pingora_core::services::listening::Service;
use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A TLS listener on `addr` serving `app` (the public proxy) through our front.
pub(crate) fn service<A: ServerApp + Send + Sync + 'static>(
    name: &str,
    app: A,
    config: Arc<rustls::ServerConfig>,
    addr: &str,
) -> Service<TlsFront<A>> {
    let mut service = Service::new(name.to_string(), TlsFront::new(Arc::new(app), config));
    // No pingora buffers under rustls: it reads and collects records itself,
    // and an idle connection would otherwise keep a 64 KiB read buffer.
    service.add_listener(ListenerConfig::tcp(addr).l4_buffer(L4BufferSettings::new(0, 0)));
    service
}

/// Terminates TLS, then lets `app` (the public proxy) serve the connection.
pub(crate) struct TlsFront<A> {
    app: Arc<A>,
    acceptor: TlsAcceptor,
}

impl<A> TlsFront<A> {
    pub(crate) fn new(app: Arc<A>, config: Arc<rustls::ServerConfig>) -> TlsFront<A> {
        TlsFront {
            app,
            acceptor: TlsAcceptor::from(config),
        }
    }
}

impl<A> fmt::Debug for TlsFront<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TlsFront")
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for TlsFront<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        // Boxed: the handshake's state (the whole rustls connection) must not
        // stay inline in the future every open connection keeps.
        let accept = Box::pin(self.acceptor.accept(stream));
        let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, accept).await {
            Ok(Ok(tls)) => tls,
            // Scanners and clients that distrust us: routine, so not logged loudly.
            Ok(Err(e)) => {
                tracing::debug!("tls handshake failed: {e}");
                return None;
            }
            Err(_) => {
                tracing::debug!("tls handshake timed out");
                return None;
            }
        };
        let io: Stream = Box::new(FrontTls::new(tls));
        ServerApp::process_new(&self.app, io, shutdown).await;
        None
    }

    async fn cleanup(&self) {
        self.app.cleanup().await;
    }
}

/// A client connection after our handshake, as pingora's `IO`.
pub(crate) struct FrontTls {
    tls: TlsStream<Stream>,
    h2: bool,
    digest: Arc<SslDigest>,
}

impl FrontTls {
    fn new(tls: TlsStream<Stream>) -> FrontTls {
        let conn = tls.get_ref().1;
        let h2 = conn.alpn_protocol() == Some(b"h2");
        let cipher = conn
            .negotiated_cipher_suite()
            .and_then(|s| s.suite().as_str())
            .unwrap_or("");
        let version = conn
            .protocol_version()
            .and_then(|v| v.as_str())
            .unwrap_or("");
        let digest = Arc::new(SslDigest::new(cipher, version, None, None, Vec::new()));
        FrontTls { tls, h2, digest }
    }
}

impl fmt::Debug for FrontTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrontTls").field("h2", &self.h2).finish()
    }
}

impl AsyncRead for FrontTls {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_read(cx, buf)
    }
}

impl AsyncWrite for FrontTls {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tls).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tls).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tls.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for FrontTls {
    async fn shutdown(&mut self) {
        let _ = AsyncWriteExt::shutdown(&mut self.tls).await;
    }
}

impl UniqueID for FrontTls {
    fn id(&self) -> UniqueIDType {
        self.tls.get_ref().0.id()
    }
}

impl Ssl for FrontTls {
    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        Some(self.digest.clone())
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        Some(if self.h2 { ALPN::H2 } else { ALPN::H1 })
    }
}

impl GetTimingDigest for FrontTls {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.tls.get_ref().0.get_timing_digest()
    }
}

impl GetProxyDigest for FrontTls {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.tls.get_ref().0.get_proxy_digest()
    }
}

impl GetSocketDigest for FrontTls {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.tls.get_ref().0.get_socket_digest()
    }
}

impl Peek for FrontTls {}
