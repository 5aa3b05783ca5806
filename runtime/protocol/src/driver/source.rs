//! The driver of a source subtask (SPEC §11.7): the checkpoint core ([`SourceTask`]), the
//! output side ([`Outputs`], without buffer queues), the end of input, and the re-read
//! bookkeeping that makes a source its own buffer queue (SPEC §10.2).
//!
//! A source keeps no copy of what it sent. It remembers, since the latest completed
//! checkpoint (its *base*), how many records each batch it read had and where its barriers
//! and its end fell: a few bytes per batch. The base holds the reader's position, the
//! sequence numbers and the routers at that checkpoint. When a downstream subtask restarts,
//! the shell opens a second reader at the base's position and the driver replays the events
//! through the base's routers, keeping only the restarted receiver's share, with the same
//! sequence numbers, and skipping what the receiver restored. While any channel is re-read,
//! live reading pauses and nothing live goes on that channel (the re-read produces it, in
//! order). Reading itself, and its position, belong to the shell: the driver sees positions
//! as opaque values and batches as [`Payload`]s.
//!
//! The shell drives it thus: [`Source::may_read`] says whether to read; what it read goes
//! to [`Source::read`], the end of its input to [`Source::end`]; a trigger comes with the
//! reader's position ([`Source::handle_trigger`]); a replay request to
//! [`Source::handle_resume`], after which the shell steps the re-read of that channel with
//! [`Source::reread_step`] as flow control allows, reading what it asks for from the
//! second reader. Effects come out of [`Source::poll_effect`].

use std::collections::VecDeque;

use super::{CURRENT, Epoch, Escalation, Resume};
use crate::buffer::ReplayGap;
use crate::participant::{Action, SourceTask};
use crate::route::{Group, Item, Outputs, Payload, route};
use crate::{CheckpointId, Mutant, Mutations, ParticipantId, Seq};

/// What the source put on its channels, in order, since its base.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Event {
    /// A batch of this many records, routed over the groups.
    Read(usize),
    /// `Barrier(c)` on every channel.
    Barrier(CheckpointId),
    /// The end of input on every channel.
    End,
}

/// Where a re-read starts: the state right after `Barrier(checkpoint)` went out.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Base<K, Pos> {
    checkpoint: CheckpointId,
    position: Pos,
    seqs: Vec<Seq>,
    groups: Vec<Group<K>>,
    /// Absolute index of the first event after it.
    event: usize,
}

/// A re-read in progress for one channel.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Cursor<K> {
    channel: usize,
    groups: Vec<Group<K>>,
    /// The last sequence number the re-read produced on the channel.
    seq: Seq,
    /// The receiver has everything up to here.
    from_seq: Seq,
    /// And it restored this checkpoint: earlier barriers are in its state.
    restored: CheckpointId,
    /// Absolute index of the next event.
    next: usize,
    /// Records the last `Read` step asked for, while the shell reads them.
    reading: Option<usize>,
}

/// What the shell must do, in order.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum SourceEffect<P, Pos> {
    /// Put `item` on output channel `channel`, to its receiver's `epoch`.
    Send {
        /// The channel.
        channel: usize,
        /// The receiver's epoch.
        epoch: Epoch,
        /// The item.
        item: Item<P>,
    },
    /// The receiver of `channel` restarted: drop whatever is still queued for it, and open a
    /// reader at `position` for its re-read (replacing one already re-reading for it).
    Reread {
        /// The channel.
        channel: usize,
        /// Where the re-read starts.
        position: Pos,
    },
    /// The re-read of `channel` caught up with live output: close its reader.
    CaughtUp {
        /// The channel.
        channel: usize,
    },
    /// Write the snapshot durably; report it with [`Source::on_snapshot_durable`].
    Snapshot {
        /// The checkpoint.
        checkpoint: CheckpointId,
        /// The reader's position.
        position: Pos,
        /// Last sent sequence number per output channel.
        out_seqs: Vec<Seq>,
        /// The end of input was sent.
        ended: bool,
    },
    /// Acknowledge the checkpoint to the coordinator.
    Ack(CheckpointId),
    /// Snapshots older than this checkpoint are not needed any more.
    DropSnapshotsBelow(CheckpointId),
    /// The input is exhausted: tell the coordinator (once per run attempt).
    Finished,
    /// Local recovery downstream cannot be served: roll the run back globally.
    Escalate(Escalation),
}

/// One step of a re-read ([`Source::reread_step`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Read this many records from the channel's re-reader and pass them to
    /// [`Source::reread_batch`].
    Read(usize),
    /// An item went out (or nothing needed to): step again as flow control allows.
    Sent,
    /// The channel is caught up (or not being re-read).
    Done,
}

/// The driver of one source subtask.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Source<P: Payload, Pos> {
    participant: ParticipantId,
    core: SourceTask,
    outputs: Outputs<P>,
    ended: bool,
    /// Events since `base`; `events[0]` has absolute index `events_from`.
    events: VecDeque<Event>,
    events_from: usize,
    base: Base<P::Key, Pos>,
    /// Bases of snapshots taken, not yet completed.
    pending: Vec<Base<P::Key, Pos>>,
    cursors: Vec<Cursor<P::Key>>,
    effects: VecDeque<SourceEffect<P, Pos>>,
    mutations: Mutations,
}

impl<P: Payload, Pos: Clone> Source<P, Pos> {
    /// Participant `participant`, restored from its snapshot of `restored` (0: none: a fresh
    /// start) at reader position `position`, with the end of input already sent if `ended`,
    /// and these `outputs` (restored with their sequence numbers, no buffer queues).
    pub fn new(
        participant: ParticipantId,
        (restored, position, ended): (CheckpointId, Pos, bool),
        outputs: Outputs<P>,
        mutations: Mutations,
    ) -> Source<P, Pos> {
        let from = (restored > CheckpointId(0)).then_some(restored);
        let base = Base {
            checkpoint: restored,
            position,
            seqs: outputs.seqs(),
            groups: outputs.groups().to_vec(),
            event: 0,
        };
        Source {
            participant,
            core: SourceTask::restore(from).with_mutations(mutations),
            outputs,
            ended,
            events: VecDeque::new(),
            events_from: 0,
            base,
            pending: Vec::new(),
            cursors: Vec::new(),
            effects: VecDeque::new(),
            mutations,
        }
    }

    /// The run attempt starts: a source restored after the end of its input says so again.
    pub fn start(&mut self) {
        if self.ended {
            self.effects.push_back(SourceEffect::Finished);
        }
    }

    /// Whether the shell may read live input now: not after the end, not while a channel is
    /// being re-read. (Flow control and rate limits are the shell's.)
    pub fn may_read(&self) -> bool {
        !self.ended && self.cursors.is_empty()
    }

    /// The shell read `batch`, of `records` records: send it.
    pub fn read(&mut self, records: usize, batch: P) {
        debug_assert!(self.may_read(), "read while the driver said not to");
        if records == 0 || batch.is_empty() {
            return; // nothing went out, so a re-read has nothing to reproduce
        }
        self.events.push_back(Event::Read(records));
        let (effects, cursors) = (&mut self.effects, &self.cursors);
        self.outputs.send(batch, |channel, epoch, item| live(effects, cursors, channel, epoch, item));
    }

    /// The shell's reader is exhausted: send the end of input on every channel.
    pub fn end(&mut self) {
        if self.ended {
            return;
        }
        self.ended = true;
        self.events.push_back(Event::End);
        let (effects, cursors) = (&mut self.effects, &self.cursors);
        self.outputs.send_end(|channel, epoch, item| live(effects, cursors, channel, epoch, item));
        self.effects.push_back(SourceEffect::Finished);
    }

    /// The coordinator triggered checkpoint `c`; the reader is at `position`.
    pub fn handle_trigger(&mut self, c: CheckpointId, position: Pos) {
        self.core.handle_trigger(c);
        self.drain(Some(position));
    }

    /// The snapshot of `c` is durable.
    pub fn on_snapshot_durable(&mut self, c: CheckpointId) {
        self.core.on_snapshot_durable(c);
        self.drain(None);
    }

    /// The coordinator completed `c`: forget the events before its barrier (unless a re-read
    /// still needs them: a later completion truncates).
    pub fn handle_complete(&mut self, c: CheckpointId) {
        if self.cursors.is_empty() {
            self.truncate(c);
        }
        self.core.handle_checkpoint_complete(c);
        self.drain(None);
    }

    fn truncate(&mut self, c: CheckpointId) {
        let Some(at) = self.pending.iter().rposition(|b| b.checkpoint <= c) else { return };
        let base = self.pending.drain(..=at).next_back().expect("found above");
        self.events.drain(..base.event - self.events_from);
        self.events_from = base.event;
        self.base = base;
    }

    fn drain(&mut self, mut position: Option<Pos>) {
        while let Some(action) = self.core.poll_action() {
            match action {
                Action::Snapshot { checkpoint, .. } => {
                    let position = position.take().expect("a source snapshots only when triggered");
                    let out_seqs = self.outputs.seqs();
                    self.effects.push_back(SourceEffect::Snapshot {
                        checkpoint,
                        position: position.clone(),
                        out_seqs: out_seqs.clone(),
                        ended: self.ended,
                    });
                    let (effects, cursors) = (&mut self.effects, &self.cursors);
                    self.outputs.send_barrier(checkpoint, |channel, epoch, item| {
                        live(effects, cursors, channel, epoch, item)
                    });
                    self.events.push_back(Event::Barrier(checkpoint));
                    let event = self.events_from + self.events.len();
                    let groups = self.outputs.groups().to_vec();
                    self.pending.push(Base { checkpoint, position, seqs: out_seqs, groups, event });
                    if self.mutations.has(Mutant::TruncateAtSnapshot) && self.cursors.is_empty() {
                        self.truncate(checkpoint);
                    }
                }
                Action::Ack(c) => self.effects.push_back(SourceEffect::Ack(c)),
                Action::DropSnapshotsBelow(c) => self.effects.push_back(SourceEffect::DropSnapshotsBelow(c)),
                Action::Process { .. } | Action::Commit(_) => {
                    unreachable!("a source core only snapshots and acks")
                }
            }
        }
    }

    /// A restarted receiver asks for a replay: re-read its channel from the base.
    pub fn handle_resume(&mut self, resume: Resume) {
        let Resume { channel, from_seq, restored, epoch } = resume;
        let base = &self.base;
        if let Err(gap) = ReplayGap::check(base.checkpoint, base.seqs[channel], restored, from_seq) {
            self.effects.push_back(SourceEffect::Escalate(Escalation::ReplayGap { channel, gap }));
            return;
        }
        self.cursors.retain(|c| c.channel != channel);
        self.cursors.push(Cursor {
            channel,
            groups: base.groups.clone(),
            seq: base.seqs[channel],
            from_seq,
            restored,
            next: base.event,
            reading: None,
        });
        self.outputs.set_epoch(channel, epoch);
        self.effects.push_back(SourceEffect::Reread { channel, position: base.position.clone() });
    }

    /// Whether any channel is being re-read.
    pub fn is_rereading(&self) -> bool {
        !self.cursors.is_empty()
    }

    /// The channels being re-read.
    pub fn rereading(&self) -> impl Iterator<Item = usize> + '_ {
        self.cursors.iter().map(|c| c.channel)
    }

    /// The next step of the re-read of `channel`.
    pub fn reread_step(&mut self, channel: usize) -> Step {
        let Some(i) = self.cursors.iter().position(|c| c.channel == channel) else { return Step::Done };
        let cursor = &mut self.cursors[i];
        if let Some(n) = cursor.reading {
            return Step::Read(n);
        }
        let epoch = self.outputs.epoch(channel);
        let Some(&event) = self.events.get(cursor.next - self.events_from) else {
            debug_assert_eq!(cursor.seq, self.outputs.seqs()[channel], "a re-read ends where live output is");
            self.cursors.remove(i);
            self.effects.push_back(SourceEffect::CaughtUp { channel });
            return Step::Done;
        };
        cursor.next += 1;
        match event {
            Event::Read(n) => {
                cursor.reading = Some(n);
                return Step::Read(n);
            }
            // A promoted standby (`CURRENT`) restored no checkpoint: every barrier after its
            // position is sent (its gate drops those its state has passed), or a checkpoint
            // triggered around the promotion never aligns there (found by the protocol model).
            Event::Barrier(c)
                if cursor.seq >= cursor.from_seq && (c > cursor.restored || cursor.restored == CURRENT) =>
            {
                self.effects.push_back(SourceEffect::Send { channel, epoch, item: Item::Barrier(c) })
            }
            Event::Barrier(_) => {}
            Event::End => put(&mut self.effects, cursor, epoch, P::end()),
        }
        Step::Sent
    }

    /// The shell read `records` records, `batch` (none at the end of the input), for the
    /// re-read of `channel` (after [`Step::Read`]). A different number of records than the
    /// first read had means the input changed under the source: it cannot be reproduced, so
    /// the run rolls back.
    pub fn reread_batch(&mut self, channel: usize, records: usize, batch: Option<P>) {
        let Some(cursor) = self.cursors.iter_mut().find(|c| c.channel == channel) else { return };
        let Some(wanted) = cursor.reading.take() else { return };
        let (true, Some(batch)) = (records == wanted, batch) else {
            let detail =
                format!("re-reading output {channel}: {records} records where {wanted} were read before");
            self.effects.push_back(SourceEffect::Escalate(Escalation::Diverged(detail)));
            return;
        };
        let epoch = self.outputs.epoch(channel);
        let mut mine = None;
        route(&mut cursor.groups, batch, |ch, part| {
            if ch == channel {
                mine = Some(part);
            }
        });
        if let Some(part) = mine {
            put(&mut self.effects, cursor, epoch, part);
        }
    }

    /// The next thing to do.
    pub fn poll_effect(&mut self) -> Option<SourceEffect<P, Pos>> {
        self.effects.pop_front()
    }

    /// Its checkpoint core.
    pub fn core(&self) -> &SourceTask {
        &self.core
    }

    /// Its participant id.
    pub fn participant(&self) -> ParticipantId {
        self.participant
    }

    /// Whether the end of input was sent.
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// Last sequence number sent per channel.
    pub fn seqs(&self) -> Vec<Seq> {
        self.outputs.seqs()
    }

    /// The checkpoint a re-read starts from (the latest completed one it was told of).
    pub fn base(&self) -> CheckpointId {
        self.base.checkpoint
    }

    /// Events remembered for re-reads (for memory accounting and tests).
    pub fn events(&self) -> usize {
        self.events.len()
    }
}

/// Send a live item, unless its channel is being re-read (the re-read produces it in order).
fn live<P, Pos>(
    effects: &mut VecDeque<SourceEffect<P, Pos>>,
    cursors: &[Cursor<impl Sized>],
    channel: usize,
    epoch: Epoch,
    item: Item<P>,
) {
    if !cursors.iter().any(|c| c.channel == channel) {
        effects.push_back(SourceEffect::Send { channel, epoch, item });
    }
}

/// A re-read produced the next sequenced item of its channel: send it unless the receiver
/// restored it already.
fn put<P, Pos, K>(
    effects: &mut VecDeque<SourceEffect<P, Pos>>,
    cursor: &mut Cursor<K>,
    epoch: Epoch,
    payload: P,
) {
    cursor.seq += 1;
    if cursor.seq > cursor.from_seq {
        let item = Item::Batch { seq: cursor.seq, payload };
        effects.push_back(SourceEffect::Send { channel: cursor.channel, epoch, item });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::tests::B;
    use crate::route::Partition;

    const C1: CheckpointId = CheckpointId(1);
    const C2: CheckpointId = CheckpointId(2);

    type Fx = SourceEffect<B, u32>;

    /// A source whose input is the numbers 0, 1, 2, ... (its position is the next number),
    /// read in batches, with its output spread by `partition` over two channels.
    struct Harness {
        driver: Source<B, u32>,
        input: u32,
    }

    impl Harness {
        fn new(partition: Partition<()>) -> Harness {
            let channels = match partition {
                Partition::Forward => vec![0],
                _ => vec![0, 1],
            };
            let seqs = vec![0; channels.len()];
            let groups = vec![Group::new(partition, channels)];
            let outputs = Outputs::new(&seqs, CheckpointId(0), groups, (false, 0), Mutations::NONE);
            Harness {
                driver: Source::new(7, (CheckpointId(0), 0, false), outputs, Mutations::NONE),
                input: 0,
            }
        }

        fn read(&mut self, n: u32) -> Vec<Fx> {
            let batch = B::Data((self.input..self.input + n).collect());
            self.input += n;
            self.driver.read(n as usize, batch);
            self.effects()
        }

        fn effects(&mut self) -> Vec<Fx> {
            std::iter::from_fn(|| self.driver.poll_effect()).collect()
        }

        /// Run the re-read of `channel` to its end with a reader of the same input; the
        /// items it sends.
        fn reread(&mut self, channel: usize) -> Vec<Item<B>> {
            let mut position = match self.effects().as_slice() {
                [SourceEffect::Reread { channel: ch, position }] if *ch == channel => *position,
                other => panic!("expected a re-read of {channel}, got {other:?}"),
            };
            let mut items = Vec::new();
            loop {
                match self.driver.reread_step(channel) {
                    Step::Read(n) => {
                        let n = n as u32;
                        self.driver.reread_batch(
                            channel,
                            n as usize,
                            Some(B::Data((position..position + n).collect())),
                        );
                        position += n;
                    }
                    Step::Sent => {}
                    Step::Done => break,
                }
                for effect in self.effects() {
                    match effect {
                        SourceEffect::Send { channel: ch, item, .. } if ch == channel => items.push(item),
                        SourceEffect::CaughtUp { .. } => {}
                        other => panic!("a re-read only sends on its channel: {other:?}"),
                    }
                }
            }
            assert!(
                matches!(self.effects().as_slice(), [SourceEffect::CaughtUp { channel: ch }] if *ch == channel)
            );
            items
        }
    }

    fn sent(effects: &[Fx], channel: usize) -> Vec<Item<B>> {
        effects
            .iter()
            .filter_map(|e| match e {
                SourceEffect::Send { channel: ch, item, .. } if *ch == channel => Some(item.clone()),
                _ => None,
            })
            .collect()
    }

    fn batch(seq: Seq, records: &[u32]) -> Item<B> {
        Item::Batch { seq, payload: B::Data(records.to_vec()) }
    }

    fn resume(channel: usize, from_seq: Seq, restored: CheckpointId) -> Resume {
        Resume { channel, from_seq, restored, epoch: 1 }
    }

    // Reference: SPEC §10.2, §11.7. A re-read after the base checkpoint reproduces, for the
    // restarted receiver's channel, exactly what went out live after its position: the same
    // batches, routed by the routers as they were at the base, the same sequence numbers,
    // the barriers and the end.
    #[test]
    fn a_reread_reproduces_the_channels_items_after_the_receivers_position() {
        let mut h = Harness::new(Partition::RoundRobin);
        let mut live = h.read(2);
        h.driver.handle_trigger(C1, h.input);
        let snapshot = h.effects();
        assert_eq!(
            snapshot[0],
            SourceEffect::Snapshot { checkpoint: C1, position: 2, out_seqs: vec![1, 0], ended: false }
        );
        live.extend(snapshot);
        h.driver.on_snapshot_durable(C1);
        assert_eq!(h.effects(), vec![SourceEffect::Ack(C1)]);
        h.driver.handle_complete(C1);
        assert_eq!(h.effects(), vec![SourceEffect::DropSnapshotsBelow(C1)]);
        assert_eq!(h.driver.base(), C1);
        for n in [1, 3, 2] {
            live.extend(h.read(n));
        }
        h.driver.handle_trigger(C2, h.input);
        live.extend(h.effects());
        live.extend(h.read(4));
        h.driver.end();
        live.extend(h.effects());
        assert_eq!(live.last(), Some(&SourceEffect::Finished));
        // After the base's barrier channel 1 got the first and third batch, the barrier of c2
        // and the end.
        let after_c1: Vec<Item<B>> =
            sent(&live, 1).into_iter().skip_while(|i| *i != Item::Barrier(C1)).skip(1).collect();
        assert_eq!(
            after_c1,
            vec![
                batch(1, &[2]),
                batch(2, &[6, 7]),
                Item::Barrier(C2),
                Item::Batch { seq: 3, payload: B::End }
            ]
        );
        h.driver.handle_resume(resume(1, 0, C1));
        assert_eq!(h.reread(1), after_c1);
        assert!(!h.driver.may_read() && h.driver.ended());
    }

    // Reference: SPEC §10.2. A receiver that restored a later checkpoint than the source's
    // base (the completion is still on its way to the source) gets only what follows its
    // position; barriers before it are skipped too.
    #[test]
    fn a_reread_skips_what_the_receiver_restored() {
        let mut h = Harness::new(Partition::Forward);
        h.read(1);
        h.driver.handle_trigger(C1, h.input);
        h.read(2);
        h.effects();
        h.driver.handle_resume(resume(0, 1, C1));
        assert_eq!(h.reread(0), vec![batch(2, &[1, 2])], "batch 1 and Barrier(c1) were restored");
    }

    // Reference: SPEC §11.8. A promoted standby asks for what follows its position with
    // `restored` = CURRENT: only the position counts, so the barriers after it are sent (a
    // checkpoint triggered while it was being promoted aligns there).
    #[test]
    fn a_reread_for_a_promoted_standby_sends_the_barriers_after_its_position() {
        let mut h = Harness::new(Partition::Forward);
        h.read(1);
        h.driver.handle_trigger(C1, h.input);
        h.read(2);
        h.effects();
        h.driver.handle_resume(resume(0, 1, CURRENT));
        assert_eq!(h.reread(0), vec![Item::Barrier(C1), batch(2, &[1, 2])]);
    }

    // Reference: SPEC §10.2. Nothing live goes on a channel while it is re-read: a barrier
    // triggered meanwhile goes out live on the other channels and through the re-read on it.
    // Live reading waits for the re-read.
    #[test]
    fn a_channel_being_reread_gets_nothing_live() {
        let mut h = Harness::new(Partition::RoundRobin);
        h.read(1);
        h.read(1);
        h.driver.handle_resume(resume(0, 0, CheckpointId(0)));
        let position = match h.effects().as_slice() {
            [SourceEffect::Reread { position, .. }] => *position,
            other => panic!("{other:?}"),
        };
        assert_eq!(position, 0);
        assert!(!h.driver.may_read());
        h.driver.handle_trigger(C1, h.input);
        let effects = h.effects();
        assert_eq!(sent(&effects, 0), vec![], "the re-read sends it");
        assert_eq!(sent(&effects, 1), vec![Item::Barrier(C1)]);
        assert_eq!(h.driver.reread_step(0), Step::Read(1));
        h.driver.reread_batch(0, 1, Some(B::Data(vec![0])));
        assert_eq!(h.driver.reread_step(0), Step::Read(1));
        h.driver.reread_batch(0, 1, Some(B::Data(vec![1])));
        assert_eq!(h.driver.reread_step(0), Step::Sent);
        assert_eq!(h.driver.reread_step(0), Step::Done);
        let effects = h.effects();
        assert_eq!(sent(&effects, 0), vec![batch(1, &[0]), Item::Barrier(C1)], "batch 1 went to channel 1");
        assert!(h.driver.may_read());
    }

    // Reference: SPEC §10.2. A completion during a re-read keeps the events the re-read
    // walks; a receiver restored before the base cannot be served (a global rollback); an
    // input that reads differently the second time cannot be reproduced.
    #[test]
    fn gaps_and_changed_input_escalate() {
        let mut h = Harness::new(Partition::Forward);
        h.read(3);
        h.driver.handle_trigger(C1, h.input);
        h.driver.handle_resume(resume(0, 0, CheckpointId(0)));
        h.effects();
        h.driver.handle_complete(C1);
        assert_eq!(h.driver.base(), CheckpointId(0), "the re-read still walks these events");
        assert_eq!(h.driver.reread_step(0), Step::Read(3));
        h.driver.reread_batch(0, 2, Some(B::Data(vec![0, 1])));
        assert!(matches!(
            h.effects().as_slice(),
            [SourceEffect::DropSnapshotsBelow(_), SourceEffect::Escalate(Escalation::Diverged(_))]
        ));

        let mut h = Harness::new(Partition::Forward);
        h.read(1);
        h.driver.handle_trigger(C1, h.input);
        h.driver.handle_complete(C1);
        h.effects();
        h.driver.handle_resume(resume(0, 0, CheckpointId(0)));
        let gap = ReplayGap { base: C1, restored: CheckpointId(0) };
        assert_eq!(h.effects(), vec![SourceEffect::Escalate(Escalation::ReplayGap { channel: 0, gap })]);
    }

    // Reference: SPEC §10.2. A source restored after its end says so to the new coordinator,
    // reads nothing more and sends no second end.
    #[test]
    fn a_source_restored_after_its_end_reports_it_and_reads_no_more() {
        let groups = vec![Group::new(Partition::Forward, vec![0])];
        let outputs: Outputs<B> = Outputs::new(&[4], C1, groups, (false, 0), Mutations::NONE);
        let mut driver = Source::new(0, (C1, 9u32, true), outputs, Mutations::NONE);
        driver.start();
        driver.end();
        assert_eq!(
            std::iter::from_fn(|| driver.poll_effect()).collect::<Vec<_>>(),
            vec![SourceEffect::Finished]
        );
        assert!(!driver.may_read());
    }
}
