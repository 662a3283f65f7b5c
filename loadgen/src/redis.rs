//! Redis cost of a run: commands from `redis-cli info commandstats` before
//! and after, and redis-server's CPU from /proc.

use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// `cmdstat_<name>:calls=N,...` lines → name → calls.
pub fn parse_commandstats(text: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.trim().strip_prefix("cmdstat_") else {
            continue;
        };
        let Some((name, fields)) = rest.split_once(':') else {
            continue;
        };
        let calls = fields
            .split(',')
            .find_map(|f| f.strip_prefix("calls="))
            .and_then(|v| v.parse::<u64>().ok());
        if let Some(c) = calls {
            out.insert(name.to_string(), c);
        }
    }
    out
}

/// Run `redis-cli -h 127.0.0.1 -p PORT info commandstats` (bounded).
pub async fn commandstats(port: u16) -> Result<BTreeMap<String, u64>, String> {
    let child = tokio::process::Command::new("redis-cli")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "info",
            "commandstats",
        ])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(10), child)
        .await
        .map_err(|_| "redis-cli timed out".to_string())?
        .map_err(|e| format!("redis-cli: {e}"))?;
    if !out.status.success() {
        return Err(format!("redis-cli exited with {}", out.status));
    }
    Ok(parse_commandstats(&String::from_utf8_lossy(&out.stdout)))
}

#[derive(Debug, Default, Serialize)]
pub struct RedisReport {
    pub port: Option<u16>,
    /// Calls per command during the measured window (our own `info` call
    /// removed).
    pub commands: BTreeMap<String, u64>,
    pub commands_total: u64,
    pub commands_per_event: Option<f64>,
    pub pids: Vec<u32>,
    pub cpu_seconds: Option<f64>,
    pub cpu_pct: Option<f64>,
}

/// after − before, without the `info` command that took the second sample.
pub fn delta(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    let mut d = BTreeMap::new();
    for (k, a) in after {
        let mut n = a.saturating_sub(before.get(k).copied().unwrap_or(0));
        if k == "info" {
            n = n.saturating_sub(1);
        }
        if n > 0 {
            d.insert(k.clone(), n);
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_subtracts() {
        let before = parse_commandstats(
            "# Commandstats\r\ncmdstat_publish:calls=10,usec=5,usec_per_call=0.5,rejected_calls=0,failed_calls=0\r\ncmdstat_info:calls=1,usec=1\r\n",
        );
        assert_eq!(before["publish"], 10);
        let after = parse_commandstats(
            "cmdstat_publish:calls=30,usec=9\ncmdstat_info:calls=2,usec=2\ncmdstat_xadd:calls=20,usec=1\ncmdstat_bad\n",
        );
        let d = delta(&before, &after);
        assert_eq!(d.get("publish"), Some(&20));
        assert_eq!(d.get("xadd"), Some(&20));
        assert_eq!(d.get("info"), None);
    }
}
