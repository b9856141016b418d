//! The monitor's queue: bounded, drops its oldest item when full, so a slow
//! renderer never blocks plan or actuate.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};

/// A bounded queue that drops its oldest item when full (never blocks the producer).
pub(crate) struct DropOldest<T> {
    q: Mutex<(VecDeque<T>, bool)>,
    cv: Condvar,
    cap: usize,
    pub(crate) dropped: AtomicU64,
}

impl<T> DropOldest<T> {
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            q: Mutex::new((VecDeque::new(), false)),
            cv: Condvar::new(),
            cap: cap.max(1),
            dropped: AtomicU64::new(0),
        }
    }
    pub(crate) fn push(&self, item: T) {
        let mut g = self.q.lock().expect("monitor queue poisoned");
        if g.0.len() == self.cap {
            g.0.pop_front();
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        g.0.push_back(item);
        self.cv.notify_one();
    }
    pub(crate) fn close(&self) {
        self.q.lock().expect("monitor queue poisoned").1 = true;
        self.cv.notify_all();
    }
    pub(crate) fn pop(&self) -> Option<T> {
        let mut g = self.q.lock().expect("monitor queue poisoned");
        loop {
            if let Some(x) = g.0.pop_front() {
                return Some(x);
            }
            if g.1 {
                return None;
            }
            g = self.cv.wait(g).expect("monitor queue poisoned");
        }
    }
}
