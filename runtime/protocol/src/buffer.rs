//! The buffer queue of one output channel (SPEC §10.2, DESIGN.md §4.2): what a sender put on
//! the channel since the latest completed checkpoint, so that a receiver restarted alone can
//! be sent it again (upstream backup).
//!
//! The queue holds sequenced items and barriers in channel order. It starts just after
//! `Barrier(base)`, where `base` is the latest completed checkpoint the sender has heard of
//! (or the start of the channel). A completion of `c` drops everything up to and including
//! `Barrier(c)`: a receiver can never again need it, because it restores from `c` or later.
//! A receiver restored from checkpoint `r` with position `p` on this channel needs exactly the
//! items after sequence number `p`, and the barriers after them; that is available when
//! `r >= base` (nothing it needs was dropped).

use std::collections::VecDeque;

use super::{CheckpointId, Mutant, Mutations, Seq};

/// One entry of a buffer queue.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Buffered<T> {
    /// A sequenced item.
    Batch {
        /// Its sequence number on the channel.
        seq: Seq,
        /// What it carries.
        item: T,
    },
    /// A barrier.
    Barrier(CheckpointId),
}

/// Why a replay cannot be served: what the receiver needs was already dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ReplayGap {
    /// The checkpoint the queue starts after.
    pub base: CheckpointId,
    /// The checkpoint the receiver restored.
    pub restored: CheckpointId,
}

impl ReplayGap {
    /// Whether what a sender kept since `Barrier(base)`, from the item after sequence number
    /// `base_seq` on, can serve a receiver restored from checkpoint `restored` whose position
    /// on the channel is `from_seq` (SPEC §10.2). Sources, which re-read instead of keeping a
    /// queue, check the same.
    pub fn check(
        base: CheckpointId,
        base_seq: Seq,
        restored: CheckpointId,
        from_seq: Seq,
    ) -> Result<(), ReplayGap> {
        if restored < base || from_seq < base_seq { Err(ReplayGap { base, restored }) } else { Ok(()) }
    }
}

impl std::fmt::Display for ReplayGap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the buffer queue starts after {} but the receiver restored {}", self.base, self.restored)
    }
}

/// The buffer queue of one channel.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct BufferQueue<T> {
    entries: VecDeque<Buffered<T>>,
    /// The queue starts after `Barrier(base)`.
    base: CheckpointId,
    /// The last sequence number before the first entry.
    base_seq: Seq,
    /// Over its memory budget: nothing is kept until the next barrier.
    overflowed: bool,
    /// It gave its entries up (an overflow) since its base was last at or below a completed
    /// checkpoint: its base may be ahead of the latest completed checkpoint, and a replay it
    /// cannot serve is the budget's doing (SPEC §11.6), not an early truncation.
    gave_up: bool,
    /// The highest sequence number the receiver's current incarnation has been sent: what
    /// it can have applied. A sender that restarts from a snapshot past it cannot continue
    /// the channel (SPEC §10.2).
    sent_high: Seq,
    /// The latest barrier the receiver's current incarnation restored or has been sent: a
    /// sender that restarts from a later snapshot would not send that snapshot's barrier
    /// again (SPEC §10.2).
    barrier_high: CheckpointId,
    /// The checkpoint the receiver last restored (0: it never restarted).
    receiver_restored: CheckpointId,
    mutations: Mutations,
}

impl<T> BufferQueue<T> {
    /// An empty queue of a channel whose sender restored checkpoint `base` (0: none) with
    /// last sequence number `base_seq` on this channel.
    pub fn new(base: CheckpointId, base_seq: Seq) -> BufferQueue<T> {
        BufferQueue {
            entries: VecDeque::new(),
            base,
            base_seq,
            overflowed: false,
            gave_up: false,
            sent_high: base_seq,
            barrier_high: base,
            receiver_restored: CheckpointId(0),
            mutations: Mutations::NONE,
        }
    }

    /// Switch on deliberately broken behaviour (model checking only).
    pub fn with_mutations(mut self, mutations: Mutations) -> BufferQueue<T> {
        self.mutations = mutations;
        self
    }

    /// The sender put a sequenced item on the channel.
    pub fn push_batch(&mut self, seq: Seq, item: T) {
        self.sent_high = self.sent_high.max(seq);
        if self.overflowed {
            self.base_seq = seq;
        } else {
            self.entries.push_back(Buffered::Batch { seq, item });
        }
    }

    /// The sender put `Barrier(c)` on the channel (after its snapshot of `c`).
    pub fn push_barrier(&mut self, c: CheckpointId) {
        self.barrier_high = self.barrier_high.max(c);
        if self.overflowed {
            self.overflowed = false;
            self.base = c;
            return;
        }
        self.entries.push_back(Buffered::Barrier(c));
        if self.mutations.has(Mutant::TruncateAtSnapshot) {
            self.drop_through(c);
        }
    }

    /// Checkpoint `c` completed: no receiver will restore anything older.
    pub fn complete(&mut self, c: CheckpointId) {
        self.drop_through(c);
    }

    fn drop_through(&mut self, c: CheckpointId) {
        // An overflowed queue moves its base to the next barrier, past this completion.
        if self.base <= c && !self.overflowed {
            self.gave_up = false;
        }
        let Some(at) = self.entries.iter().position(|e| matches!(e, Buffered::Barrier(b) if *b >= c)) else {
            return;
        };
        for entry in self.entries.drain(..=at) {
            match entry {
                Buffered::Batch { seq, .. } => self.base_seq = seq,
                Buffered::Barrier(b) => self.base = b,
            }
        }
    }

    /// The entries a receiver restored from checkpoint `restored`, whose last applied sequence
    /// number on this channel is `from_seq`, must receive again, in channel order. From now on
    /// the receiver has been sent exactly these (and what follows live).
    pub fn replay(
        &mut self,
        from_seq: Seq,
        restored: CheckpointId,
    ) -> Result<impl Iterator<Item = &Buffered<T>>, ReplayGap> {
        if self.overflowed {
            return Err(ReplayGap { base: self.base, restored });
        }
        ReplayGap::check(self.base, self.base_seq, restored, from_seq)?;
        let start = if from_seq == self.base_seq {
            0
        } else {
            self.entries
                .iter()
                .position(|e| matches!(e, Buffered::Batch { seq, .. } if *seq == from_seq))
                .map_or(self.entries.len(), |i| i + 1)
        };
        let last = self.entries.iter().skip(start).filter_map(|e| match e {
            Buffered::Batch { seq, .. } => Some(*seq),
            Buffered::Barrier(_) => None,
        });
        self.sent_high = last.last().unwrap_or(from_seq);
        let barriers = self.entries.iter().skip(start).filter_map(|e| match e {
            Buffered::Barrier(b) => Some(*b),
            Buffered::Batch { .. } => None,
        });
        self.barrier_high = barriers.max().unwrap_or(restored).max(restored);
        self.receiver_restored = restored;
        Ok(self.entries.iter().skip(start))
    }

    /// The sender itself restarted from its snapshot of `c` (0: none), in which its last
    /// sequence number on this channel was `seq`: what it put on the channel after
    /// `Barrier(c)` will be produced again (identically), so it is dropped here and pushed
    /// again as it is produced. Without `Barrier(c)` in the queue (none for `c` = 0, or a
    /// completion or an overflow dropped it) the queue starts afresh after `Barrier(c)`.
    ///
    /// The channel cannot go on if the receiver has not been sent everything up to `seq`:
    /// a receiver that restarted from an older checkpoint while this sender was replaying to
    /// it still needs items the sender will now never produce again (the sender resumes
    /// after `seq`). Nor if the receiver has not been sent `Barrier(c)`: a restarted sender
    /// never sends the barrier of the snapshot it restored, and a receiver restored from an
    /// older checkpoint would wait for it forever. Either is a replay gap, healed by a global
    /// rollback; the protocol model's fuzzer found both traces (SPEC §10.2).
    pub fn restart_from(&mut self, c: CheckpointId, seq: Seq) -> Result<(), ReplayGap> {
        match self.entries.iter().position(|e| matches!(e, Buffered::Barrier(b) if *b == c)) {
            Some(at) => self.entries.truncate(at + 1),
            None => {
                self.entries.clear();
                self.base = c;
                self.base_seq = seq;
                self.overflowed = false;
                self.gave_up = false;
            }
        }
        let behind = seq > self.sent_high || c > self.barrier_high;
        if behind && !self.mutations.has(Mutant::NoRestartGap) {
            return Err(ReplayGap { base: c, restored: self.receiver_restored });
        }
        self.sent_high = self.sent_high.max(seq);
        Ok(())
    }

    /// The entries held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether it gave its entries up to its budget since its base was last at or below a
    /// completed checkpoint.
    pub fn gave_up(&self) -> bool {
        self.gave_up
    }

    /// The checkpoint the queue starts after.
    pub fn base(&self) -> CheckpointId {
        self.base
    }

    /// Give up the entries (a memory budget was exceeded): until the next barrier, no replay
    /// can be served; afterwards the queue starts after that barrier.
    pub fn overflow(&mut self) {
        if let Some(Buffered::Batch { seq, .. }) =
            self.entries.iter().rev().find(|e| matches!(e, Buffered::Batch { .. }))
        {
            self.base_seq = *seq;
        }
        self.entries.clear();
        self.overflowed = true;
        self.gave_up = true;
    }

    /// The entries, in channel order.
    pub fn entries(&self) -> impl Iterator<Item = &Buffered<T>> {
        self.entries.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const C1: CheckpointId = CheckpointId(1);
    const C2: CheckpointId = CheckpointId(2);

    /// A sender that sent seq 1..8 and Barrier(c4), restarted from nothing and has produced
    /// 1..4 again.
    fn sent_8_then_restarted_and_sent_4_again() -> BufferQueue<&'static str> {
        let mut q = BufferQueue::new(CheckpointId(0), 0);
        for seq in 1..=8 {
            q.push_batch(seq, "b");
        }
        q.push_barrier(CheckpointId(4));
        q.restart_from(CheckpointId(0), 0).unwrap();
        for seq in 1..=4 {
            q.push_batch(seq, "b");
        }
        q
    }

    // Reference: SPEC §10.2, the sender's own restart. The trace the fuzzer found, reduced.
    #[test]
    fn a_sender_restarting_past_what_its_restarted_receiver_was_sent_is_a_replay_gap() {
        let mut q = sent_8_then_restarted_and_sent_4_again();
        // The receiver restarts too, from nothing, and is sent 1..4.
        assert_eq!(q.replay(0, CheckpointId(0)).unwrap().count(), 4);
        // The sender fails again and restores a checkpoint at seq 8: 5..8 would never come.
        assert_eq!(
            q.restart_from(CheckpointId(4), 8),
            Err(ReplayGap { base: CheckpointId(4), restored: CheckpointId(0) })
        );
    }

    // Reference: SPEC §10.2, the sender's own restart. The second trace the fuzzer found,
    // reduced: the receiver restored c1 and was served before the sender had sent
    // Barrier(c2) again; c2 completed; the sender restores c2 and would never send it.
    #[test]
    fn a_sender_restarting_past_the_barrier_its_restarted_receiver_was_sent_is_a_replay_gap() {
        let mut q: BufferQueue<&'static str> = BufferQueue::new(C1, 8);
        q.push_barrier(C2);
        q.complete(C1);
        // The sender restarts from c1 (c2 was not complete yet): Barrier(c2) will come again.
        q.restart_from(C1, 8).unwrap();
        // The receiver restarts from c1 and is sent nothing: it still needs Barrier(c2).
        assert_eq!(q.replay(8, C1).unwrap().count(), 0);
        q.complete(C2);
        assert_eq!(q.restart_from(C2, 8), Err(ReplayGap { base: C2, restored: C1 }));
    }

    #[test]
    fn a_sender_restarting_after_the_barrier_its_receiver_was_sent_goes_on() {
        let mut q: BufferQueue<&'static str> = BufferQueue::new(C1, 8);
        q.push_barrier(C2);
        q.complete(C2);
        q.restart_from(C2, 8).unwrap();
        // After a replay that included it, too.
        let mut q: BufferQueue<&'static str> = BufferQueue::new(C1, 8);
        q.push_barrier(C2);
        assert_eq!(q.replay(8, C1).unwrap().count(), 1);
        q.complete(C2);
        q.restart_from(C2, 8).unwrap();
    }

    #[test]
    fn a_sender_restarting_within_what_its_receiver_was_sent_goes_on() {
        let mut q = sent_8_then_restarted_and_sent_4_again();
        // The receiver never restarted: it has 1..8, so the sender may resume after 8.
        q.restart_from(CheckpointId(4), 8).unwrap();
        // And after a replay of everything, too.
        assert_eq!(q.replay(8, CheckpointId(4)).unwrap().count(), 0);
        q.restart_from(CheckpointId(4), 8).unwrap();
    }

    fn replayed(
        q: &mut BufferQueue<&'static str>,
        from: Seq,
        r: CheckpointId,
    ) -> Vec<Buffered<&'static str>> {
        q.replay(from, r).unwrap().cloned().collect()
    }

    // Reference: SPEC §10.2.
    #[test]
    fn a_receiver_gets_everything_after_its_position_including_later_barriers() {
        let mut q = BufferQueue::new(CheckpointId(0), 0);
        q.push_batch(1, "a");
        q.push_barrier(C1);
        q.push_batch(2, "b");
        q.push_barrier(C2);
        assert_eq!(
            replayed(&mut q, 1, C1),
            vec![Buffered::Barrier(C1), Buffered::Batch { seq: 2, item: "b" }, Buffered::Barrier(C2)]
        );
        q.complete(C1);
        assert_eq!(q.base(), C1);
        assert_eq!(
            replayed(&mut q, 1, C1),
            vec![Buffered::Batch { seq: 2, item: "b" }, Buffered::Barrier(C2)]
        );
        assert_eq!(
            q.replay(0, CheckpointId(0)).err(),
            Some(ReplayGap { base: C1, restored: CheckpointId(0) })
        );
    }

    // Reference: SPEC §10.2, a restarted sender produces its output again from its snapshot.
    #[test]
    fn a_restarted_sender_drops_what_follows_its_restored_barrier() {
        let mut q = BufferQueue::new(CheckpointId(0), 0);
        q.push_batch(1, "a");
        q.push_barrier(C1);
        q.push_batch(2, "b");
        q.restart_from(C1, 1).unwrap();
        assert_eq!(q.len(), 2);
        q.push_batch(2, "b");
        assert_eq!(replayed(&mut q, 1, C1).len(), 2);
    }

    // Reference: SPEC §10.2, a sender restarted from nothing, or from a checkpoint whose
    // barrier was dropped, keeps only what it produces again.
    #[test]
    fn a_restarted_sender_without_its_barrier_in_the_queue_starts_afresh() {
        let mut q = BufferQueue::new(CheckpointId(0), 0);
        q.push_batch(1, "a");
        q.push_barrier(C1);
        q.push_batch(2, "b");
        q.restart_from(CheckpointId(0), 0).unwrap();
        assert!(q.is_empty());
        q.push_batch(1, "a");
        assert_eq!(replayed(&mut q, 0, CheckpointId(0)), vec![Buffered::Batch { seq: 1, item: "a" }]);

        let mut q = BufferQueue::new(CheckpointId(0), 0);
        q.push_batch(1, "a");
        q.overflow();
        q.push_barrier(C1); // the queue starts after Barrier(1) again
        q.push_batch(2, "b");
        q.push_barrier(C2);
        q.push_batch(3, "c");
        q.restart_from(C2, 2).unwrap();
        assert_eq!(replayed(&mut q, 2, C2), vec![Buffered::Barrier(C2)]);
        q.overflow();
        q.restart_from(C1, 1).unwrap(); // its barrier went with the overflow
        assert_eq!((q.base(), q.len()), (C1, 0));
        q.push_batch(2, "b");
        assert_eq!(replayed(&mut q, 1, C1), vec![Buffered::Batch { seq: 2, item: "b" }]);
    }

    // Reference: SPEC §11.6: a queue that gave up to its budget says so until a completion
    // reaches its base again, which is then ahead of the latest completion before that.
    #[test]
    fn a_queue_that_gave_up_says_so_until_a_completion_reaches_its_base() {
        let mut q: BufferQueue<&str> = BufferQueue::new(CheckpointId(0), 0);
        q.push_batch(1, "a");
        assert!(!q.gave_up());
        q.overflow();
        assert!(q.gave_up());
        q.push_batch(2, "b");
        q.complete(C1); // an older checkpoint completes while the queue is still overflowed
        assert!(q.gave_up());
        q.push_barrier(C2);
        assert_eq!(q.base(), C2, "the queue starts after the barrier that follows the overflow");
        assert!(q.gave_up());
        assert!(q.replay(0, C1).is_err(), "what it gave up cannot be replayed");
        q.complete(C2);
        assert!(!q.gave_up());
    }
}
