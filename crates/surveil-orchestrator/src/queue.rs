//! The analyst's fair queue across cameras: one pending slot per lane (camera), the latest
//! scene of a lane replaces its older pending one, and lanes are served round robin.
//!
//! A camera that triggers often can neither starve the others nor queue stale scenes: it holds
//! at most one pending job, always its newest, and once served it waits for every other lane
//! with a pending job to be served before its turn comes again. Replaced jobs are counted per
//! lane (`superseded`), the numbers a run reports as skipped analyses.
//!
//! The queue is plain data; the analyst guards it with its mutex.

/// Pending jobs, at most one per lane, served round robin. Lanes are small indices (the
/// camera's position in the run) and are created by their first [`FairQueue::push`].
#[derive(Debug, Clone)]
pub struct FairQueue<T> {
    slots: Vec<Option<T>>,
    superseded: Vec<u64>,
    /// The lane the next [`FairQueue::pop`] looks at first (modulo the lane count).
    next: usize,
}

impl<T> Default for FairQueue<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> FairQueue<T> {
    /// An empty queue without lanes.
    pub fn new() -> Self {
        Self {
            slots: Vec::new(),
            superseded: Vec::new(),
            next: 0,
        }
    }

    fn grow(&mut self, lane: usize) {
        if lane >= self.slots.len() {
            self.slots.resize_with(lane + 1, || None);
            self.superseded.resize(lane + 1, 0);
        }
    }

    /// Put `item` in `lane`'s slot. A job still pending there is replaced, counted as
    /// superseded for that lane, and returned.
    pub fn push(&mut self, lane: usize, item: T) -> Option<T> {
        self.grow(lane);
        let old = self.slots[lane].replace(item);
        if old.is_some() {
            self.superseded[lane] += 1;
        }
        old
    }

    /// The next pending job, round robin: the first lane with a job at or after the lane
    /// following the one served last, wrapping around. `None` when nothing is pending.
    pub fn pop(&mut self) -> Option<(usize, T)> {
        let n = self.slots.len();
        for k in 0..n {
            let lane = (self.next + k) % n;
            if let Some(item) = self.slots[lane].take() {
                // Not wrapped here: a lane created later still comes before the lanes
                // served already.
                self.next = lane + 1;
                return Some((lane, item));
            }
        }
        None
    }

    /// Jobs pending, at most one per lane.
    pub fn len(&self) -> usize {
        self.slots.iter().filter(|s| s.is_some()).count()
    }

    /// Whether no job is pending.
    pub fn is_empty(&self) -> bool {
        self.slots.iter().all(Option::is_none)
    }

    /// Whether `lane` has a job pending.
    pub fn is_pending(&self, lane: usize) -> bool {
        self.slots.get(lane).is_some_and(Option::is_some)
    }

    /// Jobs of `lane` replaced by a newer one before they were served.
    pub fn superseded(&self, lane: usize) -> u64 {
        self.superseded.get(lane).copied().unwrap_or(0)
    }

    /// Jobs replaced over all lanes.
    pub fn superseded_total(&self) -> u64 {
        self.superseded.iter().sum()
    }

    /// Take every pending job, by lane order (the end of a run: they are dropped, not served).
    pub fn drain(&mut self) -> Vec<(usize, T)> {
        self.slots
            .iter_mut()
            .enumerate()
            .filter_map(|(lane, slot)| slot.take().map(|item| (lane, item)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_queue_serves_nothing() {
        let mut q: FairQueue<u32> = FairQueue::new();
        assert!(q.is_empty());
        assert_eq!(q.len(), 0);
        assert_eq!(q.pop(), None);
        assert_eq!(q.superseded(3), 0);
        assert!(q.drain().is_empty());
    }

    #[test]
    fn the_latest_job_of_a_lane_wins_and_the_replaced_one_is_counted() {
        let mut q = FairQueue::new();
        assert_eq!(q.push(0, "a1"), None);
        assert_eq!(q.push(0, "a2"), Some("a1"));
        assert_eq!(q.push(0, "a3"), Some("a2"));
        assert_eq!(q.len(), 1, "one slot per lane");
        assert_eq!(q.superseded(0), 2);
        assert_eq!(q.pop(), Some((0, "a3")));
        assert_eq!(q.pop(), None);
        // A served job is not superseded by the next one.
        assert_eq!(q.push(0, "a4"), None);
        assert_eq!(q.superseded(0), 2);
    }

    #[test]
    fn counts_are_per_lane() {
        let mut q = FairQueue::new();
        q.push(0, 1);
        q.push(2, 1);
        q.push(2, 2);
        q.push(2, 3);
        assert_eq!(q.superseded(0), 0);
        assert_eq!(q.superseded(1), 0);
        assert_eq!(q.superseded(2), 2);
        assert_eq!(q.superseded_total(), 2);
        assert_eq!(q.len(), 2);
        assert!(q.is_pending(2) && !q.is_pending(1) && !q.is_pending(7));
    }

    #[test]
    fn lanes_are_served_round_robin() {
        let mut q = FairQueue::new();
        for lane in 0..3 {
            q.push(lane, lane * 10);
        }
        assert_eq!(q.pop(), Some((0, 0)));
        // Lane 0 is busy again at once: it still waits for lanes 1 and 2.
        q.push(0, 1);
        assert_eq!(q.pop(), Some((1, 10)));
        q.push(1, 11);
        assert_eq!(q.pop(), Some((2, 20)));
        assert_eq!(q.pop(), Some((0, 1)));
        assert_eq!(q.pop(), Some((1, 11)));
        assert_eq!(q.pop(), None);
    }

    #[test]
    fn a_busy_lane_cannot_starve_a_quiet_one() {
        // Lane 0 has a new job every time one is served; lane 1 now and then.
        let mut q = FairQueue::new();
        let mut served = [0u32; 2];
        for step in 0..100 {
            q.push(0, step);
            if step % 10 == 0 {
                q.push(1, step);
            }
            if let Some((lane, _)) = q.pop() {
                served[lane] += 1;
            }
        }
        // Every job of lane 1 was served, none superseded.
        assert_eq!(served[1], 10);
        assert_eq!(q.superseded(1), 0);
        assert_eq!(served[0] + served[1], 100);
    }

    #[test]
    fn two_always_busy_lanes_alternate() {
        let mut q = FairQueue::new();
        let mut order = Vec::new();
        for step in 0..6 {
            q.push(0, step);
            q.push(1, step);
            order.push(q.pop().map(|(lane, _)| lane));
        }
        assert_eq!(
            order,
            [Some(0), Some(1), Some(0), Some(1), Some(0), Some(1)]
        );
        // Each push found the lane's previous job pending every other step.
        assert_eq!(q.superseded(0) + q.superseded(1), 5);
    }

    #[test]
    fn a_lane_created_after_a_pop_is_served_before_the_lanes_served_already() {
        let mut q = FairQueue::new();
        q.push(0, "a1");
        assert_eq!(q.pop(), Some((0, "a1")));
        q.push(0, "a2");
        q.push(1, "b1");
        assert_eq!(q.pop(), Some((1, "b1")));
        assert_eq!(q.pop(), Some((0, "a2")));
    }

    #[test]
    fn drain_takes_every_pending_job() {
        let mut q = FairQueue::new();
        q.push(1, "b");
        q.push(0, "a");
        assert_eq!(q.drain(), vec![(0, "a"), (1, "b")]);
        assert!(q.is_empty());
    }
}
