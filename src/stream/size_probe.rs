//! What an idle detached stream costs is mostly its task's future: keep the
//! HTTP/2 and TLS ones from growing back unnoticed (the plain socket's probe
//! is in `socket`, with the stream built here).
//! Compiled only under `#[cfg(test)]` (see `mod size_probe` in the parent).

use super::h2::H2Sink;
use super::tls::TlsSink;
use super::{Guards, Sink, Stream, Subscription};
use crate::hub::memory::MemoryBroker;
use crate::hub::{Broker, Replay, Subscriber};
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use std::sync::Arc;
use std::time::Duration;

/// A stream as `http::public` builds it, subscribed to one channel.
pub(super) fn idle_stream() -> Stream {
    let metrics = Arc::new(Metrics::new());
    let hub: Arc<dyn Broker> = Arc::new(MemoryBroker::new(
        10,
        Duration::from_secs(1),
        metrics.clone(),
    ));
    let sub = Arc::new(Subscriber::new(1, 8));
    let limiter = super::limits::ConnLimiter::new(0, 0);
    let shutdown = Shutdown::new();
    Stream {
        subscription: Subscription::hub(hub, sub, vec!["a".into()]),
        retry: Duration::from_secs(1),
        heartbeat: None,
        shutdown: shutdown.clone(),
        metrics,
        guards: Guards {
            slot: Some(limiter.acquire(None).unwrap()),
            _active: shutdown.track(),
            gauge: None,
            keep: None,
            expiry: None,
        },
        opening: None,
        handoff: Default::default(),
        report: None,
    }
}

/// One end of a loopback TCP connection.
pub(super) fn loopback() -> tokio::net::TcpStream {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
    c.set_nonblocking(true).unwrap();
    tokio::net::TcpStream::from_std(c).unwrap()
}

fn future_size<S: Sink>(sink: S) -> usize {
    let fut = idle_stream().run(sink, Replay::default(), Vec::new());
    std::mem::size_of_val(&fut)
}

#[tokio::test]
async fn idle_h2_stream_future_stays_small() {
    let size = future_size(H2Sink);
    println!("idle HTTP/2 stream future: {size} bytes");
    assert!(size <= 800, "the HTTP/2 stream future grew to {size} bytes");
}

#[tokio::test]
async fn idle_tls_stream_future_stays_small() {
    // What the public listener hands over: pingora's boxed IO.
    let io: pingora_core::protocols::Stream = Box::new(L4Stream::from(loopback()));
    let size = future_size(TlsSink::new(io));
    println!("idle TLS HTTP/1.1 stream future: {size} bytes");
    assert!(size <= 800, "the TLS stream future grew to {size} bytes");
}
