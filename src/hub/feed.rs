//! A local feed: frames made by this instance for its own viewers (the
//! dashboard's stats), offered to their queues like hub events but never
//! stored, numbered or sent to another instance.

use super::{offer_all, Delivery, Subscriber};
use crate::metrics::Metrics;
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

#[derive(Debug, Default)]
pub struct Feed {
    subs: Mutex<HashMap<u64, Arc<Subscriber>>>,
}

impl Feed {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Arc<Subscriber>>> {
        self.subs.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn add(&self, sub: &Arc<Subscriber>) {
        self.lock().insert(sub.id(), sub.clone());
    }

    pub fn remove(&self, sub: &Subscriber) {
        self.lock().remove(&sub.id());
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// Offer one frame (no cursor) to every viewer.
    pub fn offer(&self, frame: Bytes, metrics: &Metrics) {
        let d = Delivery::uncounted(frame);
        let subs: Vec<Arc<Subscriber>> = self.lock().values().cloned().collect();
        offer_all(subs.iter(), &d, metrics);
    }
}
