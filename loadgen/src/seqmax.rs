//! Per seq, the largest latency over all subscribers (the "last subscriber"
//! latency of each event). Every subscriber of a fan-out raises the same
//! seq's maximum within a few milliseconds; with one shared atomic per seq
//! each delivery was a `lock cmpxchg` on a cache line bouncing between the
//! cores, the hottest instruction in the client's profile. Each thread now
//! raises its own row (only that thread writes it); the rows are merged
//! when read, after the subscribers have finished.

use crate::sse_client::lock;
use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

type Row = Arc<[AtomicU64]>;

static NEXT_ID: AtomicUsize = AtomicUsize::new(1);

thread_local! {
    /// This thread's row, and the id of the `SeqMax` it belongs to.
    static ROW: RefCell<Option<(usize, Row)>> = const { RefCell::new(None) };
}

pub struct SeqMax {
    id: usize,
    len: usize,
    rows: Mutex<Vec<Row>>,
}

impl SeqMax {
    pub fn new(len: usize) -> Self {
        SeqMax {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            len,
            rows: Mutex::new(Vec::new()),
        }
    }

    /// Raise `seq`'s maximum to at least `v` (seqs out of range are ignored).
    pub fn raise(&self, seq: usize, v: u64) {
        if seq >= self.len {
            return;
        }
        ROW.with(|r| {
            let mut r = r.borrow_mut();
            if !matches!(&*r, Some((id, _)) if *id == self.id) {
                let row: Row = (0..self.len).map(|_| AtomicU64::new(0)).collect();
                lock(&self.rows).push(row.clone());
                *r = Some((self.id, row));
            }
            if let Some((_, row)) = &*r {
                let a = &row[seq];
                // Only this thread writes its row: no read-modify-write.
                if a.load(Ordering::Relaxed) < v {
                    a.store(v, Ordering::Relaxed);
                }
            }
        });
    }

    /// The maximum per seq over all threads (0 = never raised).
    pub fn merged(&self) -> Vec<u64> {
        let mut out = vec![0u64; self.len];
        for row in lock(&self.rows).iter() {
            for (o, a) in out.iter_mut().zip(row.iter()) {
                *o = (*o).max(a.load(Ordering::Acquire));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_the_rows_of_all_threads() {
        let m = Arc::new(SeqMax::new(3));
        m.raise(0, 5);
        m.raise(0, 3);
        m.raise(7, 100); // out of range
        let m2 = m.clone();
        std::thread::spawn(move || {
            m2.raise(0, 4);
            m2.raise(2, 9);
        })
        .join()
        .unwrap();
        assert_eq!(m.merged(), vec![5, 0, 9]);
        // A second instance on the same thread starts from zero.
        let other = SeqMax::new(3);
        other.raise(1, 1);
        assert_eq!(other.merged(), vec![0, 1, 0]);
        assert_eq!(m.merged(), vec![5, 0, 9]);
    }
}
