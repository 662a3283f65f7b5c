//! Live upgrade: `ssegate run --upgrade` starts a new process that takes the
//! listening sockets over from the running one when that one gets SIGQUIT
//! (pingora's upgrade socket, `upgrade_socket:`), and the running process
//! hands over its detached plain HTTP/1.1 SSE streams too — socket,
//! channels, cursor, queued frames, the rest of a chunk cut short — on a
//! second Unix socket next to pingora's (`<upgrade_socket>.streams`). Those
//! clients see no disconnect, no gap, no duplicate. Streams that cannot move
//! (TLS, HTTP/2, GRIP holds, poll streams, the dashboard's feed) drain as on
//! SIGTERM and resume from history.
//!
//! The old process, on SIGQUIT: pingora sends the listeners and keeps
//! accepting for 5 s; then (`Drain`) it seals the hub (publishes go to the
//! new process), freezes every movable stream in its own task
//! (`stream::handoff`), sends SETUP, the hub's state (memory broker), the
//! streams with their sockets, END; the new process stages them and answers
//! DONE; the old one answers COMMIT and lets go of the sockets; then it
//! drains what could not move and exits 0. The new process's listeners wait
//! (a pingora service dependency) until the handoff is over, so one process
//! at a time hands out cursors. Any failure before COMMIT leaves the old
//! process owning every stream, and it drains them: a fallback, never a
//! corrupted stream. A version field refuses what one binary cannot parse
//! from another.

mod pidfile;
mod reexec;
mod replies;
pub(crate) mod systemd;
pub(crate) mod wire;

pub(crate) use pidfile::{signal_when_listening, write as write_pid};
pub(crate) use reexec::Reexec;

use crate::gateway::{Action, Gateway};
use crate::hub::persist::Replies;
use crate::hub::{Delivery, HubState, Resume};
use crate::stream::handoff::{self, Frozen, Handed};
use crate::stream::socket::{Framing, SocketSink};
use crate::stream::{Counted, Guards, Stream, Subscription};
use async_trait::async_trait;
use pingora_core::server::{ExecutionPhase, ShutdownWatch};
use pingora_core::services::background::BackgroundService;
use pingora_core::services::ServiceReadyNotifier;
use std::fmt;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::broadcast;
use wire::{Kind, Refusal, StreamRecord};

/// How long the new process waits for the old one's streams once it has
/// the listeners: the old process goes on accepting for pingora's 5 s
/// (`CLOSE_TIMEOUT`), then connects. An old process that does not (an
/// earlier release) drains its streams instead, and these listeners open.
const ADOPT_WAIT: Duration = Duration::from_secs(8);
/// How long the old process waits for frozen streams to report in.
const FREEZE_WAIT: Duration = Duration::from_secs(5);
/// How much longer than its drain the new process waits for the old one
/// to let go of `hub.persist`'s files.
const LOCK_SLACK: Duration = Duration::from_secs(15);
/// How long either side waits for the other's next frame.
const PEER_WAIT: Duration = Duration::from_secs(30);

/// The socket the streams move on, next to pingora's upgrade socket.
pub(crate) fn streams_socket(upgrade_socket: &Path) -> PathBuf {
    let mut p = upgrade_socket.as_os_str().to_owned();
    p.push(".streams");
    PathBuf::from(p)
}

/// Why a handoff did not happen (the streams are drained instead).
#[derive(Debug)]
pub(crate) enum HandoffError {
    Io(io::Error),
    NotOurs,
    Refused(u16),
    NoCommit,
}

impl From<io::Error> for HandoffError {
    fn from(e: io::Error) -> Self {
        HandoffError::Io(e)
    }
}

impl fmt::Display for HandoffError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandoffError::Io(e) => write!(f, "handoff connection: {e}"),
            HandoffError::NotOurs => {
                f.write_str("the other side does not speak the handoff protocol")
            }
            HandoffError::Refused(r) if *r == Refusal::NoCommonVersion as u16 => {
                f.write_str("the two processes speak no common handoff protocol version")
            }
            HandoffError::Refused(r) if *r == Refusal::BrokerDiffers as u16 => {
                f.write_str("the two processes run different brokers")
            }
            HandoffError::Refused(r) => write!(f, "the new process refused the handoff ({r})"),
            HandoffError::NoCommit => f.write_str("the handoff was not committed"),
        }
    }
}

impl std::error::Error for HandoffError {}

/// The versions this process speaks; a test can pretend another binary.
fn versions() -> (u16, u16) {
    match std::env::var("SSEGATE_TEST_HANDOFF_VERSION")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        Some(v) => (v, v),
        None => wire::VERSIONS,
    }
}

// ---------------------------------------------------------------------------
// The old process.

/// Hand this process's movable streams to the new process listening on
/// `socket`. Returns how many moved; on an error every stream stays here
/// (and is drained by the caller's drain).
pub(crate) async fn hand_over(gw: &Gateway, socket: &Path) -> Result<usize, HandoffError> {
    let path = streams_socket(socket);
    let (sock, version) = tokio::task::spawn_blocking(move || connect(&path))
        .await
        .map_err(|e| HandoffError::Io(io::Error::other(e)))??;
    gw.hub.seal();
    // From here on no stream writes here: the start of a client's pause.
    tracing::info!("upgrade: hub sealed, freezing streams");
    // The final save, and the files let go of, before the state leaves:
    // what the new process then finds on disk is what it is handed.
    gw.hub.stop().await;
    let frozen = freeze_all(gw).await;
    let mid_chunk = frozen.iter().filter(|f| !f.tail.is_empty()).count();
    tracing::info!(streams = frozen.len(), mid_chunk, "upgrade: streams frozen");
    let hub = gw.hub.state();
    let broker = gw.hub.identity();
    let records: Vec<StreamRecord> = frozen.iter().map(|f| record(gw, f)).collect();
    let moves_records = version >= replies::SINCE;
    let replies = match moves_records {
        true => gw.records.hand_over(),
        false => Default::default(),
    };
    let (sent, frozen) = tokio::task::spawn_blocking(move || {
        let r = send_all(&sock, &broker, (hub, replies), records, &frozen);
        (r, frozen)
    })
    .await
    .map_err(|e| HandoffError::Io(io::Error::other(e)))?;
    match sent {
        Ok(n) => {
            // Committed: the new process owns the sockets now; dropping our
            // copies sends nothing to the clients.
            drop(frozen);
            if moves_records {
                // It owns the records too: a backend still read here is cut.
                gw.records.handed_over();
            }
            Ok(n)
        }
        Err(e) => {
            for f in frozen {
                handoff::drain(f).await;
            }
            Err(e)
        }
    }
}

/// The socket, and the protocol version the new process chose.
fn connect(path: &Path) -> Result<(UnixStream, u16), HandoffError> {
    let sock = UnixStream::connect(path)?;
    sock.set_read_timeout(Some(PEER_WAIT))?;
    let (min, max) = versions();
    (&sock).write_all_hello(&wire::hello(min, max))?;
    let reply = wire::read_hello(&sock)?;
    match wire::parse_hello(&reply) {
        None => Err(HandoffError::NotOurs),
        Some((0, reason)) => Err(HandoffError::Refused(reason)),
        Some((chosen, _)) => Ok((sock, chosen)),
    }
}

trait WriteHello {
    fn write_all_hello(self, b: &[u8; 24]) -> io::Result<()>;
}

impl WriteHello for &UnixStream {
    fn write_all_hello(mut self, b: &[u8; 24]) -> io::Result<()> {
        io::Write::write_all(&mut self, b)
    }
}

/// Ask every movable stream to hand itself over and collect them.
async fn freeze_all(gw: &Gateway) -> Vec<Frozen> {
    let mut rx = gw.streams.handoff.open();
    let mut asked = 0;
    for sub in gw.streams.heartbeats.members() {
        if sub.movable() {
            sub.hand_off();
            asked += 1;
        }
    }
    let mut frozen = Vec::with_capacity(asked);
    let deadline = tokio::time::Instant::now() + FREEZE_WAIT;
    let mut answered = 0;
    while answered < asked {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(Handed::Frozen(f))) => {
                frozen.push(*f);
                answered += 1;
            }
            Ok(Some(Handed::Gone)) => answered += 1,
            Ok(None) | Err(_) => break,
        }
    }
    gw.streams.handoff.close();
    // Late ones (the deadline passed) end as a drain would: nothing waits for them.
    while let Ok(h) = rx.try_recv() {
        if let Handed::Frozen(f) = h {
            frozen.push(*f);
        }
    }
    frozen
}

fn record(gw: &Gateway, f: &Frozen) -> StreamRecord {
    let newest = f.queued.iter().map(|d| d.seq).fold(f.last_seq, u64::max);
    StreamRecord {
        route: f.route,
        channels: f.channels.clone(),
        last_seq: f.last_seq,
        resume: gw.hub.cursor(newest),
        tail: f.tail.clone(),
        queued: f
            .queued
            .iter()
            .map(|d| wire::Queued {
                seq: d.seq,
                frame: d.frame.clone(),
                grip_only: d.grip_only,
            })
            .collect(),
        retry_ms: f.retry.as_millis() as u64,
        client_ip: f.client_ip,
        expires: f.expires,
    }
}

/// SETUP, HUB, RECORDS, STREAMS, END; then DONE from the new process and
/// COMMIT from us. The number of streams handed over.
fn send_all(
    sock: &UnixStream,
    broker: &str,
    (hub, replies): (Option<HubState>, Replies),
    records: Vec<StreamRecord>,
    frozen: &[Frozen],
) -> Result<usize, HandoffError> {
    let setup = wire::Setup {
        broker: broker.to_string(),
        streams: records.len() as u32,
    };
    wire::send_frame(sock, Kind::Setup, &wire::encode(&setup)?, &[])?;
    if let Some(state) = hub {
        wire::send_frame(sock, Kind::Hub, &wire::encode(&state)?, &[])?;
    }
    replies::send(sock, replies)?;
    let mut records = records.into_iter();
    for batch in frozen.chunks(wire::MAX_FDS) {
        let recs: Vec<StreamRecord> = records.by_ref().take(batch.len()).collect();
        let fds: Vec<_> = batch.iter().map(|f| f.tcp.as_fd()).collect();
        wire::send_frame(sock, Kind::Streams, &wire::encode(&recs)?, &fds)?;
    }
    let n = frozen.len();
    wire::send_frame(
        sock,
        Kind::End,
        &wire::encode(&wire::End { streams: n as u32 })?,
        &[],
    )?;
    let mut rx = wire::Receiver::new(sock.try_clone()?);
    match rx.next()? {
        Some(f) if f.kind == Kind::Done => {
            wire::send_frame(sock, Kind::Commit, &[], &[])?;
            Ok(n)
        }
        _ => Err(HandoffError::NoCommit),
    }
}

/// The drain on SIGTERM, and on SIGQUIT (a live upgrade) the handoff first.
pub(crate) struct Drain {
    pub gw: Arc<Gateway>,
    pub grace: Duration,
    /// `upgrade_socket:`.
    pub socket: PathBuf,
    pub phases: Mutex<Option<broadcast::Receiver<ExecutionPhase>>>,
}

impl fmt::Debug for Drain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Drain")
            .field("grace", &self.grace)
            .field("socket", &self.socket)
            .finish_non_exhaustive()
    }
}

impl Drain {
    /// Whether pingora started handing the listeners over (SIGQUIT).
    fn upgrading(&self) -> bool {
        let mut phases = self.phases.lock().unwrap_or_else(|p| p.into_inner());
        let Some(rx) = phases.as_mut() else {
            return false;
        };
        let mut seen = false;
        loop {
            match rx.try_recv() {
                Ok(ExecutionPhase::GracefulUpgradeTransferringFds)
                | Ok(ExecutionPhase::GracefulUpgradeCloseTimeout) => seen = true,
                Ok(_) => {}
                Err(broadcast::error::TryRecvError::Lagged(_)) => {}
                Err(_) => return seen,
            }
        }
    }
}

#[async_trait]
impl BackgroundService for Drain {
    async fn start(&self, mut signal: ShutdownWatch) {
        let _ = signal.changed().await;
        let shutdown = &self.gw.streams.shutdown;
        if self.upgrading() {
            match hand_over(&self.gw, &self.socket).await {
                Ok(n) => tracing::info!(streams = n, "upgrade: streams handed to the new process"),
                Err(e) => {
                    tracing::warn!("upgrade: streams not handed over ({e}); draining them instead")
                }
            }
        }
        let open = shutdown.active();
        tracing::info!(open, grace = ?self.grace, "shutdown: draining");
        shutdown.begin();
        self.gw.streams.heartbeats.wake_all();
        let clean = shutdown.drained(self.grace).await;
        // hub.persist's save at stop (already done if the hub was handed over).
        self.gw.hub.stop().await;
        tracing::info!(clean, left = shutdown.active(), "shutdown: exiting");
        pidfile::remove(&self.socket);
        std::process::exit(0);
    }
}

// ---------------------------------------------------------------------------
// The new process.

/// Bind the streams socket before anything else, so the old process finds
/// it whenever it gets SIGQUIT. Only this user may connect (0600).
pub(crate) fn listen(upgrade_socket: &Path) -> io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let path = streams_socket(upgrade_socket);
    // A stale socket of an earlier upgrade.
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let l = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

/// The new process's side: takes the streams over, then lets the listeners
/// accept (they depend on this service being ready).
pub(crate) struct Adopter {
    pub gw: Arc<Gateway>,
    pub listener: Mutex<Option<UnixListener>>,
    pub path: PathBuf,
}

impl fmt::Debug for Adopter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Adopter").field("path", &self.path).finish()
    }
}

/// What the old process sent, with the sockets.
struct Received {
    hub: Option<HubState>,
    replies: Replies,
    streams: Vec<(StreamRecord, std::os::fd::OwnedFd)>,
    receiver: wire::Receiver,
}

impl Adopter {
    async fn adopt(&self) -> Result<usize, HandoffError> {
        let listener = self
            .listener
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .ok_or_else(|| HandoffError::Io(io::Error::other("no streams socket")))?;
        listener.set_nonblocking(true)?;
        let listener = tokio::net::UnixListener::from_std(listener)?;
        let accepted = tokio::time::timeout(ADOPT_WAIT, listener.accept()).await;
        let _ = std::fs::remove_file(&self.path);
        let sock = match accepted {
            Ok(Ok((s, _))) => s.into_std()?,
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => return Ok(0),
        };
        sock.set_nonblocking(false)?;
        sock.set_read_timeout(Some(PEER_WAIT))?;
        // 0600 already; and only a process of this user hands us sockets.
        let peer = rustix::net::sockopt::socket_peercred(&sock).map_err(io::Error::from)?;
        if peer.uid != rustix::process::getuid() {
            return Err(HandoffError::Io(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "the handoff came from another user",
            )));
        }
        let broker = self.gw.hub.identity();
        let received = tokio::task::spawn_blocking(move || receive(sock, &broker))
            .await
            .map_err(|e| HandoffError::Io(io::Error::other(e)))??;
        let Received {
            hub,
            replies,
            streams,
            mut receiver,
        } = received;
        if let Some(state) = hub {
            self.gw.hub.restore(state);
        }
        if !replies.is_empty() {
            let (restored, interrupted) = self.gw.records.take_over(replies);
            tracing::info!(
                restored,
                interrupted,
                "upgrade: recorded replies taken over"
            );
        }
        let mut staged = Vec::with_capacity(streams.len());
        for (rec, fd) in streams {
            match self.stage(rec, fd).await {
                Ok(s) => staged.push(s),
                Err(e) => tracing::warn!("upgrade: a stream could not be adopted: {e}"),
            }
        }
        let n = staged.len();
        // DONE, then wait for COMMIT: only then is writing ours.
        let committed = tokio::task::spawn_blocking(move || -> io::Result<bool> {
            let done = wire::encode(&wire::Done { adopted: n as u32 })?;
            wire::send_frame(receiver.socket(), Kind::Done, &done, &[])?;
            Ok(matches!(receiver.next()?, Some(f) if f.kind == Kind::Commit))
        })
        .await
        .map_err(|e| HandoffError::Io(io::Error::other(e)))??;
        if !committed {
            // The old process kept the streams (and drains them): ours go quietly.
            return Err(HandoffError::NoCommit);
        }
        for s in staged {
            s.start();
        }
        self.gw.metrics.streams_adopted.inc_by(n as u64);
        Ok(n)
    }

    /// Register one stream here, writing nothing yet.
    async fn stage(&self, rec: StreamRecord, fd: std::os::fd::OwnedFd) -> io::Result<Staged> {
        let gw = &self.gw;
        let streams = &gw.streams;
        let std_tcp = std::net::TcpStream::from(fd);
        std_tcp.set_nonblocking(true)?;
        let tcp = tokio::net::TcpStream::from_std(std_tcp)?;
        let site = gw.site();
        // The same route here goes on with its settings; a route that is not
        // here any more gets what was queued, then a retry and the end.
        let entry = site
            .routes()
            .find(|r| r.route.fingerprint == rec.route)
            .cloned();
        let (label, settings) = match entry.as_deref().map(|e| (&e.route, &e.action)) {
            Some((route, Action::Sse(sse))) => (route.path.clone(), sse.sse.settings.clone()),
            _ => (
                "(upgrade)".to_string(),
                crate::config::SseSettings {
                    retry: Duration::from_millis(rec.retry_ms),
                    ..site.config.sse.clone()
                },
            ),
        };
        let keeps_route = entry.is_some();
        let sub = handoff::subscriber(streams.next_id(), settings.client_queue, rec.route);
        let replay = gw
            .hub
            .subscribe(&sub, &rec.channels, &Resume::After(rec.resume.clone()))
            .await
            .map_err(io::Error::other)?;
        let queued: Vec<Delivery> = rec
            .queued
            .into_iter()
            .map(|q| Delivery {
                seq: q.seq,
                grip_only: q.grip_only,
                ..Delivery::uncounted(q.frame)
            })
            .collect();
        let expiry = rec
            .expires
            .map(|at| Box::new(streams.expiries.register(at, &sub)));
        let stream = Stream {
            heartbeat: streams.heartbeats.join(settings.heartbeat, &sub),
            subscription: Subscription::hub(gw.hub.clone(), sub.clone(), rec.channels),
            retry: settings.retry,
            shutdown: streams.shutdown.clone(),
            metrics: gw.metrics.clone(),
            guards: Guards {
                slot: Some(streams.limiter.acquire_forced(rec.client_ip)),
                _active: streams.shutdown.track(),
                gauge: Some(Counted::new(
                    gw.metrics.connections.with_label_values(&[&label]),
                )),
                keep: None,
                expiry,
            },
            opening: None,
            handoff: streams.handoff.clone(),
            // Its access line was written by the process that handed it over.
            report: None,
        };
        Ok(Staged {
            sub,
            keeps_route,
            task: Box::pin(handoff::adopt(
                stream,
                SocketSink::new(tcp, Framing::Chunked),
                rec.tail,
                rec.last_seq,
                queued,
                replay,
            )),
        })
    }
}

/// A stream adopted but not started.
struct Staged {
    sub: Arc<crate::hub::Subscriber>,
    keeps_route: bool,
    task: std::pin::Pin<Box<dyn std::future::Future<Output = crate::stream::End> + Send>>,
}

impl Staged {
    fn start(self) {
        if !self.keeps_route {
            self.sub.retire();
        }
        tokio::spawn(self.task);
    }
}

/// HELLO, SETUP, HUB, STREAMS…, END from the old process (blocking).
fn receive(sock: UnixStream, broker: &str) -> Result<Received, HandoffError> {
    let hello = wire::read_hello(&sock)?;
    let (their_min, their_max) = wire::parse_hello(&hello).ok_or(HandoffError::NotOurs)?;
    let (min, max) = versions();
    let chosen = their_max.min(max);
    if chosen < their_min.max(min) {
        (&sock).write_all_hello(&refusal(Refusal::NoCommonVersion))?;
        return Err(HandoffError::Refused(Refusal::NoCommonVersion as u16));
    }
    // chosen | reason 0
    (&sock).write_all_hello(&wire::hello(chosen, 0))?;
    let mut receiver = wire::Receiver::new(sock);
    let mut hub = None;
    let mut replies = Replies::new();
    let mut streams = Vec::new();
    loop {
        let Some(frame) = receiver.next()? else {
            return Err(HandoffError::Io(io::ErrorKind::UnexpectedEof.into()));
        };
        match frame.kind {
            Kind::Setup => {
                let setup: wire::Setup = wire::decode(&frame.payload)?;
                if setup.broker != broker {
                    let _ = wire::send_frame(receiver.socket(), Kind::Abort, &[], &[]);
                    return Err(HandoffError::Refused(Refusal::BrokerDiffers as u16));
                }
            }
            Kind::Hub => hub = Some(wire::decode::<HubState>(&frame.payload)?),
            Kind::Records => replies::receive(&frame.payload, &mut replies)?,
            Kind::Streams => {
                let recs: Vec<StreamRecord> = wire::decode(&frame.payload)?;
                if recs.len() != frame.fds.len() {
                    return Err(HandoffError::Io(io::Error::other(
                        "a STREAMS frame whose records and sockets differ",
                    )));
                }
                streams.extend(recs.into_iter().zip(frame.fds));
            }
            Kind::End => {
                let end: wire::End = wire::decode(&frame.payload)?;
                if end.streams as usize != streams.len() {
                    return Err(HandoffError::Io(io::Error::other(
                        "END counts other streams than arrived",
                    )));
                }
                return Ok(Received {
                    hub,
                    replies,
                    streams,
                    receiver,
                });
            }
            Kind::Abort | Kind::Done | Kind::Commit => {
                return Err(HandoffError::Io(io::Error::other("unexpected frame")));
            }
        }
    }
}

/// The HELLO that refuses, with why.
fn refusal(why: Refusal) -> [u8; 24] {
    let mut b = wire::hello(0, 0);
    b[18..20].copy_from_slice(&(why as u16).to_le_bytes());
    b
}

#[async_trait]
impl BackgroundService for Adopter {
    async fn start_with_ready_notifier(
        &self,
        mut shutdown: ShutdownWatch,
        ready: ServiceReadyNotifier,
    ) {
        match self.adopt().await {
            Ok(0) => tracing::info!("upgrade: no stream handed over"),
            Ok(n) => tracing::info!(streams = n, "upgrade: streams adopted"),
            Err(e) => tracing::warn!("upgrade: streams not adopted ({e})"),
        }
        // Without a handoff the old process lets go of the files only at
        // the end of its drain.
        let lock_wait = self.gw.site().config.shutdown_grace + LOCK_SLACK;
        if let Err(e) = self.gw.hub.open_after_handoff(lock_wait).await {
            // Serving without the files would give out cursors they do not know.
            tracing::error!("upgrade: {e}; exiting");
            std::process::exit(1);
        }
        // The listeners wait for this: from here on this process answers.
        ready.notify_ready();
        let _ = shutdown.changed().await;
    }
}
