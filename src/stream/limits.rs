//! Connection limits for SSE streams: a global cap and a per-IP cap. A slot is
//! held by a guard, so every way a stream ends gives it back.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Debug, Default)]
pub struct ConnLimiter {
    max_total: usize,
    max_per_ip: usize,
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
            max_total,
            max_per_ip,
            ..Default::default()
        })
    }

    pub fn open(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }

    /// A slot, or the reason for a 429.
    pub fn acquire(self: &Arc<Self>, ip: Option<IpAddr>) -> Result<ConnSlot, LimitError> {
        let prev = self.total.fetch_add(1, Ordering::AcqRel);
        if self.max_total > 0 && prev >= self.max_total {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(LimitError::Total);
        }
        let ip = if self.max_per_ip > 0 { ip } else { None };
        if let Some(ip) = ip {
            let mut map = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
            let n = map.entry(ip).or_insert(0);
            if *n >= self.max_per_ip {
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

#[cfg(test)]
mod tests {
    use super::*;

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
