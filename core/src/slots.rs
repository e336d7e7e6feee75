//! A capacity-bounded in-flight counter: the slot accounting of an instance (RI or EI).

use std::sync::atomic::{AtomicU32, Ordering::SeqCst};

/// Requests holding a slot. SeqCst because release (decrement, then look for waiters) and
/// enqueue (add a waiter, then try again) must not miss each other.
#[derive(Debug, Default)]
pub struct SlotCounter(AtomicU32);

impl SlotCounter {
    pub fn get(&self) -> u32 {
        self.0.load(SeqCst)
    }

    /// Takes a slot if fewer than `capacity` are taken.
    pub fn try_reserve(&self, capacity: u32) -> bool {
        let mut current = self.0.load(SeqCst);
        while current < capacity {
            match self.0.compare_exchange_weak(current, current + 1, SeqCst, SeqCst) {
                Ok(_) => return true,
                Err(actual) => current = actual,
            }
        }
        false
    }

    pub fn release(&self) {
        let previous = self.0.fetch_sub(1, SeqCst);
        debug_assert!(previous > 0, "slot released twice");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn never_more_than_capacity() {
        let slots = SlotCounter::default();
        assert!(slots.try_reserve(2));
        assert!(slots.try_reserve(2));
        assert!(!slots.try_reserve(2));
        slots.release();
        assert!(slots.try_reserve(2));
        assert_eq!(slots.get(), 2);
    }

    #[test]
    fn concurrent_reservations_respect_capacity() {
        let slots = Arc::new(SlotCounter::default());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let slots = slots.clone();
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        if slots.try_reserve(3) {
                            assert!(slots.get() <= 3);
                            slots.release();
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(slots.get(), 0);
    }
}
