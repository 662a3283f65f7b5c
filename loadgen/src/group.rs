//! Subscribers that share one HTTP/2 connection run as one task, the way a
//! browser's event loop serves all EventSources of a connection. With a
//! task per stream, every event of a fan-out burst went through tokio's
//! scheduler once per stream (10,000 wake-ups, queue pushes and task polls
//! per published event), which made the client's share of the tail larger
//! than the server's. Now h2 wakes a stream's future inside its group
//! (`FuturesUnordered` keeps its own ready queue), and tokio schedules each
//! group once per burst. HTTP/1.1 subscribers keep a task each (a
//! connection each).

use crate::conn::Opener;
use crate::sse_client::{run_subscriber, Ctl, Shared, SubResult, SubSpec};
use futures_util::stream::{FuturesUnordered, StreamExt};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

/// One running group: its task and how many subscribers it holds.
pub struct Group {
    pub handle: JoinHandle<Vec<SubResult>>,
    pub size: usize,
}

/// Specs in groups: one per HTTP/2 connection, one per HTTP/1.1 subscriber
/// (first-seen order).
fn partition(specs: Vec<SubSpec>) -> Vec<Vec<SubSpec>> {
    let mut groups: Vec<Vec<SubSpec>> = Vec::new();
    let mut by_slot: HashMap<usize, usize> = HashMap::new();
    for spec in specs {
        let slot = match &spec.opener {
            Opener::H2(s) => Some(Arc::as_ptr(s) as usize),
            Opener::H1(_) => None,
        };
        match slot.and_then(|k| by_slot.get(&k).copied()) {
            Some(g) => groups[g].push(spec),
            None => {
                if let Some(k) = slot {
                    by_slot.insert(k, groups.len());
                }
                groups.push(vec![spec]);
            }
        }
    }
    groups
}

/// Spawn every subscriber, one task per group.
pub fn spawn(
    specs: Vec<SubSpec>,
    shared: &Arc<Shared>,
    sem: &Arc<Semaphore>,
    rx: &watch::Receiver<Ctl>,
) -> Vec<Group> {
    partition(specs)
        .into_iter()
        .map(|g| {
            let size = g.len();
            let mut set: FuturesUnordered<_> = g
                .into_iter()
                .map(|spec| run_subscriber(spec, shared.clone(), sem.clone(), rx.clone()))
                .collect();
            let handle = tokio::spawn(async move {
                let mut out = Vec::with_capacity(size);
                while let Some(r) = set.next().await {
                    out.push(r);
                }
                out
            });
            Group { handle, size }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conn::{H2Slot, Transport};
    use crate::sse_client::Policy;
    use std::time::Duration;

    #[test]
    fn one_group_per_h2_connection_and_per_h1_subscriber() {
        let tr = Arc::new(Transport {
            h2: true,
            tls: None,
            connect_timeout: Duration::from_secs(1),
            header_timeout: Duration::from_secs(1),
            h2_stream_window: 65_535,
            h2_conn_window: 1 << 20,
        });
        let t = crate::target::parse_url("http://127.0.0.1:1/").unwrap();
        let (a, b) = (
            H2Slot::new(tr.clone(), t.clone(), None, 2),
            H2Slot::new(tr.clone(), t.clone(), None, 2),
        );
        let openers = [
            Opener::H2(a.clone()),
            Opener::H2(b.clone()),
            Opener::H1(tr.clone()),
            Opener::H2(a),
            Opener::H1(tr),
            Opener::H2(b),
        ];
        let specs = openers
            .into_iter()
            .enumerate()
            .map(|(index, opener)| SubSpec {
                index,
                target: t.clone(),
                src: None,
                opener,
                events: 1,
                stride: 1,
                offset: 0,
                policy: Arc::new(Policy::default()),
            })
            .collect();
        let groups: Vec<Vec<usize>> = partition(specs)
            .iter()
            .map(|g| g.iter().map(|s| s.index).collect())
            .collect();
        assert_eq!(groups, vec![vec![0, 3], vec![1, 5], vec![2], vec![4]]);
    }
}
