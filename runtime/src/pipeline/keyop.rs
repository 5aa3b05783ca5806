//! The key operator (issue 11): the transform whose local restart would take longest, where a
//! hot standby pays most. Each transform subtask's recovery time is estimated from what the
//! run measures: restoring its snapshot (its largest snapshot's bytes so far, at the restore
//! rate measured by this run's restarts, or a prior) plus re-processing the input since the
//! last checkpoint (half of the largest interval's input, at its measured processing rate). The
//! estimates are in the run report; with `key_operator = "auto"` the standby moves to the
//! transform with the largest estimate whenever it exceeds the current one's by half again.

use serde::Serialize;

use crate::actors::Counters;
use crate::protocol::ParticipantId;
use crate::sync::Arc;

/// Bytes of snapshot restored per millisecond before this run has measured a restore: the
/// development machine's (2 cores; a 100,000-key window's 3 to 6 MB restored in about 29 ms).
pub const PRIOR_RESTORE_BYTES_PER_MS: f64 = 150_000.0;

/// `auto` moves the standby only to a transform whose estimate is this many times the
/// current one's: estimates move with the load, and a move costs a new standby's start.
const MOVE_RATIO: f64 = 1.5;

/// One transform subtask's estimated recovery, as the run report shows it.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Estimate {
    /// `node/subtask`.
    pub subtask: String,
    /// Its largest snapshot's operator state.
    pub snapshot_bytes: u64,
    /// Restoring it.
    pub restore_ms: f64,
    /// Re-processing half of the largest interval's input.
    pub replay_ms: f64,
    /// Their sum.
    pub estimate_ms: f64,
    /// Its standby at the end of the run (`"hot"`, `"warm"`), if it had one.
    pub standby: Option<String>,
}

/// `(restore_ms, replay_ms)` of a subtask whose counters are `c`, restoring at
/// `restore_bytes_per_ms`.
pub fn estimate(c: &Counters, restore_bytes_per_ms: f64) -> (f64, f64) {
    use std::sync::atomic::Ordering::Relaxed;
    let bytes = c.snapshot_bytes.load(Relaxed) as f64;
    let busy_ms = c.busy_nanos.load(Relaxed) as f64 / 1e6;
    let records = c.records_in.load(Relaxed) as f64;
    let replay_ms =
        if records > 0.0 { c.interval_records.load(Relaxed) as f64 / 2.0 * busy_ms / records } else { 0.0 };
    (bytes / restore_bytes_per_ms.max(1.0), replay_ms)
}

/// The candidates of `key_operator = "auto"` in one run attempt, and which has the standby.
pub struct Chooser {
    /// Per candidate node: its name and its subtasks.
    nodes: Vec<(String, Vec<ParticipantId>)>,
    /// The node whose subtasks have the standby.
    current: usize,
    /// Tell a subtask to start (`true`) or stop its standby.
    switch: Box<dyn Fn(ParticipantId, bool) + Send>,
}

impl Chooser {
    /// Over candidate `nodes` (name, subtasks), the standby on `current`'s; `switch` turns a
    /// subtask's standby on or off.
    pub fn new(
        nodes: Vec<(String, Vec<ParticipantId>)>,
        current: usize,
        switch: Box<dyn Fn(ParticipantId, bool) + Send>,
    ) -> Chooser {
        Chooser { nodes, current, switch }
    }

    /// Re-evaluate: move the standby if another candidate's largest estimate is well above the
    /// current one's. Returns the node it moved to.
    pub fn reevaluate(&mut self, counters: &[Arc<Counters>], restore_rate: f64) -> Option<&str> {
        let worst = |subtasks: &[ParticipantId]| {
            subtasks
                .iter()
                .map(|&p| {
                    let (restore, replay) = estimate(&counters[p], restore_rate);
                    restore + replay
                })
                .fold(0.0, f64::max)
        };
        let (best, best_ms) = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, (_, subtasks))| (i, worst(subtasks)))
            .max_by(|a, b| a.1.total_cmp(&b.1))?;
        let current_ms = worst(&self.nodes[self.current].1);
        if best == self.current || best_ms <= current_ms * MOVE_RATIO {
            return None;
        }
        for &p in &self.nodes[self.current].1 {
            (self.switch)(p, false);
        }
        for &p in &self.nodes[best].1 {
            (self.switch)(p, true);
        }
        tracing::info!(
            "key operator: the standby moves from {} ({current_ms:.0} ms estimated) to {} ({best_ms:.0} ms)",
            self.nodes[self.current].0,
            self.nodes[best].0
        );
        self.current = best;
        Some(&self.nodes[best].0)
    }

    /// The node whose subtasks have the standby.
    pub fn current(&self) -> &str {
        &self.nodes[self.current].0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::Mutex;
    use std::sync::atomic::Ordering::Relaxed;

    fn counters(bytes: u64, interval: u64, records: u64, busy_ms: u64) -> Arc<Counters> {
        let c = Counters::default();
        c.snapshot_bytes.store(bytes, Relaxed);
        c.interval_records.store(interval, Relaxed);
        c.records_in.store(records, Relaxed);
        c.busy_nanos.store(busy_ms * 1_000_000, Relaxed);
        Arc::new(c)
    }

    #[test]
    fn the_estimate_is_restoring_the_snapshot_plus_replaying_half_an_interval() {
        // 3 MB at 150 kB/ms: 20 ms; 1,000,000 records per interval at 10,000 records/ms: 50 ms.
        let (restore, replay) = estimate(&counters(3_000_000, 1_000_000, 10_000_000, 1_000), 150_000.0);
        assert_eq!((restore, replay), (20.0, 50.0));
        assert_eq!(estimate(&Counters::default(), 150_000.0), (0.0, 0.0), "nothing measured yet");
    }

    #[test]
    fn auto_moves_the_standby_only_to_a_clearly_larger_estimate() {
        let switched = Arc::new(Mutex::new(Vec::new()));
        let log = switched.clone();
        let nodes = vec![("a".to_owned(), vec![1]), ("b".to_owned(), vec![2, 3])];
        let mut chooser =
            Chooser::new(nodes, 0, Box::new(move |p, on| crate::sync::lock(&log).push((p, on))));
        let small = counters(1_500_000, 0, 1, 0); // 10 ms
        let a_bit_more = counters(2_000_000, 0, 1, 0); // 13 ms
        let much_more = counters(6_000_000, 0, 1, 0); // 40 ms
        let all = vec![small.clone(), small.clone(), a_bit_more, small.clone()];
        assert_eq!(chooser.reevaluate(&all, 150_000.0), None, "13 ms is not half again 10 ms");
        let all = vec![small.clone(), small.clone(), small, much_more];
        assert_eq!(chooser.reevaluate(&all, 150_000.0), Some("b"));
        assert_eq!(chooser.current(), "b");
        assert_eq!(*crate::sync::lock(&switched), [(1, false), (2, true), (3, true)]);
    }
}
