//! A source subtask: reads batches from its [`SourceReader`] while it has credit, snapshots
//! its read position when triggered, and reports the end of its input.

use std::time::{Duration, Instant};

use actix::prelude::*;

use super::coordinator::{Ack, CoordinatorActor, SourceFinished};
use super::{Abort, Complete, Credit, Outputs, SubtaskContext};
use crate::connectors::SourceReader;
use crate::log::{SnapshotRecord, WriteOp};
use crate::protocol::CheckpointId;
use crate::protocol::participant::{Action, SourceTask};

/// Coordinator to source: start checkpoint `c`.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct Trigger(pub CheckpointId);

/// Wiring, sent once before `Start`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Wire {
    /// The outputs.
    pub outputs: Outputs,
    /// The coordinator.
    pub coordinator: Addr<CoordinatorActor>,
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
    coordinator: Option<Addr<CoordinatorActor>>,
    batch_size: usize,
    rate: Option<u64>,
    started: Option<(Instant, u64)>,
    /// The end of the input was reached and `End` sent (restored from the snapshot too).
    exhausted: bool,
    producing: bool,
}

/// A source's snapshot state: the reader's position, then 1 if `End` was already sent.
pub fn encode_source_state(position: Vec<u8>, ended: bool) -> Vec<u8> {
    let mut state = position;
    state.push(u8::from(ended));
    state
}

/// The inverse of [`encode_source_state`].
pub fn decode_source_state(state: &[u8]) -> Option<(&[u8], bool)> {
    let (&ended, position) = state.split_last()?;
    Some((position, ended == 1))
}

impl SourceActor {
    /// A source subtask restored as `core` says, reading from `reader` (already positioned).
    pub fn new(
        cx: SubtaskContext,
        source_index: usize,
        reader: Box<dyn SourceReader>,
        core: SourceTask,
        batch_size: usize,
        rate: Option<u64>,
        ended: bool,
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
        }
    }

    fn coordinator(&self) -> &Addr<CoordinatorActor> {
        self.coordinator.as_ref().expect("wired before start")
    }

    fn produce(&mut self, ctx: &mut Context<Self>) {
        self.producing = false;
        if self.exhausted || self.outputs.congested() || self.cx.fatal.failed() {
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
                ctx.run_later(wait, |act, ctx| act.produce(ctx));
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
            Err(payload) => return self.cx.panicked(&*payload),
        };
        match read {
            Ok(Some(batch)) => {
                let n = self.outputs.send(batch);
                self.cx.counters.add_out(n);
                self.producing = true;
                ctx.notify(Produce);
            }
            Ok(None) => {
                self.exhausted = true;
                self.outputs.send_end();
                self.coordinator().do_send(SourceFinished(self.source_index));
            }
            Err(e) => self.cx.fatal.fail(format!("{}: {e}", self.cx.name)),
        }
    }

    fn drain(&mut self, ctx: &mut Context<Self>) {
        while let Some(action) = self.core.poll_action() {
            match action {
                Action::Snapshot { checkpoint, .. } => {
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
                }
                Action::Ack(c) => {
                    self.coordinator().do_send(Ack { participant: self.cx.participant, checkpoint: c })
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

impl Handler<Wire> for SourceActor {
    type Result = ();
    fn handle(&mut self, wire: Wire, _: &mut Context<Self>) {
        self.outputs = wire.outputs;
        self.coordinator = Some(wire.coordinator);
    }
}

impl Handler<Start> for SourceActor {
    type Result = ();
    fn handle(&mut self, _: Start, ctx: &mut Context<Self>) {
        self.started =
            Some((Instant::now(), self.cx.counters.records_out.load(crate::sync::atomic::Ordering::Relaxed)));
        if self.exhausted {
            // Restored after the end of input: the new coordinator must hear it again.
            self.coordinator().do_send(SourceFinished(self.source_index));
        }
        self.produce(ctx);
    }
}

impl Handler<Produce> for SourceActor {
    type Result = ();
    fn handle(&mut self, _: Produce, ctx: &mut Context<Self>) {
        self.produce(ctx);
    }
}

impl Handler<Credit> for SourceActor {
    type Result = ();
    fn handle(&mut self, credit: Credit, ctx: &mut Context<Self>) {
        self.outputs.on_credit(credit);
        if !self.producing && !self.exhausted && self.started.is_some() {
            self.produce(ctx);
        }
    }
}

impl Handler<Trigger> for SourceActor {
    type Result = ();
    fn handle(&mut self, Trigger(c): Trigger, ctx: &mut Context<Self>) {
        self.core.handle_trigger(c);
        self.drain(ctx);
    }
}

impl Handler<SnapshotDurable> for SourceActor {
    type Result = ();
    fn handle(&mut self, SnapshotDurable(c): SnapshotDurable, ctx: &mut Context<Self>) {
        self.core.on_snapshot_durable(c);
        self.drain(ctx);
    }
}

impl Handler<Complete> for SourceActor {
    type Result = ();
    fn handle(&mut self, Complete(c): Complete, ctx: &mut Context<Self>) {
        self.core.handle_checkpoint_complete(c);
        self.drain(ctx);
    }
}

impl Handler<Abort> for SourceActor {
    type Result = ();
    fn handle(&mut self, _: Abort, _: &mut Context<Self>) {}
}
