//! LBA range locks. Every write to a volume holds a *shared* lock on its
//! range while it runs; commands that must see and change blocks atomically
//! (COMPARE AND WRITE, WRITE ATOMIC, copy) hold an *exclusive* one, so no
//! other write to those blocks, from any front end, can interleave.
//!
//! Plain writes stay cheap while nobody holds an exclusive lock: they only
//! bump an atomic counter. An exclusive locker first announces itself, which
//! sends new writers to the range table, then waits for the counted ones to
//! drain (both sides use SeqCst, so at least one sees the other).

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Notify;

#[derive(Debug, Clone, Copy)]
struct Held {
    id: u64,
    start: u64,
    end: u64,
    exclusive: bool,
}

#[derive(Debug, Default)]
pub struct RangeLocks {
    /// Shared holders that took the counter-only path.
    fast: AtomicU64,
    /// Exclusive holders and waiters.
    exclusive: AtomicU64,
    next_id: AtomicU64,
    table: Mutex<Vec<Held>>,
    changed: Notify,
}

/// A held range; released on drop.
#[derive(Debug)]
pub struct RangeGuard {
    locks: Arc<RangeLocks>,
    kind: GuardKind,
    start: u64,
    end: u64,
}

#[derive(Debug)]
enum GuardKind {
    Fast,
    Table { id: u64, exclusive: bool },
}

impl RangeLocks {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn conflicts(&self, start: u64, end: u64, exclusive: bool) -> bool {
        self.table
            .lock()
            .iter()
            .any(|h| h.start < end && start < h.end && (exclusive || h.exclusive))
    }

    fn insert(&self, start: u64, end: u64, exclusive: bool) -> Option<u64> {
        let mut t = self.table.lock();
        if t.iter()
            .any(|h| h.start < end && start < h.end && (exclusive || h.exclusive))
        {
            return None;
        }
        let id = self.next_id.fetch_add(1, SeqCst);
        t.push(Held {
            id,
            start,
            end,
            exclusive,
        });
        Some(id)
    }

    /// Shared lock for a plain write of `blocks` at `lba`.
    pub async fn write(self: &Arc<Self>, lba: u64, blocks: u64) -> RangeGuard {
        let end = lba.saturating_add(blocks.max(1));
        self.fast.fetch_add(1, SeqCst);
        if self.exclusive.load(SeqCst) == 0 {
            return self.guard(GuardKind::Fast, lba, end);
        }
        // Someone wants exclusivity: step off the counter (it may be
        // waiting for it to drain) and queue in the table.
        self.fast.fetch_sub(1, SeqCst);
        self.changed.notify_waiters();
        self.acquire(lba, end, false).await
    }

    /// Exclusive lock: waits for every overlapping write to finish and keeps
    /// new ones out until dropped.
    pub async fn exclusive(self: &Arc<Self>, lba: u64, blocks: u64) -> RangeGuard {
        let end = lba.saturating_add(blocks.max(1));
        self.exclusive.fetch_add(1, SeqCst);
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.fast.load(SeqCst) == 0 {
                break;
            }
            notified.await;
        }
        self.acquire(lba, end, true).await
    }

    async fn acquire(self: &Arc<Self>, start: u64, end: u64, exclusive: bool) -> RangeGuard {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(id) = self.insert(start, end, exclusive) {
                return self.guard(GuardKind::Table { id, exclusive }, start, end);
            }
            notified.await;
        }
    }

    fn guard(self: &Arc<Self>, kind: GuardKind, start: u64, end: u64) -> RangeGuard {
        RangeGuard {
            locks: self.clone(),
            kind,
            start,
            end,
        }
    }

    /// Whether a write to the range would have to wait right now.
    pub fn is_locked(&self, lba: u64, blocks: u64) -> bool {
        self.exclusive.load(SeqCst) > 0 && self.conflicts(lba, lba.saturating_add(blocks), false)
    }
}

impl RangeGuard {
    /// Whether this guard is exclusive over all of `lba..lba+blocks`.
    pub fn covers(&self, lba: u64, blocks: u64) -> bool {
        matches!(
            self.kind,
            GuardKind::Table {
                exclusive: true,
                ..
            }
        ) && lba >= self.start
            && lba.saturating_add(blocks) <= self.end
    }
}

impl Drop for RangeGuard {
    fn drop(&mut self) {
        let l = &self.locks;
        match self.kind {
            GuardKind::Fast => {
                l.fast.fetch_sub(1, SeqCst);
                if l.exclusive.load(SeqCst) > 0 {
                    l.changed.notify_waiters();
                }
            }
            GuardKind::Table { id, exclusive } => {
                l.table.lock().retain(|h| h.id != id);
                if exclusive {
                    l.exclusive.fetch_sub(1, SeqCst);
                }
                l.changed.notify_waiters();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn writer_waits_for_exclusive_holder() {
        let l = RangeLocks::new();
        let ex = l.exclusive(10, 5).await;
        assert!(l.is_locked(12, 1));
        assert!(!l.is_locked(15, 1));
        // A disjoint write proceeds at once.
        let other = tokio::time::timeout(Duration::from_secs(1), l.write(15, 3))
            .await
            .expect("disjoint write must not wait");
        drop(other);
        let l2 = l.clone();
        let w = tokio::spawn(async move {
            let _g = l2.write(14, 4).await;
        });
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(!w.is_finished(), "overlapping write must wait");
        drop(ex);
        tokio::time::timeout(Duration::from_secs(2), w)
            .await
            .expect("writer released")
            .expect("writer task");
        assert!(!l.is_locked(12, 1));
    }

    #[tokio::test]
    async fn exclusive_waits_for_fast_writers() {
        let l = RangeLocks::new();
        let w = l.write(0, 8).await;
        let l2 = l.clone();
        let ex = tokio::spawn(async move {
            let g = l2.exclusive(100, 1).await;
            assert!(g.covers(100, 1));
        });
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(
            !ex.is_finished(),
            "exclusive waits for counter-only writers to drain"
        );
        drop(w);
        tokio::time::timeout(Duration::from_secs(2), ex)
            .await
            .expect("exclusive acquired")
            .expect("task");
    }

    #[tokio::test]
    async fn exclusives_serialize_on_overlap() {
        let l = RangeLocks::new();
        let a = l.exclusive(0, 4).await;
        let l2 = l.clone();
        let b = tokio::spawn(async move {
            let _g = l2.exclusive(3, 4).await;
        });
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(!b.is_finished());
        drop(a);
        tokio::time::timeout(Duration::from_secs(2), b)
            .await
            .unwrap()
            .unwrap();
    }
}
