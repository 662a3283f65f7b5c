//! Server process measurements from /proc (memory from smaps_rollup, CPU
//! time from stat). Several PIDs (e.g. nginx master + workers) are summed.

use serde::Serialize;

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct MemSample {
    pub rss_kb: u64,
    pub pss_kb: u64,
}

pub fn parse_pids(list: &str) -> Result<Vec<u32>, String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<u32>().map_err(|_| format!("bad pid {s:?}")))
        .collect()
}

/// Sum of Rss/Pss over `pids` (kB).
pub fn mem(pids: &[u32]) -> Result<MemSample, String> {
    let mut total = MemSample::default();
    for pid in pids {
        let path = format!("/proc/{pid}/smaps_rollup");
        let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
        for line in text.lines() {
            let mut it = line.split_whitespace();
            let key = it.next().unwrap_or("");
            let val: u64 = it.next().and_then(|v| v.parse().ok()).unwrap_or(0);
            match key {
                "Rss:" => total.rss_kb += val,
                "Pss:" => total.pss_kb += val,
                _ => {}
            }
        }
    }
    Ok(total)
}

/// utime+stime in seconds, summed over `pids`.
pub fn cpu_seconds(pids: &[u32]) -> Result<f64, String> {
    // SAFETY: sysconf is always safe to call.
    let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let tck = if tck > 0 { tck as f64 } else { 100.0 };
    let mut ticks = 0u64;
    for pid in pids {
        let path = format!("/proc/{pid}/stat");
        let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
        // comm may contain spaces/parens: fields start after the last ')'.
        let rest = text
            .rsplit_once(')')
            .map(|(_, r)| r)
            .ok_or_else(|| format!("{path}: unexpected format"))?;
        let f: Vec<&str> = rest.split_whitespace().collect();
        // rest[0] is field 3 (state); utime = field 14, stime = field 15.
        let ut: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0);
        let st: u64 = f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
        ticks += ut + st;
    }
    Ok(ticks as f64 / tck)
}

/// Resident set size in kB (VmRSS from /proc/PID/status, cheap to read
/// many times a second, unlike smaps_rollup), summed over `pids`.
pub fn rss_kb(pids: &[u32]) -> Result<u64, String> {
    let mut total = 0;
    for pid in pids {
        let path = format!("/proc/{pid}/status");
        let text = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
        total += text
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Ok(total)
}

/// What a [`Sampler`] saw between its start and its stop.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Samples {
    pub interval_ms: u64,
    pub samples: u64,
    pub rss_start_kb: u64,
    pub rss_peak_kb: u64,
    pub rss_end_kb: u64,
    /// utime+stime over the whole window, % of one core.
    pub cpu_pct_avg: f64,
    /// The busiest single interval, % of one core.
    pub cpu_pct_peak: f64,
    pub cpu_seconds: f64,
    pub wall_s: f64,
}

/// Samples RSS and CPU of `pids` on its own thread every `interval` until
/// stopped (or until `limit` has passed: it never runs unbounded).
pub struct Sampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<Samples>>,
}

impl Sampler {
    pub fn start(
        pids: Vec<u32>,
        interval: std::time::Duration,
        limit: std::time::Duration,
    ) -> Sampler {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let interval = interval.max(std::time::Duration::from_millis(10));
            let t0 = std::time::Instant::now();
            let rss0 = rss_kb(&pids).unwrap_or(0);
            let c0 = cpu_seconds(&pids).unwrap_or(0.0);
            let mut s = Samples {
                interval_ms: interval.as_millis() as u64,
                rss_start_kb: rss0,
                rss_peak_kb: rss0,
                rss_end_kb: rss0,
                ..Default::default()
            };
            let (mut t_prev, mut c_prev) = (t0, c0);
            while !flag.load(Ordering::Acquire) && t0.elapsed() < limit {
                std::thread::sleep(interval);
                let (Ok(rss), Ok(c)) = (rss_kb(&pids), cpu_seconds(&pids)) else {
                    break; // the process is gone
                };
                let now = std::time::Instant::now();
                s.samples += 1;
                s.rss_peak_kb = s.rss_peak_kb.max(rss);
                s.rss_end_kb = rss;
                let dt = (now - t_prev).as_secs_f64().max(1e-9);
                s.cpu_pct_peak = s.cpu_pct_peak.max((c - c_prev) / dt * 100.0);
                (t_prev, c_prev) = (now, c);
            }
            s.wall_s = t0.elapsed().as_secs_f64();
            s.cpu_seconds = (cpu_seconds(&pids).unwrap_or(c_prev) - c0).max(0.0);
            s.cpu_pct_avg = s.cpu_seconds / s.wall_s.max(1e-9) * 100.0;
            s
        });
        Sampler {
            stop,
            thread: Some(thread),
        }
    }

    pub fn stop(mut self) -> Option<Samples> {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        self.thread.take().and_then(|t| t.join().ok())
    }
}

/// CPU seconds (user+system) used by this process so far.
pub fn self_cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the zeroed struct we pass.
    unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut ru) != 0 {
            return 0.0;
        }
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        tv(ru.ru_utime) + tv(ru.ru_stime)
    }
}

/// Raise RLIMIT_NOFILE soft limit to the hard limit; returns the new soft limit.
pub fn raise_nofile() -> u64 {
    // SAFETY: plain libc calls with a valid struct pointer.
    unsafe {
        let mut rl = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) != 0 {
            return 0;
        }
        if rl.rlim_cur < rl.rlim_max {
            let want = libc::rlimit {
                rlim_cur: rl.rlim_max,
                rlim_max: rl.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                return rl.rlim_max;
            }
        }
        rl.rlim_cur
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_self() {
        let me = std::process::id();
        let m = mem(&[me]).unwrap();
        assert!(m.rss_kb > 0);
        assert!(cpu_seconds(&[me]).unwrap() >= 0.0);
        assert_eq!(parse_pids("1, 2").unwrap(), vec![1, 2]);
        assert!(rss_kb(&[me]).unwrap() > 0);
    }

    #[test]
    fn sampler_sees_this_process() {
        let s = Sampler::start(
            vec![std::process::id()],
            std::time::Duration::from_millis(10),
            std::time::Duration::from_secs(5),
        );
        let t = std::time::Instant::now();
        let mut x = 0u64;
        while t.elapsed() < std::time::Duration::from_millis(100) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        let s = s.stop().unwrap();
        assert!(x > 0);
        assert!(s.samples >= 2, "{s:?}");
        assert!(s.rss_peak_kb >= s.rss_start_kb && s.rss_peak_kb > 0);
        assert!(s.cpu_pct_avg > 10.0, "{s:?}");
    }
}
