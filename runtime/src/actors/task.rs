//! A transform or sink subtask: feeds its inputs through the protocol core's [`Task`]
//! (alignment, de-duplication, snapshot timing, two-phase commit), applies the operator or
//! writes the output, and carries out the core's actions.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::PathBuf;

use actix::prelude::*;
use serde::{Deserialize, Serialize};

use super::coordinator::{Ack, CoordinatorActor, SinkCommitted};
use super::{Abort, Complete, Credit, Deliver, Item, Outputs, Payload, SubtaskContext, Upstream};
use crate::batch::Batch;
use crate::connectors::encode::encode;
use crate::log::{CommitRecord, SnapshotRecord, WriteOp};
use crate::operators::Operator;
use crate::pipeline::spec::OutputFormat;
use crate::protocol::CheckpointId;
use crate::protocol::participant::{Action, Task};

/// Where a sink's committed output goes.
pub enum Destination {
    /// A file that holds committed output only.
    File {
        /// Its path.
        path: PathBuf,
        /// Open for writing.
        file: File,
    },
    /// Standard output (committed output is printed; a crash after printing and before the
    /// commit record is durable prints that output again: at-least-once).
    Stdout,
}

/// A sink's writer: encodes processed batches, stages them at barriers, appends on commit.
pub struct SinkWriter {
    format: OutputFormat,
    destination: Destination,
    /// Encoded output since the last barrier.
    pending: Vec<u8>,
    /// Durable progress (as far as this run has appended; durable once `CommitDurable`).
    committed: CommitRecord,
}

impl SinkWriter {
    /// A sink writer whose last durable commit record is `committed`. A file is cut back
    /// to the length recorded there: whatever follows it was appended by a commit whose
    /// record never became durable, and the repair commit appends it again.
    pub fn open(
        format: OutputFormat,
        path: Option<PathBuf>,
        committed: CommitRecord,
    ) -> Result<SinkWriter, String> {
        let destination = match path {
            None => Destination::Stdout,
            Some(path) => {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)
                        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
                }
                let file = OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .read(true)
                    .write(true)
                    .open(&path)
                    .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
                let len = file.metadata().map_err(|e| format!("cannot read {}: {e}", path.display()))?.len();
                if len < committed.file_len {
                    return Err(format!(
                        "{} is shorter ({len} bytes) than its committed output ({} bytes): it was changed outside weir",
                        path.display(),
                        committed.file_len
                    ));
                }
                file.set_len(committed.file_len)
                    .map_err(|e| format!("cannot truncate {}: {e}", path.display()))?;
                Destination::File { path, file }
            }
        };
        Ok(SinkWriter { format, destination, pending: Vec::new(), committed })
    }

    fn write(&mut self, batch: &Batch) {
        encode(batch, self.format, &mut self.pending);
    }

    /// Append the staged output of checkpoints after the last commit through `c`.
    fn commit(&mut self, cx: &SubtaskContext, c: CheckpointId) -> Result<CommitRecord, String> {
        let staged = cx
            .log
            .read_staged(cx.participant, CheckpointId(self.committed.through), c)
            .map_err(|e| e.to_string())?;
        let bytes: usize = staged.iter().map(|(_, b)| b.len()).sum();
        match &mut self.destination {
            Destination::File { path, file } => {
                let io = |e: std::io::Error| format!("writing {}: {e}", path.display());
                file.set_len(self.committed.file_len).map_err(io)?;
                file.seek(SeekFrom::Start(self.committed.file_len)).map_err(io)?;
                for (_, chunk) in &staged {
                    file.write_all(chunk).map_err(io)?;
                }
                file.sync_data().map_err(io)?;
            }
            Destination::Stdout => {
                let mut out = std::io::stdout().lock();
                for (_, chunk) in &staged {
                    // A closed stdout (a pipe to `head`) ends the output quietly.
                    let _ = out.write_all(chunk);
                }
                let _ = out.flush();
            }
        }
        self.committed = CommitRecord { through: c.0, file_len: self.committed.file_len + bytes as u64 };
        Ok(self.committed)
    }
}

/// What a task subtask does with the batches it processes.
pub enum Body {
    /// A transform.
    Operator(Box<dyn Operator>),
    /// A sink.
    Sink(SinkWriter),
}

/// A task's snapshot state: which inputs ended, and the operator's own state.
#[derive(Serialize, Deserialize, Default)]
pub struct TaskState {
    /// Inputs whose `End` was processed.
    pub ended: Vec<bool>,
    /// The operator's snapshot (empty for sinks).
    pub operator: Vec<u8>,
}

/// Wiring, sent once before anything else.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Wire {
    /// The outputs.
    pub outputs: Outputs,
    /// Where each input comes from.
    pub upstream: Vec<Upstream>,
    /// The coordinator.
    pub coordinator: Addr<CoordinatorActor>,
}

#[derive(Message)]
#[rtype(result = "()")]
struct SnapshotDurable(CheckpointId);

#[derive(Message)]
#[rtype(result = "()")]
struct CommitDurable(CheckpointId);

/// One transform or sink subtask.
pub struct TaskActor {
    cx: SubtaskContext,
    core: Task<Payload>,
    body: Body,
    ended: Vec<bool>,
    outputs: Outputs,
    upstream: Vec<Upstream>,
    /// Credits owed upstream, held back while the outputs are congested.
    owed: Vec<u32>,
    coordinator: Option<Addr<CoordinatorActor>>,
    scratch: Vec<Batch>,
}

impl TaskActor {
    /// A subtask with its restored core, body and per-input end flags.
    pub fn new(cx: SubtaskContext, core: Task<Payload>, body: Body, ended: Vec<bool>) -> TaskActor {
        let inputs = ended.len();
        TaskActor {
            cx,
            core,
            body,
            ended,
            outputs: Outputs::default(),
            upstream: Vec::new(),
            owed: vec![0; inputs],
            coordinator: None,
            scratch: Vec::new(),
        }
    }

    fn coordinator(&self) -> &Addr<CoordinatorActor> {
        self.coordinator.as_ref().expect("wired before any data")
    }

    fn give_credit(&mut self, input: usize) {
        if self.outputs.congested() {
            self.owed[input] += 1;
        } else {
            let up = &self.upstream[input];
            up.to.do_send(Credit { output: up.output, n: 1 });
        }
    }

    fn pay_owed(&mut self) {
        if self.outputs.congested() {
            return;
        }
        for (input, owed) in self.owed.iter_mut().enumerate() {
            if *owed > 0 {
                let up = &self.upstream[input];
                up.to.do_send(Credit { output: up.output, n: *owed });
                *owed = 0;
            }
        }
    }

    fn forward(&mut self) {
        for batch in self.scratch.drain(..) {
            let n = self.outputs.send(batch);
            self.cx.counters.add_out(n);
        }
    }

    fn process(&mut self, input: usize, payload: Payload) -> Result<(), String> {
        match (payload, &mut self.body) {
            (Payload::Data(batch), Body::Operator(op)) => {
                self.cx.counters.add_in(batch.len());
                self.cx.inject(self.cx.counters.records_in());
                op.process(input, &batch, &mut self.scratch).map_err(|e| e.to_string())?;
            }
            (Payload::Data(batch), Body::Sink(sink)) => {
                self.cx.counters.add_in(batch.len());
                self.cx.inject(self.cx.counters.records_in());
                self.cx.counters.add_out(batch.len());
                sink.write(&batch);
            }
            (Payload::End, body) => {
                if !self.ended[input] {
                    self.ended[input] = true;
                    if let Body::Operator(op) = body {
                        op.on_input_end(input, &mut self.scratch).map_err(|e| e.to_string())?;
                    }
                }
                let all_ended = self.ended.iter().all(|&e| e);
                self.forward();
                if all_ended {
                    self.outputs.send_end();
                }
                tracing::debug!("{}: input {input} ended", self.cx.name);
                return Ok(());
            }
        }
        self.forward();
        Ok(())
    }

    fn drain(&mut self, ctx: &mut Context<Self>) {
        while let Some(action) = self.core.poll_action() {
            if self.cx.fatal.failed() {
                return; // the attempt is stopping: nothing done now would count
            }
            // A panic in operator code (or anywhere in carrying out the action) is caught
            // and handed to the supervisor; the subtask's state is not trusted after it.
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.carry_out(action, ctx))) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    self.cx.fatal.fail(format!("{}: {e}", self.cx.name));
                    return;
                }
                Err(payload) => {
                    self.cx.panicked(&*payload);
                    return;
                }
            }
        }
    }

    fn carry_out(&mut self, action: Action<Payload>, ctx: &mut Context<Self>) -> Result<(), String> {
        match action {
            Action::Process { input, batch, .. } => {
                self.process(input, batch)?;
                self.give_credit(input);
            }
            Action::Snapshot { checkpoint, positions } => {
                let (operator, staged) = match &mut self.body {
                    Body::Operator(op) => (op.snapshot(), None),
                    Body::Sink(sink) => (Vec::new(), Some(std::mem::take(&mut sink.pending))),
                };
                let state = TaskState { ended: self.ended.clone(), operator };
                let record = SnapshotRecord {
                    positions,
                    out_seqs: self.outputs.seqs(),
                    state: postcard::to_allocvec(&state).expect("encoding to a Vec cannot fail"),
                };
                let participant = self.cx.participant;
                let mut ops = vec![WriteOp::Snapshot { participant, checkpoint, record }];
                if let Some(bytes) = staged {
                    ops.push(WriteOp::Stage { participant, checkpoint, bytes });
                }
                let (addr, fatal) = (ctx.address(), self.cx.fatal.clone());
                self.cx.writer.submit(
                    ops,
                    Box::new(move |r| match r {
                        Ok(()) => addr.do_send(SnapshotDurable(checkpoint)),
                        Err(e) => fatal.fail(e),
                    }),
                );
                self.outputs.send_barrier(checkpoint);
            }
            Action::Ack(c) => {
                self.coordinator().do_send(Ack { participant: self.cx.participant, checkpoint: c })
            }
            Action::Commit(c) => {
                let Body::Sink(sink) = &mut self.body else { unreachable!("only sinks commit") };
                let record = sink.commit(&self.cx, c)?;
                let (addr, fatal) = (ctx.address(), self.cx.fatal.clone());
                self.cx.writer.submit(
                    vec![WriteOp::Commit { participant: self.cx.participant, record }],
                    Box::new(move |r| match r {
                        Ok(()) => addr.do_send(CommitDurable(c)),
                        Err(e) => fatal.fail(e),
                    }),
                );
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
        }
        Ok(())
    }
}

impl Actor for TaskActor {
    type Context = Context<Self>;
}

impl Handler<Wire> for TaskActor {
    type Result = ();
    fn handle(&mut self, wire: Wire, ctx: &mut Context<Self>) {
        self.outputs = wire.outputs;
        self.upstream = wire.upstream;
        self.coordinator = Some(wire.coordinator);
        self.drain(ctx); // a restored sink's repair commit
    }
}

impl Handler<Deliver> for TaskActor {
    type Result = ();
    fn handle(&mut self, msg: Deliver, ctx: &mut Context<Self>) {
        let duplicates = self.core.aligner().duplicates_dropped();
        match msg.item {
            Item::Batch { seq, payload } => self.core.handle_batch(msg.input, seq, payload),
            Item::Barrier(c) => self.core.handle_barrier(msg.input, c),
        }
        if self.core.aligner().duplicates_dropped() > duplicates {
            self.give_credit(msg.input); // a dropped duplicate still used a credit
        }
        self.drain(ctx);
    }
}

impl Handler<Credit> for TaskActor {
    type Result = ();
    fn handle(&mut self, credit: Credit, _: &mut Context<Self>) {
        self.outputs.on_credit(credit);
        self.pay_owed();
    }
}

impl Handler<SnapshotDurable> for TaskActor {
    type Result = ();
    fn handle(&mut self, SnapshotDurable(c): SnapshotDurable, ctx: &mut Context<Self>) {
        self.core.on_snapshot_durable(c);
        self.drain(ctx);
    }
}

impl Handler<CommitDurable> for TaskActor {
    type Result = ();
    fn handle(&mut self, CommitDurable(c): CommitDurable, ctx: &mut Context<Self>) {
        self.core.on_commit_durable(c);
        self.coordinator().do_send(SinkCommitted { participant: self.cx.participant, checkpoint: c });
        self.drain(ctx);
    }
}

impl Handler<Complete> for TaskActor {
    type Result = ();
    fn handle(&mut self, Complete(c): Complete, ctx: &mut Context<Self>) {
        self.core.handle_checkpoint_complete(c);
        self.drain(ctx);
    }
}

impl Handler<Abort> for TaskActor {
    type Result = ();
    fn handle(&mut self, Abort(c): Abort, ctx: &mut Context<Self>) {
        self.core.handle_checkpoint_abort(c);
        self.drain(ctx);
    }
}
