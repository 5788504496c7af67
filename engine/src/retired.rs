//! Replaced versions of published state (extent maps, access states) that
//! I/Os admitted through them may still hold.
//!
//! Less restrictive changes publish without waiting, so an I/O can hold a
//! version older than the one a restrictive change replaces. A restrictive
//! change therefore waits for every version replaced so far, not just the
//! last one.

use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;

pub(crate) struct Retired<T>(Mutex<Vec<Weak<T>>>);

impl<T> Retired<T> {
    pub(crate) fn new() -> Self {
        Self(Mutex::new(Vec::new()))
    }

    /// Remembers a replaced version until nothing holds it.
    pub(crate) fn retire(&self, old: Arc<T>) {
        let mut r = self.0.lock();
        r.retain(|w| w.strong_count() > 0);
        r.push(Arc::downgrade(&old));
    }

    /// Waits until no version retired so far is held any more.
    pub(crate) async fn drain(&self) {
        let older: Vec<Weak<T>> = self.0.lock().clone();
        for w in older {
            while w.strong_count() > 0 {
                tokio::time::sleep(Duration::from_micros(50)).await;
            }
        }
    }
}

impl<T> std::fmt::Debug for Retired<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Retired({})", self.0.lock().len())
    }
}
