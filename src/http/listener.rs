//! The public listener in plain text, with an accept loop of our own.
//!
//! pingora spawns one task per accepted connection whose future is sized
//! for its TLS handshake and HTTP session (about 9 KB), whatever the
//! connection then does. Here an accepted socket is handed to `http::gate`
//! as it is, so that a connection that never sends a request costs its
//! socket and one small future; pingora's session is made once a request
//! head has arrived.
//!
//! At the open-file limit `accept()` fails and would go on failing while
//! clients wait unanswered in the backlog: one descriptor is kept in
//! reserve, let go to accept one client and tell it `503`, and taken back.
//!
//! The listening socket comes from pingora's table of listening sockets
//! when a previous process handed it over (`--upgrade`), and is added to it
//! otherwise, like pingora's own listeners.

use super::gate::HeadGate;
use crate::metrics::Metrics;
use async_trait::async_trait;
use pingora_core::apps::HttpServerApp;
use pingora_core::server::{ListenFds, ShutdownWatch};
use pingora_core::services::Service;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpSocket};

/// Pending connections the kernel keeps for us (pingora's own value).
const BACKLOG: u32 = 65_535;

/// What a client accepted with the reserve descriptor is told.
const OUT_OF_FILES: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 24\r\nretry-after: 1\r\nconnection: close\r\n\r\nout of file descriptors\n";

pub(crate) struct PlainListener<A> {
    name: String,
    addr: SocketAddr,
    gate: Arc<HeadGate<A>>,
    metrics: Arc<Metrics>,
}

impl<A> std::fmt::Debug for PlainListener<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlainListener")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl<A> PlainListener<A> {
    pub(crate) fn new(
        name: &str,
        addr: SocketAddr,
        gate: HeadGate<A>,
        metrics: Arc<Metrics>,
    ) -> Self {
        PlainListener {
            name: name.to_string(),
            addr,
            gate: Arc::new(gate),
            metrics,
        }
    }

    /// The listening socket: handed over by a previous process, or bound
    /// here and put in the table for the next one.
    fn listen(&self, fds: Option<ListenFds>) -> io::Result<TcpListener> {
        let key = self.addr.to_string();
        let table = fds.as_ref().map(|t| t.lock());
        if let Some(fd) = table.as_ref().and_then(|t| t.get(&key).copied()) {
            let socket = inherited(fd);
            // Listening already; listen() again only sets the backlog.
            return socket.listen(BACKLOG);
        }
        let socket = match self.addr {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        socket.set_reuseaddr(true)?;
        socket.bind(self.addr)?;
        let listener = socket.listen(BACKLOG)?;
        if let Some(mut table) = table {
            table.add(key, listener.as_raw_fd());
        }
        Ok(listener)
    }
}

/// A listening socket handed over by the previous process.
#[allow(unsafe_code)]
fn inherited(fd: RawFd) -> TcpSocket {
    // SAFETY: the descriptor came through pingora's upgrade handover, which
    // gives this process the only use of it, and only this listener (the
    // one bound to its address) takes it out of the table.
    let std = unsafe { std::net::TcpStream::from_raw_fd(fd) };
    TcpSocket::from_std_stream(std)
}

#[async_trait]
impl<A> Service for PlainListener<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    async fn start_service(
        &mut self,
        fds: Option<ListenFds>,
        shutdown: ShutdownWatch,
        listeners_per_fd: usize,
    ) {
        let listener = match self.listen(fds) {
            Ok(l) => Arc::new(l),
            Err(e) => {
                tracing::error!(addr = %self.addr, error = %e, "cannot listen");
                return;
            }
        };
        let reserve = Arc::new(Reserve::new());
        let loops: Vec<_> = (0..listeners_per_fd.max(1))
            .map(|_| {
                tokio::spawn(accept_loop(
                    listener.clone(),
                    self.gate.clone(),
                    reserve.clone(),
                    self.metrics.clone(),
                    shutdown.clone(),
                ))
            })
            .collect();
        futures_util::future::join_all(loops).await;
        pingora_core::apps::ServerApp::cleanup(&*self.gate).await;
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn listen_addresses(&self) -> Option<Vec<String>> {
        Some(vec![self.addr.to_string()])
    }
}

async fn accept_loop<A>(
    listener: Arc<TcpListener>,
    gate: Arc<HeadGate<A>>,
    reserve: Arc<Reserve>,
    metrics: Arc<Metrics>,
    mut shutdown: ShutdownWatch,
) where
    A: HttpServerApp + Send + Sync + 'static,
{
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    return;
                }
                continue;
            }
        };
        match accepted {
            Ok((tcp, _)) => {
                tokio::spawn(gate.clone().serve_tcp(tcp, shutdown.clone()));
            }
            Err(e) if out_of_files(&e) => {
                // A connection still without a request gives way first; its
                // task closes it, then the accept is tried again.
                if gate.evict_oldest_waiter() {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
                if reserve.refuse_one(&listener).await {
                    metrics
                        .turned_away
                        .with_label_values(&["out_of_files"])
                        .inc();
                }
            }
            // The client gave up before we took it.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionAborted
                        | io::ErrorKind::ConnectionReset
                        | io::ErrorKind::Interrupted
                ) => {}
            // Out of memory or buffers: the next accept would fail the same
            // way at once, so give the process a moment.
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

fn out_of_files(e: &io::Error) -> bool {
    // EMFILE (the process's limit) and ENFILE (the system's).
    matches!(e.raw_os_error(), Some(24) | Some(23))
}

/// One descriptor held back for refusing a client at the file limit.
#[derive(Debug)]
struct Reserve(Mutex<Option<std::fs::File>>);

impl Reserve {
    fn new() -> Reserve {
        Reserve(Mutex::new(std::fs::File::open("/dev/null").ok()))
    }

    /// Free the reserve, accept one client, tell it 503, close, take the
    /// reserve back. False when there was nothing to free (another loop has
    /// it, or it could not be taken back yet): then wait a little.
    async fn refuse_one(&self, listener: &TcpListener) -> bool {
        let freed = self.0.lock().unwrap_or_else(|p| p.into_inner()).take();
        if freed.is_none() {
            tokio::time::sleep(Duration::from_millis(10)).await;
            self.take_back();
            return false;
        }
        drop(freed);
        let refused =
            match tokio::time::timeout(Duration::from_millis(100), listener.accept()).await {
                Ok(Ok((tcp, _))) => {
                    // What the client sent is read first: closing a socket with
                    // unread bytes resets it, and the 503 could be lost.
                    let mut buf = [0u8; 4096];
                    for _ in 0..16 {
                        if !matches!(tcp.try_read(&mut buf), Ok(n) if n > 0) {
                            break;
                        }
                    }
                    let _ = tcp.try_write(OUT_OF_FILES);
                    true
                }
                _ => false,
            };
        self.take_back();
        refused
    }

    fn take_back(&self) {
        let mut slot = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = std::fs::File::open("/dev/null").ok();
        }
    }
}
