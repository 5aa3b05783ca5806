//! A source subtask: reads batches from its [`SourceReader`] while it has credit, snapshots
//! its read position when triggered, and reports the end of its input.
//!
//! A source is its own buffer queue (SPEC §10.2): it remembers, since the latest completed
//! checkpoint, how many records each batch it read had and where its barriers and its end
//! fell (a few bytes per batch), and the read position of that checkpoint. When a downstream
//! subtask restarts, a second reader re-reads from that position and the same routing sends
//! that subtask's share again, with the same sequence numbers, while live reading pauses.

use std::time::{Duration, Instant};

use actix::prelude::*;

use super::{
    Abort, Ack, CONGESTED, Complete, Credit, FailureReason, Guarded, Item, OutGroup, Outputs, Payload,
    Resume, SourceFinished, SubtaskContext, ToCoordinator, Trigger,
};
use crate::connectors::SourceReader;
use crate::log::{LogError, SnapshotRecord, WriteOp};
use crate::pipeline::faults::FaultKind;
use crate::protocol::buffer::ReplayGap;
use crate::protocol::participant::{Action, SourceTask};
use crate::protocol::route::route;
use crate::protocol::{CheckpointId, Seq};
use crate::sync::Arc;

/// Makes a fresh reader of the same input, for re-reading.
pub type MakeReader = Box<dyn Fn() -> Box<dyn SourceReader> + Send>;

/// What the source put on its channels, in order, since its base checkpoint.
#[derive(Clone, Copy, Debug)]
enum Event {
    Read(usize),
    Barrier(CheckpointId),
    End,
}

/// Where a re-read starts: the state right after `Barrier(checkpoint)` was sent.
#[derive(Clone)]
struct Base {
    checkpoint: CheckpointId,
    position: Vec<u8>,
    seqs: Vec<Seq>,
    groups: Vec<OutGroup>,
    /// Absolute index of the first event after it.
    event: usize,
}

/// A re-read in progress for one channel.
struct Cursor {
    channel: usize,
    reader: Box<dyn SourceReader>,
    groups: Vec<OutGroup>,
    seq: Seq,
    from_seq: Seq,
    next: usize,
}

/// Wiring, sent once before `Start`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Wire {
    /// The outputs.
    pub outputs: Outputs,
    /// The coordinator.
    pub coordinator: ToCoordinator,
}

/// Begin reading.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Start;

#[derive(Message)]
#[rtype(result = "()")]
struct Produce;

#[derive(Message)]
#[rtype(result = "()")]
struct SnapshotDurable(CheckpointId);

/// One source subtask.
pub struct SourceActor {
    cx: SubtaskContext,
    /// Index among source subtasks (the coordinator's source id).
    source_index: usize,
    reader: Box<dyn SourceReader>,
    core: SourceTask,
    outputs: Outputs,
    coordinator: Option<ToCoordinator>,
    batch_size: usize,
    rate: Option<u64>,
    started: Option<(Instant, u64)>,
    /// The end of the input was reached and `End` sent (restored from the snapshot too).
    exhausted: bool,
    producing: bool,
    make_reader: MakeReader,
    /// Events since `base`; `events[0]` has absolute index `events_from`.
    events: Vec<Event>,
    events_from: usize,
    base: Option<Base>,
    /// Bases of snapshots taken, not yet completed.
    pending: Vec<Base>,
    restored: CheckpointId,
    cursors: Vec<Cursor>,
    /// Snapshots taken in this attempt, which are also its log writes (for `--inject`).
    snapshots: u64,
}

/// The epoch of the receiver of `channel`, which a re-read tags its items with.
fn resume_epoch(outputs: &Outputs, channel: usize) -> crate::protocol::driver::Epoch {
    outputs.core.as_ref().map_or(0, |c| c.epoch(channel))
}

/// A source's snapshot state: the reader's position, then 1 if `End` was already sent.
pub fn encode_source_state(position: Vec<u8>, ended: bool) -> Vec<u8> {
    let mut state = position;
    state.push(u8::from(ended));
    state
}

/// The inverse of [`encode_source_state`]: the reader's position and whether `End` was sent.
/// Refuses an empty state and an end flag other than 0 or 1, so that whatever it accepts
/// re-encodes to `state`. Never panics, whatever the bytes: a fuzz target's entry point.
pub fn decode_source_state(state: &[u8]) -> Result<(&[u8], bool), String> {
    match state.split_last() {
        None => Err("empty source state".into()),
        Some((&ended @ (0 | 1), position)) => Ok((position, ended == 1)),
        Some((&other, _)) => Err(format!("source state ends in {other}, not an end flag (0 or 1)")),
    }
}

/// The source state of snapshot `record` of a source with `outputs` output channels, checked
/// against that topology: no input positions, a sequence number per output.
pub fn check_source_record(record: &SnapshotRecord, outputs: usize) -> Result<(&[u8], bool), String> {
    if !record.positions.is_empty() {
        return Err(format!("a source's snapshot has positions for {} inputs", record.positions.len()));
    }
    if record.out_seqs.len() != outputs {
        return Err(format!(
            "snapshot has sequence numbers for {} outputs, the pipeline {outputs}",
            record.out_seqs.len()
        ));
    }
    decode_source_state(&record.state)
}

impl SourceActor {
    /// A source subtask restored as `core` says, reading from `reader` (already positioned).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cx: SubtaskContext,
        source_index: usize,
        reader: Box<dyn SourceReader>,
        make_reader: MakeReader,
        core: SourceTask,
        batch_size: usize,
        rate: Option<u64>,
        ended: bool,
        restored: CheckpointId,
    ) -> SourceActor {
        SourceActor {
            cx,
            source_index,
            reader,
            core,
            outputs: Outputs::default(),
            coordinator: None,
            batch_size: batch_size.max(1),
            rate,
            started: None,
            exhausted: ended,
            producing: false,
            make_reader,
            events: Vec::new(),
            events_from: 0,
            base: None,
            pending: Vec::new(),
            restored,
            cursors: Vec::new(),
            snapshots: 0,
        }
    }

    fn base_here(&self, checkpoint: CheckpointId) -> Base {
        Base {
            checkpoint,
            position: self.reader.position(),
            seqs: self.outputs.seqs(),
            groups: self.outputs.groups(),
            event: self.events_from + self.events.len(),
        }
    }

    /// A downstream subtask restarted: re-read its channel from the base.
    fn resume(&mut self, Resume(resume): Resume, ctx: &mut Context<Self>) {
        let Some(base) = &self.base else { return };
        let ch = resume.channel;
        if let Err(gap) = ReplayGap::check(base.checkpoint, base.seqs[ch], resume.restored, resume.from_seq) {
            return self.cx.escalate(FailureReason::ReplayGap, format!("cannot replay output {ch}: {gap}"));
        }
        let mut reader = (self.make_reader)();
        if let Err(e) = reader.seek(&base.position) {
            return self.cx.fatal.fail(format!("{}: re-reading: {e}", self.cx.name));
        }
        self.cursors.retain(|c| c.channel != ch);
        self.cursors.push(Cursor {
            channel: ch,
            reader,
            groups: base.groups.clone(),
            seq: base.seqs[ch],
            from_seq: resume.from_seq,
            next: base.event,
        });
        let link = &mut self.outputs.links.0[ch];
        link.reset();
        link.replaying = true;
        self.outputs.core.as_mut().expect("wired").set_epoch(ch, resume.epoch);
        self.pump(ctx);
    }

    /// Re-read for every channel being replayed, as far as its flow control allows.
    fn pump(&mut self, ctx: &mut Context<Self>) {
        let mut done = Vec::new();
        for (i, cursor) in self.cursors.iter_mut().enumerate() {
            let epoch = resume_epoch(&self.outputs, cursor.channel);
            let channel = &mut self.outputs.links.0[cursor.channel];
            while channel.queued() <= CONGESTED {
                let Some(&event) = self.events.get(cursor.next - self.events_from) else {
                    done.push(i);
                    break;
                };
                cursor.next += 1;
                match event {
                    Event::Read(n) => {
                        let batch = match cursor.reader.next_batch(n) {
                            Ok(Some(batch)) => batch,
                            Ok(None) => continue,
                            Err(e) => {
                                return self.cx.fatal.fail(format!("{}: re-reading: {e}", self.cx.name));
                            }
                        };
                        let mut mine = None;
                        route(&mut cursor.groups, Payload::Data(Arc::new(batch)), |ch, part| {
                            if ch == cursor.channel {
                                mine = Some(part);
                            }
                        });
                        if let Some(payload) = mine {
                            cursor.seq += 1;
                            if cursor.seq > cursor.from_seq {
                                channel.push(epoch, Item::Batch { seq: cursor.seq, payload });
                            }
                        }
                    }
                    Event::Barrier(c) => {
                        if cursor.seq >= cursor.from_seq {
                            channel.push(epoch, Item::Barrier(c));
                        }
                    }
                    Event::End => {
                        cursor.seq += 1;
                        if cursor.seq > cursor.from_seq {
                            channel.push(epoch, Item::Batch { seq: cursor.seq, payload: Payload::End });
                        }
                    }
                }
            }
        }
        for i in done.into_iter().rev() {
            let cursor = self.cursors.remove(i);
            debug_assert_eq!(
                cursor.seq,
                self.outputs.seqs()[cursor.channel],
                "a re-read ends where live output is"
            );
            self.outputs.links.0[cursor.channel].replaying = false;
            tracing::debug!("{}: replay of output {} caught up", self.cx.name, cursor.channel);
        }
        if self.cursors.is_empty() && !self.producing && !self.exhausted && self.started.is_some() {
            self.produce(ctx);
        }
    }

    /// Checkpoint `c` completed: forget events before its barrier (unless a re-read needs
    /// them).
    fn truncate(&mut self, c: CheckpointId) {
        if !self.cursors.is_empty() {
            return; // a later completion truncates
        }
        let Some(at) = self.pending.iter().rposition(|b| b.checkpoint <= c) else { return };
        let base = self.pending[at].clone();
        self.pending.drain(..=at);
        self.events.drain(..base.event - self.events_from);
        self.events_from = base.event;
        self.base = Some(base);
    }

    fn coordinator(&self) -> &ToCoordinator {
        self.coordinator.as_ref().expect("wired before start")
    }

    fn produce(&mut self, ctx: &mut Context<Self>) {
        self.producing = false;
        if self.exhausted || self.outputs.links.congested() || self.cx.fatal.failed() {
            return; // a credit or the end of the run resumes
        }
        let mut max = self.batch_size;
        if let (Some(rate), Some((since, sent_before))) = (self.rate, self.started) {
            let allowed = (since.elapsed().as_secs_f64() * rate as f64) as u64;
            let sent =
                self.cx.counters.records_out.load(crate::sync::atomic::Ordering::Relaxed) - sent_before;
            if sent >= allowed {
                self.producing = true;
                let wait = Duration::from_secs_f64(((sent + 1 - allowed) as f64 / rate as f64).min(0.05));
                ctx.run_later(wait, |act, ctx| act.guard(ctx, Self::produce));
                return;
            }
            max = max.min((allowed - sent) as usize);
        }
        let sent = self.cx.counters.records_out.load(crate::sync::atomic::Ordering::Relaxed);
        let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.cx.inject(sent);
            self.reader.next_batch(max)
        }));
        let read = match read {
            Ok(read) => read,
            Err(payload) => return self.cx.panicked(super::panic_message(&*payload)),
        };
        match read {
            Ok(Some(batch)) => {
                self.events.push(Event::Read(batch.len()));
                let n = self.outputs.send(batch);
                self.cx.counters.add_out(n);
                self.producing = true;
                ctx.notify(Produce);
            }
            Ok(None) => {
                self.exhausted = true;
                self.events.push(Event::End);
                self.outputs.send_end();
                self.coordinator().finished.do_send(SourceFinished(self.source_index));
            }
            Err(e) => self.cx.fatal.fail(format!("{}: {e}", self.cx.name)),
        }
    }

    fn drain(&mut self, ctx: &mut Context<Self>) {
        while let Some(action) = self.core.poll_action() {
            match action {
                Action::Snapshot { checkpoint, .. } => {
                    self.snapshots += 1;
                    let (cx, n) = (&self.cx, self.snapshots);
                    let injected = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        cx.inject_at(FaultKind::Snapshot, n)
                    }));
                    if let Err(payload) = injected {
                        return self.cx.panicked(super::panic_message(&*payload));
                    }
                    if self.cx.write_fails(n) {
                        let error = LogError::Injected(format!("write {n} of {}", self.cx.name));
                        return self.cx.escalate(FailureReason::WriteError, error.to_string());
                    }
                    let record = SnapshotRecord {
                        positions: Vec::new(),
                        out_seqs: self.outputs.seqs(),
                        state: encode_source_state(self.reader.position(), self.exhausted),
                    };
                    let addr = ctx.address();
                    let fatal = self.cx.fatal.clone();
                    self.cx.writer.submit(
                        vec![WriteOp::Snapshot { participant: self.cx.participant, checkpoint, record }],
                        Box::new(move |result| match result {
                            Ok(()) => addr.do_send(SnapshotDurable(checkpoint)),
                            Err(e) => fatal.fail(e),
                        }),
                    );
                    self.outputs.send_barrier(checkpoint);
                    self.events.push(Event::Barrier(checkpoint));
                    let base = self.base_here(checkpoint);
                    self.pending.push(base);
                }
                Action::Ack(c) => {
                    self.coordinator().ack.do_send(Ack { participant: self.cx.participant, checkpoint: c })
                }
                Action::DropSnapshotsBelow(c) => {
                    let fatal = self.cx.fatal.clone();
                    self.cx.writer.submit(
                        vec![WriteOp::DropSnapshotsBelow { participant: self.cx.participant, checkpoint: c }],
                        Box::new(move |r| {
                            if let Err(e) = r {
                                fatal.fail(e)
                            }
                        }),
                    );
                }
                other => unreachable!("a source core never asks for {other:?}"),
            }
        }
    }
}

impl Actor for SourceActor {
    type Context = Context<Self>;
}

impl Guarded for SourceActor {
    /// A source cannot restart alone: the pipeline rolls back.
    fn panicked(&mut self, message: String, _: &mut Context<Self>) {
        self.cx.panicked(message);
    }
}

impl Handler<Wire> for SourceActor {
    type Result = ();
    fn handle(&mut self, wire: Wire, ctx: &mut Context<Self>) {
        self.guard(ctx, |act, _| {
            act.outputs = wire.outputs;
            act.coordinator = Some(wire.coordinator);
            act.base = Some(act.base_here(act.restored));
        });
    }
}

impl Handler<Start> for SourceActor {
    type Result = ();
    fn handle(&mut self, _: Start, ctx: &mut Context<Self>) {
        self.guard(ctx, |act, ctx| {
            let sent = act.cx.counters.records_out.load(crate::sync::atomic::Ordering::Relaxed);
            act.started = Some((Instant::now(), sent));
            if act.exhausted {
                // Restored after the end of input: the new coordinator must hear it again.
                act.coordinator().finished.do_send(SourceFinished(act.source_index));
            }
            act.produce(ctx);
        });
    }
}

impl Handler<Produce> for SourceActor {
    type Result = ();
    fn handle(&mut self, _: Produce, ctx: &mut Context<Self>) {
        self.guard(ctx, Self::produce);
    }
}

impl Handler<Credit> for SourceActor {
    type Result = ();
    fn handle(&mut self, credit: Credit, ctx: &mut Context<Self>) {
        self.guard(ctx, |act, ctx| {
            act.cx.inject_on(FaultKind::Credit);
            act.outputs.links.on_credit(credit);
            if !act.cursors.is_empty() {
                act.pump(ctx);
            } else if !act.producing && !act.exhausted && act.started.is_some() {
                act.produce(ctx);
            }
        });
    }
}

impl Handler<Resume> for SourceActor {
    type Result = ();
    fn handle(&mut self, resume: Resume, ctx: &mut Context<Self>) {
        self.guard(ctx, |act, ctx| act.resume(resume, ctx));
    }
}

impl Handler<Trigger> for SourceActor {
    type Result = ();
    fn handle(&mut self, Trigger(c): Trigger, ctx: &mut Context<Self>) {
        self.guard(ctx, |act, ctx| {
            act.core.handle_trigger(c);
            act.drain(ctx);
        });
    }
}

impl Handler<SnapshotDurable> for SourceActor {
    type Result = ();
    fn handle(&mut self, SnapshotDurable(c): SnapshotDurable, ctx: &mut Context<Self>) {
        self.guard(ctx, |act, ctx| {
            act.core.on_snapshot_durable(c);
            act.drain(ctx);
        });
    }
}

impl Handler<Complete> for SourceActor {
    type Result = ();
    fn handle(&mut self, Complete(c): Complete, ctx: &mut Context<Self>) {
        self.guard(ctx, |act, ctx| {
            act.truncate(c);
            act.core.handle_checkpoint_complete(c);
            act.drain(ctx);
        });
    }
}

impl Handler<Abort> for SourceActor {
    type Result = ();
    fn handle(&mut self, _: Abort, _: &mut Context<Self>) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_state_round_trips_and_refuses_a_bad_end_flag() {
        for (position, ended) in [(vec![], false), (vec![0, 0, 0, 7], true), (vec![1], false)] {
            let state = encode_source_state(position.clone(), ended);
            assert_eq!(decode_source_state(&state), Ok((&position[..], ended)));
        }
        assert_eq!(decode_source_state(&[]), Err("empty source state".into()));
        assert_eq!(
            decode_source_state(&[0, 0, 2]),
            Err("source state ends in 2, not an end flag (0 or 1)".into())
        );
        // Whatever is accepted re-encodes to the same bytes.
        for a in 0..=255u8 {
            for b in 0..=255u8 {
                if let Ok((position, ended)) = decode_source_state(&[a, b]) {
                    assert_eq!(encode_source_state(position.to_vec(), ended), [a, b]);
                }
            }
        }
    }

    #[test]
    fn a_source_record_must_fit_the_topology() {
        let record = SnapshotRecord {
            positions: vec![],
            out_seqs: vec![4, 5],
            state: encode_source_state(vec![9], true),
        };
        assert_eq!(check_source_record(&record, 2), Ok((&[9][..], true)));
        assert_eq!(
            check_source_record(&record, 3),
            Err("snapshot has sequence numbers for 2 outputs, the pipeline 3".into())
        );
        let with_inputs = SnapshotRecord { positions: vec![1], ..record.clone() };
        assert_eq!(
            check_source_record(&with_inputs, 2),
            Err("a source's snapshot has positions for 1 inputs".into())
        );
        let bad_flag = SnapshotRecord { state: vec![9, 3], ..record };
        assert!(check_source_record(&bad_flag, 2).is_err());
    }
}
