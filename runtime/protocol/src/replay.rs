//! The input gate of a transform or sink subtask (SPEC §10.3): it sits in front of the
//! [`Task`](super::participant::Task) core and
//!
//! - drops duplicates: a batch at or below the highest sequence number already seen on its
//!   input, a barrier at or below the highest seen there (SPEC §3.4 applied at arrival, so a
//!   replay never reaches the aligner twice);
//! - logs the order in which it fed events to the core, one small *determinant* per event
//!   (input and sequence number or barrier, and aborts);
//! - after a local recovery, feeds the replayed input in exactly the logged order, so the
//!   restarted subtask processes the same batches in the same order and sends the same output
//!   with the same sequence numbers (Clonos, SIGMOD 2021); once the log is used up it feeds in
//!   arrival order again.
//!
//! Why the log is of *feed* order: the aligner is deterministic, so the same events fed in
//! the same order from the same state give the same actions. A snapshot of `c` reflects every
//! batch up to the input's position, so replay feeds the logged events that come after those
//! positions (batches above them, barriers above `c`, every abort) in their logged order. The
//! aligner releases held input in arrival order (SPEC §3.1), which is what makes "feed the
//! held events first" the same as what happened after the original snapshot.
//!
//! A single-input subtask logs too. Its one data input is FIFO, but the coordinator's aborts
//! are a second input of the core, and where an abort falls among the barriers decides what
//! the subtask snapshots and stages: a restarted sink that got `Abort(c1)` before the replay
//! of `Barrier(c1)` would skip that barrier and stage the same output again under the next
//! checkpoint (found by the protocol model; `protocol-model/README.md`, "A protocol bug
//! found by the model"). One determinant per batch, dropped when a checkpoint completes, is
//! a small price for that.

use std::collections::{BTreeMap, VecDeque};

use super::{CheckpointId, Mutant, Mutations, Seq};

/// What arrived on an input.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Arrival<B> {
    /// A sequenced item.
    Batch {
        /// Its sequence number.
        seq: Seq,
        /// The batch.
        batch: B,
    },
    /// A barrier.
    Barrier(CheckpointId),
}

/// What the driver passes to its core next.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Feed<B> {
    /// `Task::handle_batch(input, seq, batch)`.
    Batch {
        /// The input.
        input: usize,
        /// Its sequence number.
        seq: Seq,
        /// The batch.
        batch: B,
    },
    /// `Task::handle_barrier(input, c)`.
    Barrier {
        /// The input.
        input: usize,
        /// The checkpoint.
        checkpoint: CheckpointId,
    },
    /// `Task::handle_checkpoint_abort(c)`.
    Abort(CheckpointId),
    /// A duplicate batch was dropped on `input` (the driver returns its flow-control credit).
    Duplicate {
        /// The input.
        input: usize,
    },
    /// Replayed input differs from the log: local recovery cannot reproduce the original
    /// output, and the driver must escalate (a global rollback).
    Diverged {
        /// What differed.
        detail: String,
    },
}

/// One determinant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Determinant {
    /// A batch from `input` with sequence number `seq` was fed.
    Batch {
        /// The input.
        input: usize,
        /// The sequence number.
        seq: Seq,
    },
    /// `Barrier(c)` from `input` was fed.
    Barrier {
        /// The input.
        input: usize,
        /// The checkpoint.
        checkpoint: CheckpointId,
    },
    /// An abort of `c` was fed.
    Abort(CheckpointId),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Replay<B> {
    /// Absolute index of the next log entry to feed.
    cursor: u64,
    /// The restored positions and checkpoint: logged events at or below them are in the
    /// restored state already.
    cut: Vec<Seq>,
    cut_checkpoint: CheckpointId,
    /// Arrived, not yet fed, in arrival order.
    pending: VecDeque<(usize, Arrival<B>)>,
    /// Aborts that arrived during the replay, fed after it.
    aborts: Vec<CheckpointId>,
    /// Completions that arrived during the replay: the log is truncated after it.
    completed: Option<CheckpointId>,
}

/// The input gate of one subtask.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Gate<B> {
    max_seq: Vec<Seq>,
    max_barrier: Vec<CheckpointId>,
    logging: bool,
    log: VecDeque<Determinant>,
    /// Absolute index of `log[0]`.
    log_base: u64,
    /// Absolute log index of the first barrier of each checkpoint fed.
    first_barrier: BTreeMap<CheckpointId, u64>,
    replay: Option<Replay<B>>,
    out: VecDeque<Feed<B>>,
    mutations: Mutations,
}

impl<B> Gate<B> {
    /// The gate of a subtask restored from `checkpoint` (0: none) with `positions` per input.
    pub fn new(positions: &[Seq], checkpoint: CheckpointId) -> Gate<B> {
        Gate {
            max_seq: positions.to_vec(),
            max_barrier: vec![checkpoint; positions.len()],
            logging: true,
            log: VecDeque::new(),
            log_base: 0,
            first_barrier: BTreeMap::new(),
            replay: None,
            out: VecDeque::new(),
            mutations: Mutations::NONE,
        }
    }

    /// Switch on deliberately broken behaviour (model checking only).
    pub fn with_mutations(mut self, mutations: Mutations) -> Gate<B> {
        self.mutations = mutations;
        self
    }

    /// Something arrived on `input`.
    pub fn handle_arrival(&mut self, input: usize, arrival: Arrival<B>) {
        let dedup = !self.mutations.has(Mutant::NoDedup);
        match &arrival {
            Arrival::Batch { seq, .. } if dedup && *seq <= self.max_seq[input] => {
                self.out.push_back(Feed::Duplicate { input });
                return;
            }
            Arrival::Barrier(c) if *c <= self.max_barrier[input] => return,
            Arrival::Batch { seq, .. } => self.max_seq[input] = self.max_seq[input].max(*seq),
            Arrival::Barrier(c) => self.max_barrier[input] = *c,
        }
        match &mut self.replay {
            Some(replay) => {
                replay.pending.push_back((input, arrival));
                self.pump();
            }
            None => self.feed(input, arrival),
        }
    }

    /// The coordinator aborted `checkpoint`.
    pub fn handle_abort(&mut self, checkpoint: CheckpointId) {
        match &mut self.replay {
            Some(replay) => replay.aborts.push(checkpoint),
            None => {
                self.record(Determinant::Abort(checkpoint));
                self.out.push_back(Feed::Abort(checkpoint));
            }
        }
    }

    /// `checkpoint` completed: no recovery will restore anything older, so the log before
    /// its first barrier is dropped.
    pub fn handle_complete(&mut self, checkpoint: CheckpointId) {
        match &mut self.replay {
            Some(replay) => replay.completed = replay.completed.max(Some(checkpoint)),
            None => self.truncate(checkpoint),
        }
    }

    /// The subtask restarted and restored its snapshot of `checkpoint` with `positions`: feed
    /// replayed input in the logged order until the log is used up.
    pub fn restart(&mut self, positions: &[Seq], checkpoint: CheckpointId) {
        self.max_seq = positions.to_vec();
        self.max_barrier = vec![checkpoint; positions.len()];
        self.out.clear();
        if self.mutations.has(Mutant::NoDeterminants) {
            // The mutant forgets the log: replayed input is fed as it arrives.
            self.log.clear();
            self.replay = None;
            return;
        }
        self.replay = Some(Replay {
            cursor: self.log_base,
            cut: positions.to_vec(),
            cut_checkpoint: checkpoint,
            pending: VecDeque::new(),
            aborts: Vec::new(),
            completed: None,
        });
        self.pump();
    }

    /// Whether replayed input is still being fed in logged order.
    pub fn replaying(&self) -> bool {
        self.replay.is_some()
    }

    /// The highest sequence number seen per input.
    pub fn positions(&self) -> &[Seq] {
        &self.max_seq
    }

    /// The highest barrier arrived per input.
    pub fn barriers(&self) -> &[CheckpointId] {
        &self.max_barrier
    }

    /// Determinants held (for memory accounting and tests).
    pub fn log_len(&self) -> usize {
        self.log.len()
    }

    /// The next thing to feed to the core.
    pub fn poll(&mut self) -> Option<Feed<B>> {
        self.out.pop_front()
    }

    fn record(&mut self, d: Determinant) {
        if !self.logging {
            return;
        }
        if let Determinant::Barrier { checkpoint, .. } = d {
            let at = self.log_base + self.log.len() as u64;
            self.first_barrier.entry(checkpoint).or_insert(at);
        }
        self.log.push_back(d);
    }

    fn feed(&mut self, input: usize, arrival: Arrival<B>) {
        match arrival {
            Arrival::Batch { seq, batch } => {
                self.record(Determinant::Batch { input, seq });
                self.out.push_back(Feed::Batch { input, seq, batch });
            }
            Arrival::Barrier(checkpoint) => {
                self.record(Determinant::Barrier { input, checkpoint });
                self.out.push_back(Feed::Barrier { input, checkpoint });
            }
        }
    }

    fn truncate(&mut self, checkpoint: CheckpointId) {
        let Some(&at) = self.first_barrier.get(&checkpoint) else { return };
        let drop = (at.saturating_sub(self.log_base) as usize).min(self.log.len());
        self.log.drain(..drop);
        self.log_base += drop as u64;
        self.first_barrier = self.first_barrier.split_off(&checkpoint);
    }

    /// Feed pending input in logged order as far as it has arrived; when the log is used up,
    /// feed the rest in arrival order and leave replay.
    fn pump(&mut self) {
        let Some(replay) = &mut self.replay else { return };
        loop {
            let index = (replay.cursor - self.log_base) as usize;
            let Some(&entry) = self.log.get(index) else { break };
            let wanted = match entry {
                Determinant::Abort(c) => {
                    self.out.push_back(Feed::Abort(c));
                    replay.cursor += 1;
                    continue;
                }
                Determinant::Batch { input, seq } if seq <= replay.cut[input] => None,
                Determinant::Barrier { checkpoint, .. } if checkpoint <= replay.cut_checkpoint => None,
                Determinant::Batch { input, .. } | Determinant::Barrier { input, .. } => Some(input),
            };
            let Some(input) = wanted else {
                replay.cursor += 1; // already in the restored state
                continue;
            };
            let Some(at) = replay.pending.iter().position(|(i, _)| *i == input) else { break };
            let (_, arrival) = replay.pending.remove(at).expect("found above");
            let matches = match (&arrival, entry) {
                (Arrival::Batch { seq, .. }, Determinant::Batch { seq: s, .. }) => *seq == s,
                (Arrival::Barrier(c), Determinant::Barrier { checkpoint, .. }) => *c == checkpoint,
                _ => false,
            };
            if !matches {
                self.out.push_back(Feed::Diverged {
                    detail: format!(
                        "input {input}: the log expects {entry:?}, the replay sent {}",
                        show(&arrival)
                    ),
                });
                self.replay = None;
                return;
            }
            replay.cursor += 1;
            self.out.push_back(match arrival {
                Arrival::Batch { seq, batch } => Feed::Batch { input, seq, batch },
                Arrival::Barrier(checkpoint) => Feed::Barrier { input, checkpoint },
            });
        }
        if (replay.cursor - self.log_base) as usize >= self.log.len() {
            let replay = self.replay.take().expect("replaying");
            for (input, arrival) in replay.pending {
                self.feed(input, arrival);
            }
            for c in replay.aborts {
                self.handle_abort(c);
            }
            if let Some(c) = replay.completed {
                self.truncate(c);
            }
        }
    }
}

fn show<B>(arrival: &Arrival<B>) -> String {
    match arrival {
        Arrival::Batch { seq, .. } => format!("batch {seq}"),
        Arrival::Barrier(c) => format!("barrier {}", c.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const C1: CheckpointId = CheckpointId(1);

    fn drain(g: &mut Gate<&'static str>) -> Vec<Feed<&'static str>> {
        std::iter::from_fn(|| g.poll()).collect()
    }

    fn batch(input: usize, seq: Seq, batch: &'static str) -> Feed<&'static str> {
        Feed::Batch { input, seq, batch }
    }

    // Reference: SPEC §10.3, duplicates are dropped at arrival.
    #[test]
    fn duplicates_are_dropped_and_reported() {
        let mut g = Gate::new(&[2], CheckpointId(0));
        g.handle_arrival(0, Arrival::Batch { seq: 2, batch: "old" });
        g.handle_arrival(0, Arrival::Batch { seq: 3, batch: "new" });
        assert_eq!(drain(&mut g), vec![Feed::Duplicate { input: 0 }, batch(0, 3, "new")]);
    }

    // Reference: SPEC §10.3; the model's counterexample (protocol-model README). A restarted
    // single-input subtask replays its barriers and aborts in their original order, however
    // the abort and the replayed barrier arrive.
    #[test]
    fn a_single_input_replays_an_abort_after_the_barrier_it_followed() {
        let mut g = Gate::new(&[0], CheckpointId(0));
        g.handle_arrival(0, Arrival::Batch { seq: 1, batch: "a1" });
        g.handle_arrival(0, Arrival::Barrier(C1));
        assert_eq!(drain(&mut g).len(), 2);
        g.restart(&[0], CheckpointId(0)); // no completed checkpoint: restored empty
        g.handle_abort(C1); // overtakes the replay
        g.handle_arrival(0, Arrival::Batch { seq: 1, batch: "a1" });
        assert_eq!(drain(&mut g), vec![batch(0, 1, "a1")], "the abort waits for the barrier");
        g.handle_arrival(0, Arrival::Barrier(C1));
        assert_eq!(
            drain(&mut g),
            vec![Feed::Barrier { input: 0, checkpoint: C1 }, Feed::Abort(C1)],
            "the barrier first, as before the failure"
        );
        assert!(!g.replaying());
    }

    // Reference: SPEC §10.3, replay follows the logged order, not the arrival order.
    #[test]
    fn replay_feeds_in_logged_order_then_in_arrival_order() {
        let mut g = Gate::new(&[0, 0], CheckpointId(0));
        g.handle_arrival(0, Arrival::Batch { seq: 1, batch: "a1" });
        g.handle_arrival(1, Arrival::Batch { seq: 1, batch: "b1" });
        g.handle_arrival(0, Arrival::Batch { seq: 2, batch: "a2" });
        assert_eq!(drain(&mut g).len(), 3);
        g.restart(&[1, 0], C1); // a1 is in the restored state
        g.handle_arrival(0, Arrival::Barrier(C1)); // stale: dropped
        g.handle_arrival(0, Arrival::Batch { seq: 2, batch: "a2" }); // logged after b1: waits
        assert_eq!(drain(&mut g), vec![]);
        g.handle_arrival(1, Arrival::Batch { seq: 1, batch: "b1" });
        assert_eq!(drain(&mut g), vec![batch(1, 1, "b1"), batch(0, 2, "a2")]);
        assert!(!g.replaying());
        g.handle_arrival(1, Arrival::Batch { seq: 2, batch: "b2" });
        assert_eq!(drain(&mut g), vec![batch(1, 2, "b2")]);
    }

    // Reference: SPEC §10.3, the log is truncated at the first barrier of a completed checkpoint.
    #[test]
    fn completion_truncates_the_log_before_its_first_barrier() {
        let mut g: Gate<&'static str> = Gate::new(&[0, 0], CheckpointId(0));
        g.handle_arrival(0, Arrival::Batch { seq: 1, batch: "a1" });
        g.handle_arrival(0, Arrival::Barrier(C1));
        g.handle_arrival(1, Arrival::Batch { seq: 1, batch: "b1" });
        g.handle_arrival(1, Arrival::Barrier(C1));
        g.handle_complete(C1);
        assert_eq!(g.log_len(), 3);
    }
}
