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
    }
}
