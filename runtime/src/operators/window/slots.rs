//! Where windows live: [`Slots`], one window per slot in flat vectors (key, bounds, arrival
//! numbers, count), reused through a free list, with the accumulators of each slot kept by
//! its [`Aggregate`]s; and [`Pending`], every window by end, which finds the windows to fire
//! without scanning the keys.
//!
//! Above the aggregates (a slot allocated or reserved gets its accumulators), beside the key
//! table (a slot names its key by id only).

use std::collections::BTreeMap;

use super::aggregates::Aggregate;

/// A slot that holds no window.
pub(super) const FREE: u64 = u64::MAX;

/// Windows, one per slot, in flat vectors; aggregate accumulators are in [`Aggregate`].
#[derive(Debug, Default)]
pub(super) struct Slots {
    pub(super) key: Vec<u32>,
    pub(super) start: Vec<i64>,
    pub(super) end: Vec<i64>,
    /// Arrival number of the window's first record (`FREE` for a free slot).
    pub(super) arrival: Vec<u64>,
    /// Arrival number of its last record (for merging sessions' `last`).
    pub(super) last_arrival: Vec<u64>,
    pub(super) count: Vec<i64>,
    free: Vec<u32>,
}

impl Slots {
    pub(super) fn alloc(
        &mut self,
        aggregates: &mut [Aggregate],
        key: u32,
        start: i64,
        end: i64,
        arrival: u64,
    ) -> u32 {
        match self.free.pop() {
            Some(slot) => {
                let s = slot as usize;
                self.key[s] = key;
                self.start[s] = start;
                self.end[s] = end;
                self.arrival[s] = arrival;
                self.last_arrival[s] = arrival;
                self.count[s] = 0;
                for a in aggregates.iter_mut() {
                    a.cells.reset(s);
                }
                slot
            }
            None => {
                let slot = u32::try_from(self.key.len()).expect("fewer than 2^32 windows");
                self.key.push(key);
                self.start.push(start);
                self.end.push(end);
                self.arrival.push(arrival);
                self.last_arrival.push(arrival);
                self.count.push(0);
                for a in aggregates.iter_mut() {
                    a.cells.push_default();
                }
                slot
            }
        }
    }

    /// Room for `n` more windows (restore).
    pub(super) fn reserve(&mut self, aggregates: &mut [Aggregate], n: usize) {
        self.key.reserve(n);
        self.start.reserve(n);
        self.end.reserve(n);
        self.arrival.reserve(n);
        self.last_arrival.reserve(n);
        self.count.reserve(n);
        for a in aggregates.iter_mut() {
            a.cells.reserve(n);
        }
    }

    /// A copy of every slot, for a snapshot's capture: one bulk copy per vector. Without the
    /// free list (a snapshot reads only live slots, which `arrival` tells from free ones), so
    /// the copy is not for allocating into.
    pub(super) fn capture(&self) -> Slots {
        Slots {
            key: self.key.clone(),
            start: self.start.clone(),
            end: self.end.clone(),
            arrival: self.arrival.clone(),
            last_arrival: self.last_arrival.clone(),
            count: self.count.clone(),
            free: Vec::new(),
        }
    }

    pub(super) fn release(&mut self, slot: u32) {
        self.arrival[slot as usize] = FREE;
        self.free.push(slot);
    }

    pub(super) fn live(&self) -> usize {
        self.key.len() - self.free.len()
    }
}

/// Every window by end, to fire them without scanning the keys. Tumbling and hopping windows
/// share few ends, so a bucket is a run of windows in arrival order. For a session the
/// bucket's end may be older (smaller) than the window's: `fire` moves it on when it gets
/// there. Entries of slots freed by a session merge are skipped by their arrival.
#[derive(Debug, Default)]
pub(super) struct Pending {
    pub(super) by_end: BTreeMap<i64, Vec<(u64, u32)>>,
    /// Emptied buckets, reused.
    pub(super) spare: Vec<Vec<(u64, u32)>>,
}

impl Pending {
    #[inline]
    pub(super) fn add(&mut self, end: i64, arrival: u64, slot: u32) {
        let spare = &mut self.spare;
        self.by_end.entry(end).or_insert_with(|| spare.pop().unwrap_or_default()).push((arrival, slot));
    }
}
