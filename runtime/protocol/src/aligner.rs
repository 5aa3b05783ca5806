//! Barrier alignment and de-duplication on the inputs of one subtask (SPEC §3).
//!
//! An [`Aligner`] sits between a subtask's input channels and its operator. It owns no
//! operator state and does no I/O: it decides, for every batch and barrier that arrives,
//! whether the operator processes it now, later, or never (a duplicate), and when the
//! operator must take its snapshot.
//!
//! States (per checkpoint `c`, exactly-once mode):
//! - *idle*: no alignment in progress; every batch is processed at once.
//! - *aligning c*: `Barrier(c)` has arrived on some inputs. Those inputs are *blocked*: what
//!   arrives on them after the barrier is held back, in order. Other inputs flow.
//! - `Barrier(c)` on the last input -> emit `Snapshot(c)` (state now reflects exactly the
//!   input before the barriers), then release the held input in order -> *idle*.
//! - `Barrier(c')` with `c' > c` on an input that has not delivered `Barrier(c)`, or an abort
//!   of `c` -> drop the alignment of `c`, release the held input -> aligning `c'` / idle.
//!
//! In at-least-once mode no input is ever blocked; the snapshot is taken when the last
//! barrier arrives and may reflect input that came after the first one.
//!
//! Every input also remembers the last sequence number it delivered, and drops batches at or
//! below it (SPEC §3.4), which makes replay idempotent.

use std::collections::VecDeque;

use super::{CheckpointId, Mutant, Mutations, Seq};

/// Whether alignment holds input back (DESIGN.md §3 step 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AlignmentMode {
    /// Block an input after its barrier until every input delivered it: exactly-once state.
    ExactlyOnce,
    /// Never block; snapshots may include post-barrier input: at-least-once after recovery.
    AtLeastOnce,
}

/// What the aligner tells its subtask to do, in order.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum AlignerOutput<B> {
    /// Apply this batch to the operator state now.
    Process {
        /// The input (channel) it came from.
        input: usize,
        /// Its sequence number on that channel.
        seq: Seq,
        /// The batch.
        batch: B,
    },
    /// Every input delivered `Barrier(checkpoint)`: snapshot the operator state now, together
    /// with `positions` (the last sequence number applied per input), then forward the barrier.
    Snapshot {
        /// The checkpoint.
        checkpoint: CheckpointId,
        /// Last applied sequence number per input, part of the snapshot (SPEC §3.4).
        positions: Vec<Seq>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Event<B> {
    Batch { seq: Seq, batch: B },
    Barrier(CheckpointId),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Input {
    /// Highest sequence number delivered to the operator.
    last_seq: Seq,
    /// This input delivered the barrier of the alignment in progress.
    barrier: bool,
}

/// Barrier alignment for one subtask with one or more inputs. `B` is the batch type.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Aligner<B> {
    mode: AlignmentMode,
    inputs: Vec<Input>,
    /// The checkpoint being aligned, if any.
    aligning: Option<CheckpointId>,
    /// Highest checkpoint whose alignment ended (snapshotted or dropped); barriers at or
    /// below it are stale.
    ended: CheckpointId,
    /// What arrived on blocked inputs, held back in arrival order (across inputs, so that a
    /// replay that feeds the same events in the same order reproduces the same processing
    /// order: SPEC §10).
    held: VecDeque<(usize, Event<B>)>,
    /// Held events being released, processed before anything new (per-input order holds).
    released: VecDeque<(usize, Event<B>)>,
    out: VecDeque<AlignerOutput<B>>,
    duplicates: u64,
    mutations: Mutations,
}

impl<B> Aligner<B> {
    /// An aligner over `inputs` fresh channels.
    pub fn new(inputs: usize, mode: AlignmentMode) -> Aligner<B> {
        Aligner::restore(&vec![0; inputs], CheckpointId::default(), mode)
    }

    /// An aligner restored from a snapshot of `checkpoint` whose per-input positions were
    /// `positions` (SPEC §7.3): batches at or below them are duplicates.
    pub fn restore(positions: &[Seq], checkpoint: CheckpointId, mode: AlignmentMode) -> Aligner<B> {
        assert!(!positions.is_empty(), "an aligner needs at least one input");
        Aligner {
            mode,
            inputs: positions.iter().map(|&last_seq| Input { last_seq, barrier: false }).collect(),
            held: VecDeque::new(),
            aligning: None,
            ended: checkpoint,
            released: VecDeque::new(),
            out: VecDeque::new(),
            duplicates: 0,
            mutations: Mutations::NONE,
        }
    }

    /// Switch on deliberately broken behaviour (model checking only). A restore with
    /// [`Mutant::ResetSeqOnRestore`] forgets the positions it was given.
    pub fn with_mutations(mut self, mutations: Mutations) -> Aligner<B> {
        if mutations.has(Mutant::ResetSeqOnRestore) {
            for input in &mut self.inputs {
                input.last_seq = 0;
            }
        }
        self.mutations = mutations;
        self
    }

    /// A batch arrived on `input` with sequence number `seq`.
    pub fn handle_batch(&mut self, input: usize, seq: Seq, batch: B) {
        self.on_event(input, Event::Batch { seq, batch });
        self.drain_released();
    }

    /// `Barrier(checkpoint)` arrived on `input`.
    pub fn handle_barrier(&mut self, input: usize, checkpoint: CheckpointId) {
        self.on_event(input, Event::Barrier(checkpoint));
        self.drain_released();
    }

    /// The coordinator aborted `checkpoint` (SPEC §6.4): an alignment of it (or of an older
    /// one) is dropped and the held input flows again; its late barriers will be ignored.
    pub fn handle_abort(&mut self, checkpoint: CheckpointId) {
        if self.aligning.is_some_and(|c| c <= checkpoint) {
            self.cancel_alignment();
        }
        self.ended = self.ended.max(checkpoint);
        self.drain_released();
    }

    /// The next thing the subtask must do.
    pub fn poll_output(&mut self) -> Option<AlignerOutput<B>> {
        self.out.pop_front()
    }

    /// Last applied sequence number per input.
    pub fn positions(&self) -> Vec<Seq> {
        self.inputs.iter().map(|i| i.last_seq).collect()
    }

    /// The checkpoint being aligned, if any.
    pub fn aligning(&self) -> Option<CheckpointId> {
        self.aligning
    }

    /// How many batches are held back right now.
    pub fn held_batches(&self) -> usize {
        self.held.iter().filter(|(_, e)| matches!(e, Event::Batch { .. })).count()
    }

    /// How many duplicate batches were dropped since this aligner was created.
    pub fn duplicates_dropped(&self) -> u64 {
        self.duplicates
    }

    fn blocked(&self, input: usize) -> bool {
        self.mode == AlignmentMode::ExactlyOnce
            && !self.mutations.has(Mutant::NoAlignment)
            && self.inputs[input].barrier
    }

    fn on_event(&mut self, input: usize, event: Event<B>) {
        if self.blocked(input) {
            self.held.push_back((input, event));
            return;
        }
        match event {
            Event::Batch { seq, batch } => {
                let inp = &mut self.inputs[input];
                if seq <= inp.last_seq && !self.mutations.has(Mutant::NoDedup) {
                    self.duplicates += 1;
                } else {
                    inp.last_seq = seq;
                    self.out.push_back(AlignerOutput::Process { input, seq, batch });
                }
            }
            Event::Barrier(c) => self.on_barrier(input, c),
        }
    }

    fn on_barrier(&mut self, input: usize, c: CheckpointId) {
        if c <= self.ended {
            return; // its alignment already ended: aborted, or a duplicate barrier
        }
        match self.aligning {
            // Barriers on a channel increase, so this input skipped the older checkpoint,
            // which therefore can never align here: drop it (SPEC §3.3).
            Some(a) if c > a => self.cancel_alignment(),
            Some(a) if c < a => return,
            _ => {}
        }
        self.aligning = Some(c);
        self.inputs[input].barrier = true;
        if self.inputs.iter().all(|i| i.barrier) {
            let positions = self.positions();
            self.out.push_back(AlignerOutput::Snapshot { checkpoint: c, positions });
            self.ended = c;
            self.cancel_alignment();
        }
    }

    /// End the alignment in progress (completed or dropped) and release what it held.
    fn cancel_alignment(&mut self) {
        self.aligning = None;
        // Held events go to the front, input by input: anything of the same input still
        // waiting in `released` arrived after them.
        for input in &mut self.inputs {
            input.barrier = false;
        }
        while let Some(held) = self.held.pop_back() {
            self.released.push_front(held);
        }
    }

    fn drain_released(&mut self) {
        while let Some((input, event)) = self.released.pop_front() {
            self.on_event(input, event);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const C1: CheckpointId = CheckpointId(1);
    const C2: CheckpointId = CheckpointId(2);

    fn drain(a: &mut Aligner<&'static str>) -> Vec<AlignerOutput<&'static str>> {
        std::iter::from_fn(|| a.poll_output()).collect()
    }

    fn process(input: usize, seq: Seq, batch: &'static str) -> AlignerOutput<&'static str> {
        AlignerOutput::Process { input, seq, batch }
    }

    // Reference: SPEC §3.1, a blocked input holds back what follows its barrier.
    #[test]
    fn exactly_once_holds_input_after_its_barrier_until_all_inputs_align() {
        let mut a = Aligner::new(2, AlignmentMode::ExactlyOnce);
        a.handle_batch(0, 1, "a1");
        a.handle_barrier(0, C1);
        a.handle_batch(0, 2, "a2"); // after the barrier on input 0: held
        a.handle_batch(1, 1, "b1"); // input 1 has not seen the barrier: flows
        assert_eq!(a.held_batches(), 1);
        assert_eq!(drain(&mut a), vec![process(0, 1, "a1"), process(1, 1, "b1")]);
        a.handle_barrier(1, C1);
        assert_eq!(
            drain(&mut a),
            vec![AlignerOutput::Snapshot { checkpoint: C1, positions: vec![1, 1] }, process(0, 2, "a2"),]
        );
        assert_eq!(a.aligning(), None);
    }

    // Reference: SPEC §3.2.
    #[test]
    fn at_least_once_never_holds_and_snapshots_at_the_last_barrier() {
        let mut a = Aligner::new(2, AlignmentMode::AtLeastOnce);
        a.handle_barrier(0, C1);
        a.handle_batch(0, 1, "a1");
        a.handle_barrier(1, C1);
        assert_eq!(
            drain(&mut a),
            vec![process(0, 1, "a1"), AlignerOutput::Snapshot { checkpoint: C1, positions: vec![1, 0] }]
        );
    }

    // Reference: SPEC §3.1, release keeps each input's order, even across a second barrier.
    #[test]
    fn held_barrier_of_next_checkpoint_blocks_again_on_release() {
        let mut a = Aligner::new(2, AlignmentMode::ExactlyOnce);
        a.handle_barrier(0, C1);
        a.handle_batch(0, 1, "a1");
        a.handle_barrier(0, C2);
        a.handle_batch(0, 2, "a2");
        a.handle_barrier(1, C1);
        assert_eq!(
            drain(&mut a),
            vec![AlignerOutput::Snapshot { checkpoint: C1, positions: vec![0, 0] }, process(0, 1, "a1")]
        );
        assert_eq!(a.aligning(), Some(C2));
        assert_eq!(a.held_batches(), 1);
        a.handle_barrier(1, C2);
        assert_eq!(
            drain(&mut a),
            vec![AlignerOutput::Snapshot { checkpoint: C2, positions: vec![1, 0] }, process(0, 2, "a2")]
        );
    }

    // Reference: SPEC §3.3 and §6.4, an abort releases held input and later barriers of the
    // aborted checkpoint are ignored.
    #[test]
    fn abort_releases_held_input_and_ignores_late_barriers() {
        let mut a = Aligner::new(2, AlignmentMode::ExactlyOnce);
        a.handle_barrier(0, C1);
        a.handle_batch(0, 1, "a1");
        a.handle_abort(C1);
        assert_eq!(drain(&mut a), vec![process(0, 1, "a1")]);
        a.handle_barrier(1, C1);
        a.handle_batch(1, 1, "b1");
        assert_eq!(drain(&mut a), vec![process(1, 1, "b1")]);
        assert_eq!(a.aligning(), None);
    }

    // Reference: SPEC §3.3, a newer barrier on an input that skipped the current one.
    #[test]
    fn newer_barrier_drops_an_alignment_that_cannot_complete() {
        let mut a = Aligner::new(2, AlignmentMode::ExactlyOnce);
        a.handle_barrier(0, C1);
        a.handle_batch(0, 1, "a1");
        a.handle_barrier(1, C2);
        assert_eq!(drain(&mut a), vec![process(0, 1, "a1")]);
        assert_eq!(a.aligning(), Some(C2));
        a.handle_barrier(0, C2);
        assert_eq!(drain(&mut a), vec![AlignerOutput::Snapshot { checkpoint: C2, positions: vec![1, 0] }]);
    }

    // Reference: SPEC §3.4, replayed batches at or below the restored position are dropped.
    #[test]
    fn restored_positions_drop_replayed_duplicates() {
        let mut a = Aligner::restore(&[2, 0], C1, AlignmentMode::ExactlyOnce);
        a.handle_batch(0, 2, "a2");
        a.handle_batch(0, 3, "a3");
        a.handle_barrier(0, C1); // stale: checkpoint 1 is the restore point
        a.handle_batch(0, 4, "a4");
        assert_eq!(drain(&mut a), vec![process(0, 3, "a3"), process(0, 4, "a4")]);
        assert_eq!(a.duplicates_dropped(), 1);
    }
}
