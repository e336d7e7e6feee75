//! The simulation's event queue: earliest first, and among events at the same microsecond the
//! one scheduled first, so a run is deterministic.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Event {
    /// Invocation `index` of the schedule arrives at the proxy.
    Arrive { index: u32 },
    /// Look at a node's CPU: invocations that had all their work end (unless a later start or
    /// end on the node made this `generation` stale).
    NodeTick { node: u32, generation: u32 },
    /// An EI finished starting and runs the request it was started for.
    EmergencyReady { ei: u32 },
    /// An RI becomes routable.
    RegularReady { function: u32, ri: u32 },
    /// An idle EI's keep-alive ends, unless it served again since (`idle_round` changed).
    EmergencyExpire { ei: u32, idle_round: u32 },
    /// A `sync` function's paced poke, for the requests that started waiting since the last.
    TrailingPoke { function: u32 },
    /// A waiting request's queue-timeout.
    QueueTimeout { request: u32 },
    /// The autoscaler's round.
    Decide,
}

#[derive(Default)]
pub struct EventQueue {
    heap: BinaryHeap<Reverse<(u64, u64, Event)>>,
    sequence: u64,
}

impl EventQueue {
    pub fn push(&mut self, at_us: u64, event: Event) {
        self.sequence += 1;
        self.heap.push(Reverse((at_us, self.sequence, event)));
    }

    pub fn pop(&mut self) -> Option<(u64, Event)> {
        self.heap.pop().map(|Reverse((at, _, event))| (at, event))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn earliest_first_then_in_the_order_scheduled() {
        let mut queue = EventQueue::default();
        queue.push(20, Event::Decide);
        queue.push(10, Event::NodeTick { node: 2, generation: 1 });
        queue.push(10, Event::Arrive { index: 1 });
        assert_eq!(queue.pop(), Some((10, Event::NodeTick { node: 2, generation: 1 })));
        assert_eq!(queue.pop(), Some((10, Event::Arrive { index: 1 })));
        assert_eq!(queue.pop(), Some((20, Event::Decide)));
        assert_eq!(queue.pop(), None);
    }
}
