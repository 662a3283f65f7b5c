//! Connection limits for SSE streams: a global cap and a per-IP cap. A slot is
//! held by a guard, so every way a stream ends gives it back. And what the
//! open-file limit leaves for them (`FdBudget`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// What the process's open-file limit allows clients. Every stream and every
/// connection holds a descriptor, and a connection the gateway cannot accept
/// waits unanswered in the listen backlog: so streams stop at a cap below the
/// limit (answered 429 past it), connections waiting for a request head get
/// a share of what is left (`http::gate`), and the rest stays for proxied
/// requests, upstream connections and the process itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FdBudget {
    /// `RLIMIT_NOFILE` (soft), as raised at start.
    pub files: u64,
    /// The default `limits.max_connections`.
    pub streams: usize,
    /// At most this many connections wait for a request head at once.
    pub waiting: usize,
}

impl FdBudget {
    /// The SPEC's default `max_connections`, for a process with files to spare.
    pub(crate) const MAX_STREAMS: usize = 100_000;

    /// The budget of `files` descriptors: a quarter (at least 128, at most
    /// 16,384) is held back from streams, half of that for waiting
    /// connections.
    pub(crate) fn of(files: u64) -> FdBudget {
        let reserve = (files / 4).clamp(128, 16_384);
        let streams = files.saturating_sub(reserve).max(1);
        FdBudget {
            files,
            streams: usize::try_from(streams)
                .map_or(Self::MAX_STREAMS, |s| s.min(Self::MAX_STREAMS)),
            waiting: usize::try_from((reserve / 2).min(files / 4).max(16)).unwrap_or(8192),
        }
    }

    /// This process's budget.
    pub(crate) fn current() -> FdBudget {
        let files = rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft);
        FdBudget::of(files)
    }
}

#[derive(Debug, Default)]
pub struct ConnLimiter {
    // Atomics: a reload changes them while streams come and go.
    max_total: AtomicUsize,
    max_per_ip: AtomicUsize,
    total: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

/// Why a stream was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitError {
    /// `limits.max_connections`
    Total,
    /// `limits.max_connections_per_ip`
    PerIp,
}

impl std::fmt::Display for LimitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LimitError::Total => "too many connections (limits.max_connections)",
            LimitError::PerIp => {
                "too many connections from this address (limits.max_connections_per_ip)"
            }
        })
    }
}

impl std::error::Error for LimitError {}

#[derive(Debug)]
pub struct ConnSlot {
    limiter: Arc<ConnLimiter>,
    ip: Option<IpAddr>,
}

impl ConnLimiter {
    /// 0 means unlimited.
    pub fn new(max_total: usize, max_per_ip: usize) -> Arc<ConnLimiter> {
        Arc::new(ConnLimiter {
            max_total: AtomicUsize::new(max_total),
            max_per_ip: AtomicUsize::new(max_per_ip),
            ..Default::default()
        })
    }

    /// New caps (a reload); open streams keep their slots.
    pub fn set_limits(&self, max_total: usize, max_per_ip: usize) {
        self.max_total.store(max_total, Ordering::Release);
        self.max_per_ip.store(max_per_ip, Ordering::Release);
    }

    pub fn open(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }

    /// A slot that is never refused: for a stream that already exists (one
    /// adopted in a live upgrade), over a cap or not.
    pub fn acquire_forced(self: &Arc<Self>, ip: Option<IpAddr>) -> ConnSlot {
        self.total.fetch_add(1, Ordering::AcqRel);
        let ip = if self.max_per_ip.load(Ordering::Acquire) > 0 {
            ip
        } else {
            None
        };
        if let Some(ip) = ip {
            let mut map = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
            *map.entry(ip).or_insert(0) += 1;
        }
        ConnSlot {
            limiter: self.clone(),
            ip,
        }
    }

    /// A slot, or the reason for a 429.
    pub fn acquire(self: &Arc<Self>, ip: Option<IpAddr>) -> Result<ConnSlot, LimitError> {
        let prev = self.total.fetch_add(1, Ordering::AcqRel);
        let max_total = self.max_total.load(Ordering::Acquire);
        if max_total > 0 && prev >= max_total {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(LimitError::Total);
        }
        let max_per_ip = self.max_per_ip.load(Ordering::Acquire);
        let ip = if max_per_ip > 0 { ip } else { None };
        if let Some(ip) = ip {
            let mut map = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
            let n = map.entry(ip).or_insert(0);
            if *n >= max_per_ip {
                drop(map);
                self.total.fetch_sub(1, Ordering::AcqRel);
                return Err(LimitError::PerIp);
            }
            *n += 1;
        }
        Ok(ConnSlot {
            limiter: self.clone(),
            ip,
        })
    }
}

impl ConnSlot {
    /// The client address it counts against, when per-IP limits are on.
    pub fn ip(&self) -> Option<IpAddr> {
        self.ip
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        if let Some(ip) = self.ip {
            let mut map = self
                .limiter
                .per_ip
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if let Some(n) = map.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&ip);
                }
            }
        }
        self.limiter.total.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Admission of new streams at a bounded rate (`limits.stream_rate`): a
/// token bucket on tokio's clock. A reconnect storm is spread out by
/// deferring what is over the rate, not refused.
#[derive(Debug)]
pub struct Admission {
    per_second: f64,
    burst: f64,
    // A std Mutex: held for a few arithmetic operations, never across an await.
    bucket: Mutex<(f64, tokio::time::Instant)>,
}

impl Admission {
    pub fn new(per_second: f64, burst: f64) -> Admission {
        Admission {
            per_second,
            burst,
            bucket: Mutex::new((burst, tokio::time::Instant::now())),
        }
    }

    /// Whether one more stream may start now.
    pub fn admit(&self) -> bool {
        let now = tokio::time::Instant::now();
        let mut b = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
        let (tokens, at) = *b;
        let refilled =
            (tokens + now.duration_since(at).as_secs_f64() * self.per_second).min(self.burst);
        if refilled >= 1.0 {
            *b = (refilled - 1.0, now);
            true
        } else {
            *b = (refilled, now);
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn admission_allows_the_burst_then_the_rate() {
        let a = Admission::new(10.0, 5.0);
        assert_eq!((0..8).filter(|_| a.admit()).count(), 5, "the burst");
        tokio::time::advance(std::time::Duration::from_millis(300)).await;
        assert_eq!((0..8).filter(|_| a.admit()).count(), 3, "10/s for 0.3 s");
        tokio::time::advance(std::time::Duration::from_secs(60)).await;
        assert_eq!(
            (0..8).filter(|_| a.admit()).count(),
            5,
            "never above the burst"
        );
    }

    #[test]
    fn the_file_limit_leaves_room_beyond_streams() {
        let b = FdBudget::of(256);
        assert_eq!((b.streams, b.waiting), (128, 64));
        let b = FdBudget::of(20_000);
        assert_eq!((b.streams, b.waiting), (15_000, 2_500));
        let b = FdBudget::of(1 << 20);
        assert_eq!((b.streams, b.waiting), (FdBudget::MAX_STREAMS, 8_192));
        let b = FdBudget::of(u64::MAX);
        assert_eq!(b.streams, FdBudget::MAX_STREAMS);
        for files in [0, 16, 100, 1024, 65_536] {
            let b = FdBudget::of(files);
            assert!(b.streams >= 1 && b.waiting >= 16, "{b:?}");
            if files >= 256 {
                assert!((b.streams + b.waiting) as u64 <= files * 7 / 8, "{b:?}");
            }
        }
    }

    #[test]
    fn caps_and_releases() {
        let l = ConnLimiter::new(3, 2);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let s1 = l.acquire(Some(a)).unwrap();
        let _s2 = l.acquire(Some(a)).unwrap();
        assert_eq!(l.acquire(Some(a)).unwrap_err(), LimitError::PerIp);
        let _s3 = l.acquire(Some(b)).unwrap();
        assert_eq!(l.acquire(Some(b)).unwrap_err(), LimitError::Total);
        drop(s1);
        assert!(l.acquire(Some(a)).is_ok());
    }
}
