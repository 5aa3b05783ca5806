//! A source subtask: the shell of the core's source driver
//! ([`crate::protocol::driver::source::Source`]). It reads batches from its [`SourceReader`]
//! when the driver allows and flow control has room, passes triggers with the reader's
//! position, and carries out the driver's effects: sends, snapshot writes, acks, the end of
//! input. When a downstream subtask restarts, the driver asks for a second reader at its base
//! position and says, step by step, how many records to read from it; what to send, with
//! which sequence numbers, and when live reading may go on is the driver's decision.

use std::time::{Duration, Instant};

use actix::prelude::*;

use super::{
    Abort, Ack, CONGESTED, Complete, Credit, FailureReason, Guarded, Links, Payload, Resume, SourceFinished,
    SubtaskContext, ToCoordinator, Trigger,
};
use crate::connectors::SourceReader;
use crate::log::{LogError, SnapshotRecord, WriteOp};
use crate::pipeline::faults::FaultKind;
use crate::protocol::driver::source::{Source, SourceEffect, Step};
use crate::protocol::{CheckpointId, Mutations, route};
use crate::sync::Arc;

/// Makes a fresh reader of the same input, for re-reading.
pub type MakeReader = Box<dyn Fn() -> Box<dyn SourceReader> + Send>;

/// The source driver over the runtime's payload, with the reader's encoded position.
type Driver = Source<Payload, Vec<u8>>;

/// Wiring, sent once before `Start`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Wire {
    /// The output side, restored with the snapshot's sequence numbers.
    pub outputs: route::Outputs<Payload>,
    /// The wires.
    pub links: Links,
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

/// The reader has input again (an unbounded source's waker).
#[derive(Message)]
#[rtype(result = "()")]
struct Wake;

#[derive(Message)]
#[rtype(result = "()")]
struct SnapshotDurable(CheckpointId);

/// One source subtask.
pub struct SourceActor {
    cx: SubtaskContext,
    /// Index among source subtasks (the coordinator's source id).
    source_index: usize,
    reader: Box<dyn SourceReader>,
    /// Set by `Wire`.
    driver: Option<Driver>,
    links: Links,
    coordinator: Option<ToCoordinator>,
    batch_size: usize,
    rate: Option<u64>,
    started: Option<(Instant, u64)>,
    /// Restored from the snapshot: the end of input was sent.
    ended: bool,
    restored: CheckpointId,
    producing: bool,
    make_reader: MakeReader,
    /// The second readers of channels being re-read.
    rereaders: Vec<(usize, Box<dyn SourceReader>)>,
    /// Snapshots taken in this attempt, which are also its log writes (for `--inject`).
    snapshots: u64,
    /// The reader's position at each snapshot not yet covered by a completion.
    positions: Vec<(CheckpointId, Vec<u8>)>,
    /// The pipeline's backpressure (an MQTT sink's full outbox): no new input while held.
    hold: Option<std::sync::Arc<crate::connectors::mqtt_sink::Hold>>,
}

/// What a read counts as for the driver, whose re-read reproduces reads by these counts: its
/// records, or 1 for an event-time floor (an idle tick), which is read as one item.
pub(crate) fn items(batch: &crate::batch::Batch) -> usize {
    if batch.event_time_floor().is_some() { 1 } else { batch.len() }
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
    /// A source subtask restored from `restored` (0: none), reading from `reader` (already
    /// positioned there), the end of input already sent if `ended`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cx: SubtaskContext,
        source_index: usize,
        reader: Box<dyn SourceReader>,
        make_reader: MakeReader,
        batch_size: usize,
        rate: Option<u64>,
        ended: bool,
        restored: CheckpointId,
    ) -> SourceActor {
        SourceActor {
            cx,
            source_index,
            reader,
            driver: None,
            links: Links::default(),
            coordinator: None,
            batch_size: batch_size.max(1),
            rate,
            started: None,
            ended,
            restored,
            producing: false,
            make_reader,
            rereaders: Vec::new(),
            snapshots: 0,
            positions: Vec::new(),
            hold: None,
        }
    }

    /// Read no new input while `hold` is held.
    pub fn with_hold(mut self, hold: std::sync::Arc<crate::connectors::mqtt_sink::Hold>) -> SourceActor {
        self.hold = Some(hold);
        self
    }

    fn driver(&mut self) -> &mut Driver {
        self.driver.as_mut().expect("wired before any message")
    }

    fn coordinator(&self) -> &ToCoordinator {
        self.coordinator.as_ref().expect("wired before start")
    }

    /// Re-read every channel being replayed as far as its flow control allows, then read
    /// live input if the driver allows.
    fn pump(&mut self, ctx: &mut Context<Self>) {
        // Collected only while re-reading: a credit arrives for every batch sent.
        let channels: Vec<usize> =
            if self.driver().is_rereading() { self.driver().rereading().collect() } else { Vec::new() };
        for channel in channels {
            while self.links.0[channel].queued() <= CONGESTED && !self.cx.fatal.failed() {
                match self.driver().reread_step(channel) {
                    Step::Read(n) => {
                        let Some((_, reader)) = self.rereaders.iter_mut().find(|(ch, _)| *ch == channel)
                        else {
                            unreachable!("the driver asked for a re-reader first")
                        };
                        let batch = match reader.next_batch(n) {
                            Ok(batch) => batch,
                            Err(e) => {
                                return self.cx.fatal.fail(format!("{}: re-reading: {e}", self.cx.name));
                            }
                        };
                        let records = batch.as_ref().map_or(0, items);
                        self.driver().reread_batch(
                            channel,
                            records,
                            batch.map(|b| Payload::Data(Arc::new(b))),
                        );
                    }
                    Step::Skip(n) => {
                        let Some((_, reader)) = self.rereaders.iter_mut().find(|(ch, _)| *ch == channel)
                        else {
                            unreachable!("the driver asked for a re-reader first")
                        };
                        match reader.skip(n) {
                            Ok(records) => self.driver().reread_skipped(channel, records),
                            Err(e) => {
                                return self.cx.fatal.fail(format!("{}: re-reading: {e}", self.cx.name));
                            }
                        }
                    }
                    Step::Sent => {}
                    Step::Done => break,
                }
                self.carry_out(ctx);
            }
        }
        self.carry_out(ctx);
        if self.driver().may_read() && !self.producing && self.started.is_some() {
            self.produce(ctx);
        }
    }

    fn produce(&mut self, ctx: &mut Context<Self>) {
        self.producing = false;
        if !self.driver().may_read() || self.links.congested() || self.cx.fatal.failed() {
            return; // a credit, the end of a re-read or the end of the run resumes
        }
        if !self.reader.ready() || self.hold.as_ref().is_some_and(|h| h.held()) {
            return; // the reader's (or the hold's) waker resumes
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
            // Nothing decodable arrived (an unbounded source): read again if there is more.
            Ok(Some(batch)) if batch.is_empty() && batch.event_time_floor().is_none() => {
                if self.reader.ready() {
                    self.producing = true;
                    ctx.notify(Produce);
                }
            }
            Ok(Some(batch)) => {
                let n = batch.len();
                self.driver().read(items(&batch), Payload::Data(Arc::new(batch)));
                self.cx.counters.add_out(n);
                self.producing = true;
                ctx.notify(Produce);
            }
            Ok(None) => self.driver().end(),
            Err(e) => self.cx.fatal.fail(format!("{}: {e}", self.cx.name)),
        }
        self.carry_out(ctx);
    }

    /// Carry out what the driver asks until it is quiet.
    fn carry_out(&mut self, ctx: &mut Context<Self>) {
        while let Some(effect) = self.driver.as_mut().and_then(Driver::poll_effect) {
            match effect {
                SourceEffect::Send { channel, epoch, item } => self.links.send(channel, epoch, item),
                SourceEffect::Reread { channel, position } => {
                    self.links.0[channel].reset();
                    let mut reader = (self.make_reader)();
                    if let Err(e) = reader.seek(&position) {
                        return self.cx.fatal.fail(format!("{}: re-reading: {e}", self.cx.name));
                    }
                    self.rereaders.retain(|(ch, _)| *ch != channel);
                    self.rereaders.push((channel, reader));
                }
                SourceEffect::CaughtUp { channel } => {
                    self.rereaders.retain(|(ch, _)| *ch != channel);
                    tracing::debug!("{}: replay of output {channel} caught up", self.cx.name);
                }
                SourceEffect::Snapshot { checkpoint, position, out_seqs, ended } => {
                    self.positions.push((checkpoint, position.clone()));
                    if !self.write_snapshot(
                        checkpoint,
                        SnapshotRecord {
                            positions: Vec::new(),
                            out_seqs,
                            state: encode_source_state(position, ended),
                        },
                        ctx,
                    ) {
                        return;
                    }
                }
                SourceEffect::Ack(c) => self.coordinator().ack.do_send(Ack {
                    participant: self.cx.participant,
                    grant: 0,
                    checkpoint: c,
                }),
                SourceEffect::DropSnapshotsBelow(c) => {
                    // `c` completed: the reader's input before its position there is done with.
                    if let Some((_, position)) = self.positions.iter().find(|(at, _)| *at == c) {
                        self.reader.release(position);
                    }
                    self.positions.retain(|(at, _)| *at > c);
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
                SourceEffect::Finished => {
                    self.coordinator().finished.do_send(SourceFinished(self.source_index))
                }
                SourceEffect::Escalate(escalation) => {
                    return self.cx.escalate((&escalation).into(), escalation.to_string());
                }
            }
        }
    }

    /// Write the snapshot of `checkpoint` (where `--inject` faults fire). False when a fault
    /// stopped the attempt.
    fn write_snapshot(
        &mut self,
        checkpoint: CheckpointId,
        record: SnapshotRecord,
        ctx: &mut Context<Self>,
    ) -> bool {
        self.snapshots += 1;
        let (cx, n) = (&self.cx, self.snapshots);
        let injected =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cx.inject_at(FaultKind::Snapshot, n)));
        if let Err(payload) = injected {
            self.cx.panicked(super::panic_message(&*payload));
            return false;
        }
        if self.cx.write_fails(n) {
            let error = LogError::Injected(format!("write {n} of {}", self.cx.name));
            self.cx.escalate(FailureReason::WriteError, error.to_string());
            return false;
        }
        let addr = ctx.address();
        let fatal = self.cx.fatal.clone();
        self.cx.writer.submit(
            vec![WriteOp::Snapshot { participant: self.cx.participant, checkpoint, record }],
            Box::new(move |result| match result {
                Ok(()) => addr.do_send(SnapshotDurable(checkpoint)),
                Err(e) => fatal.fail(e),
            }),
        );
        true
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
            let restored = (act.restored, act.reader.position(), act.ended);
            act.driver = Some(Source::new(act.cx.participant, restored, wire.outputs, Mutations::NONE));
            act.links = wire.links;
            act.coordinator = Some(wire.coordinator);
        });
    }
}

impl Handler<Start> for SourceActor {
    type Result = ();
    fn handle(&mut self, _: Start, ctx: &mut Context<Self>) {
        self.guard(ctx, |act, ctx| {
            let sent = act.cx.counters.records_out.load(crate::sync::atomic::Ordering::Relaxed);
            act.started = Some((Instant::now(), sent));
            let addr = ctx.address();
            let waker: crate::connectors::mqtt::Waker = std::sync::Arc::new(move || addr.do_send(Wake));
            if let Some(hold) = &act.hold {
                hold.set_waker(act.cx.participant, waker.clone());
            }
            act.reader.set_waker(waker);
            act.driver().start();
            act.carry_out(ctx);
            act.produce(ctx);
        });
    }
}

impl Handler<Wake> for SourceActor {
    type Result = ();
    fn handle(&mut self, _: Wake, ctx: &mut Context<Self>) {
        self.guard(ctx, |act, ctx| {
            if !act.producing && act.started.is_some() {
                act.produce(ctx);
            }
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
            act.links.on_credit(credit);
            act.pump(ctx);
        });
    }
}

impl Handler<Resume> for SourceActor {
    type Result = ();
    fn handle(&mut self, Resume(resume): Resume, ctx: &mut Context<Self>) {
        self.guard(ctx, |act, ctx| {
            act.driver().handle_resume(resume);
            act.carry_out(ctx);
            act.pump(ctx);
        });
    }
}

impl Handler<Trigger> for SourceActor {
    type Result = ();
    fn handle(&mut self, Trigger(c): Trigger, ctx: &mut Context<Self>) {
        self.guard(ctx, |act, ctx| {
            let position = act.reader.position();
            act.driver().handle_trigger(c, position);
            act.carry_out(ctx);
        });
    }
}

impl Handler<SnapshotDurable> for SourceActor {
    type Result = ();
    fn handle(&mut self, SnapshotDurable(c): SnapshotDurable, ctx: &mut Context<Self>) {
        self.guard(ctx, |act, ctx| {
            act.driver().on_snapshot_durable(c);
            act.carry_out(ctx);
        });
    }
}

impl Handler<Complete> for SourceActor {
    type Result = ();
    fn handle(&mut self, Complete(c): Complete, ctx: &mut Context<Self>) {
        self.guard(ctx, |act, ctx| {
            act.driver().handle_complete(c);
            act.carry_out(ctx);
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
