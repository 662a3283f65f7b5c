//! One shared tick per heartbeat interval instead of a timer per client: an
//! idle stream costs a watch receiver, not a timer entry and a wake-up of its own.

use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::watch;

#[derive(Debug, Default)]
pub struct Heartbeats {
    ticks: HashMap<Duration, watch::Sender<u64>>,
}

impl Heartbeats {
    pub fn new(intervals: impl IntoIterator<Item = Duration>) -> Heartbeats {
        let ticks = intervals
            .into_iter()
            .map(|d| (d, watch::channel(0).0))
            .collect();
        Heartbeats { ticks }
    }

    /// A receiver that changes every `interval`; None for an interval not
    /// registered at startup (no route uses it).
    pub fn subscribe(&self, interval: Duration) -> Option<watch::Receiver<u64>> {
        self.ticks.get(&interval).map(|tx| {
            let mut rx = tx.subscribe();
            rx.mark_unchanged();
            rx
        })
    }

    /// Drive every tick; runs until the process ends.
    pub async fn run(&self) {
        let mut tasks = tokio::task::JoinSet::new();
        for (interval, tx) in &self.ticks {
            let tx = tx.clone();
            let interval = *interval;
            tasks.spawn(async move {
                let mut t = tokio::time::interval(interval);
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                t.tick().await;
                loop {
                    t.tick().await;
                    tx.send_modify(|n| *n += 1);
                }
            });
        }
        while tasks.join_next().await.is_some() {}
    }
}
