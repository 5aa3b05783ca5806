//! A transform or sink subtask: feeds its inputs through the protocol core's [`Task`]
//! (alignment, de-duplication, snapshot timing, two-phase commit), applies the operator or
//! writes the output, and carries out the core's actions.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use std::time::{Duration, Instant};

use actix::prelude::*;
use serde::{Deserialize, Serialize};

use super::{
    Abort, Ack, Complete, Credit, Deliver, FailureReason, Guarded, Links, Payload, Resume, SinkCommitted,
    SubtaskContext, TaskSlot, ToCoordinator, Upstream,
};
use crate::batch::Batch;
use crate::connectors::encode::encode;
use crate::connectors::mqtt_sink::Outbox;
use crate::log::{CommitRecord, Done, Job, Log, LogError, SnapshotRecord, WriteOp};
use crate::operators::Operator;
use crate::pipeline::faults::FaultKind;
use crate::pipeline::spec::{OutputFormat, SinkSpec};
use crate::pipeline::supervise::{Decision, Restart, RestartReport};
use crate::protocol::driver::{Effect, Epoch, Subtask};
use crate::protocol::recovery::ParticipantLog;
use crate::protocol::storage::{Snapshot, Storage};
use crate::protocol::{CheckpointId, ParticipantId, Seq};
use crate::sync::{Arc, Mutex, lock};

/// Where a sink's committed output goes.
pub enum Destination {
    /// A file that holds committed output only.
    File {
        /// Its path.
        path: PathBuf,
        /// Open for writing.
        file: File,
    },
    /// Standard output (committed output is printed, on the log's writer thread; a crash after
    /// printing and before the commit record is durable prints that output again:
    /// at-least-once).
    Stdout,
    /// An MQTT sink's outbox: a commit puts its output there, in its transaction, and the
    /// publisher thread delivers it.
    Mqtt(Arc<Outbox>),
    /// A test's stream, printed to as standard output is.
    #[cfg(test)]
    Stream(Box<dyn Write + Send>),
}

/// A sink's writer: encodes processed batches, stages them at barriers, appends on commit.
pub struct SinkWriter {
    format: OutputFormat,
    /// Encoded output since the last barrier.
    pending: Vec<u8>,
    /// Where committed output goes. Only commits lock it, and they run one after another on
    /// the log's writer thread ([`crate::log::Writer::run`]); a restart flushes the writer
    /// before it opens the output again, so no commit of this one is in flight then.
    output: Arc<Mutex<Output>>,
    /// An MQTT sink's outbox (also in `output`): its publisher is woken after each commit,
    /// without taking the output's lock on the actor's thread (a commit may hold it).
    outbox: Option<Arc<Outbox>>,
}

/// A sink's output and how far it got.
struct Output {
    destination: Destination,
    /// Progress as far as this run has appended (durable once its commit record is).
    committed: CommitRecord,
}

impl SinkWriter {
    /// A sink writer for `spec` whose last durable commit record is `committed`. A file is cut
    /// back to the length recorded there: whatever follows it was appended by a commit whose
    /// record never became durable, and the repair commit appends it again.
    pub fn open(spec: &SinkSpec, committed: CommitRecord) -> Result<SinkWriter, String> {
        let (format, destination) = match spec {
            SinkSpec::Stdout { format } => (*format, Destination::Stdout),
            SinkSpec::Mqtt(_) => return Err("an MQTT sink is opened with its outbox".into()),
            SinkSpec::File { path, format, allow_symlink, mode } => {
                let file = open_output(path, *allow_symlink, *mode)?;
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
                (*format, Destination::File { path: path.clone(), file })
            }
        };
        Ok(SinkWriter::new(format, destination, committed))
    }

    /// An MQTT sink's writer, into `outbox`.
    pub fn mqtt(format: OutputFormat, outbox: Arc<Outbox>, committed: CommitRecord) -> SinkWriter {
        SinkWriter::new(format, Destination::Mqtt(outbox), committed)
    }

    fn new(format: OutputFormat, destination: Destination, committed: CommitRecord) -> SinkWriter {
        let outbox = match &destination {
            Destination::Mqtt(outbox) => Some(outbox.clone()),
            _ => None,
        };
        let output = Arc::new(Mutex::new(Output { destination, committed }));
        SinkWriter { format, pending: Vec::new(), output, outbox }
    }

    fn write(&mut self, batch: &Batch) {
        encode(batch, self.format, &mut self.pending);
    }
}

impl Output {
    /// Append the staged output of checkpoints after the last commit through `c`, durably
    /// (a file is synced); the commit record to write next, and the writes to make with it
    /// (an MQTT sink's: into its outbox, stamped with the sink's `epoch`).
    fn append(
        &mut self,
        log: &Log,
        participant: ParticipantId,
        c: CheckpointId,
        epoch: Epoch,
    ) -> Result<(CommitRecord, Vec<WriteOp>), String> {
        let staged = log
            .read_staged(participant, CheckpointId(self.committed.through), c)
            .map_err(|e| e.to_string())?;
        let bytes: usize = staged.iter().map(|(_, b)| b.len()).sum();
        let mut ops = Vec::new();
        match &mut self.destination {
            Destination::Mqtt(outbox) => {
                // A replicated pipeline's output carries the ownership epoch of the run that
                // started its checkpoint, whichever agent commits it; else the sink's epoch.
                let mut stamped = Vec::with_capacity(staged.len());
                for (checkpoint, messages) in staged {
                    let owner = log.owner_epoch(checkpoint).map_err(|e| e.to_string())?;
                    stamped.push((checkpoint, owner.unwrap_or(u64::from(epoch)), messages));
                }
                ops = outbox.commit_ops(stamped)?
            }
            Destination::File { path, file } => {
                let io = |e: std::io::Error| format!("writing {}: {e}", path.display());
                file.set_len(self.committed.file_len).map_err(io)?;
                file.seek(SeekFrom::Start(self.committed.file_len)).map_err(io)?;
                for (_, chunk) in &staged {
                    file.write_all(chunk).map_err(io)?;
                }
                file.sync_data().map_err(io)?;
            }
            Destination::Stdout => print(&mut std::io::stdout().lock(), &staged),
            #[cfg(test)]
            Destination::Stream(out) => print(out, &staged),
        }
        self.committed = CommitRecord { through: c.0, file_len: self.committed.file_len + bytes as u64 };
        Ok((self.committed, ops))
    }
}

/// Print committed output. A closed stream (a pipe to `head`) ends the output quietly.
fn print(out: &mut dyn Write, staged: &[(CheckpointId, Vec<u8>)]) {
    for (_, chunk) in staged {
        let _ = out.write_all(chunk);
    }
    let _ = out.flush();
}

/// A file sink's output, open for reading and writing. Unless `allow_symlink`, a symbolic link
/// at `path` is refused (`O_NOFOLLOW`), not followed onto whatever file it names. A missing
/// file is created with exactly `mode` (the umask does not apply: the config says what it
/// wants). Its folder is synced, so that the file's entry survives a power cut along with the
/// output committed into it.
fn open_output(path: &Path, allow_symlink: bool, mode: u32) -> Result<File, String> {
    open_output_within(path, allow_symlink, mode, MAX_OUTPUT_LINKS)
}

/// How many dangling links [`open_output`] follows to create the file one names, as the kernel
/// limits the links it follows in one path.
const MAX_OUTPUT_LINKS: u32 = 8;

fn open_output_within(path: &Path, allow_symlink: bool, mode: u32, links: u32) -> Result<File, String> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let mut options = OpenOptions::new();
    options.read(true).write(true);
    if !allow_symlink {
        options.custom_flags(libc::O_NOFOLLOW);
    }
    let refused = |e: std::io::Error| {
        if e.raw_os_error() == Some(libc::ELOOP) && !allow_symlink {
            format!(
                "cannot open {}: it is a symbolic link (set allow_symlink = true to write through it)",
                path.display()
            )
        } else {
            format!("cannot open {}: {e}", path.display())
        }
    };
    // Opening an existing file first keeps its mode; only a file made here gets `mode`.
    let file = match options.open(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            match options.clone().create_new(true).mode(mode).open(path) {
                Ok(file) => {
                    file.set_permissions(std::fs::Permissions::from_mode(mode))
                        .map_err(|e| format!("cannot set the mode of {}: {e}", path.display()))?;
                    file
                }
                // An allowed link to a missing file: `create_new` never follows a link, so
                // create the file it names, with the same care.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && allow_symlink && links > 0 => {
                    match std::fs::read_link(path) {
                        Ok(target) => return open_output_within(&dir.join(target), true, mode, links - 1),
                        // Not a link: made by someone else since the first attempt.
                        Err(_) => options.open(path).map_err(refused)?,
                    }
                }
                // Made by someone else since the first attempt: theirs, as it is.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    options.open(path).map_err(refused)?
                }
                Err(e) => return Err(refused(e)),
            }
        }
        opened => opened.map_err(refused)?,
    };
    // On every open, not only after creating: a run that created the file and died before
    // this sync left an entry that a power cut may still take, with the output in it.
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| format!("cannot sync {} (the folder of {}): {e}", dir.display(), path.display()))?;
    Ok(file)
}

/// What a task subtask does with the batches it processes.
pub enum Body {
    /// A transform.
    Operator(Box<dyn Operator>),
    /// A sink.
    Sink(SinkWriter),
}

/// A task's snapshot state: which inputs ended, and the operator's own state.
#[derive(Debug, Serialize, Deserialize, Default, PartialEq, Eq)]
pub struct TaskState {
    /// Inputs whose `End` was processed.
    pub ended: Vec<bool>,
    /// The operator's snapshot (empty for sinks).
    pub operator: Vec<u8>,
}

impl TaskState {
    /// The state as it is stored in a snapshot record (postcard).
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("encoding to a Vec cannot fail")
    }

    /// The state of a subtask with `inputs` inputs, from `bytes` as [`TaskState::encode`]
    /// wrote them. Refuses trailing bytes, any other encoding of the same state (so that
    /// whatever it accepts re-encodes to `bytes`) and an end flag per input that does not
    /// match `inputs`. Never panics, whatever the bytes: a fuzz target's entry point.
    pub fn decode(bytes: &[u8], inputs: usize) -> Result<TaskState, String> {
        let state: TaskState = crate::codec::decode_exact(bytes).map_err(|e| format!("task state: {e}"))?;
        if state.ended.len() != inputs {
            return Err(format!(
                "snapshot has end flags for {} inputs, the pipeline {inputs}",
                state.ended.len()
            ));
        }
        Ok(state)
    }
}

/// Builds a subtask's body afresh (an unrestored operator, or a sink writer opened at its
/// durable commit record), for a local restart and for a standby.
pub type BuildBody = std::sync::Arc<dyn Fn(&Log) -> Result<Body, String> + Send + Sync>;

mod standby;
pub use standby::{FailoverPlan, SetStandby, Spares};

/// What a transform or sink subtask restores from its snapshot: at the start of a run
/// attempt and at every local restart.
pub struct Restored {
    /// Last applied sequence number per input.
    pub positions: Vec<Seq>,
    /// Last sent sequence number per output channel (empty: none sent).
    pub out_seqs: Vec<Seq>,
    /// Inputs whose `End` was processed.
    pub ended: Vec<bool>,
    /// The body built afresh and restored from the snapshot.
    pub body: Body,
}

impl Restored {
    /// Subtask `name` with `inputs` inputs and `outputs` output channels, from its snapshot
    /// `record` (none: a fresh start); every error names the subtask or its operator.
    pub fn from_record(
        name: &str,
        record: Option<SnapshotRecord>,
        (inputs, outputs): (usize, usize),
        build: &BuildBody,
        log: &Log,
    ) -> Result<Restored, String> {
        let (positions, out_seqs, state) = match record {
            Some(r) => {
                let state = check_record(&r, inputs, outputs)
                    .map_err(|e| format!("{name}: snapshot cannot be decoded: {e}"))?;
                (r.positions, r.out_seqs, Some(state))
            }
            None => (vec![0; inputs], Vec::new(), None),
        };
        let ended = state.as_ref().map_or(vec![false; inputs], |s| s.ended.clone());
        let body = restore_body(name, build, log, state.map(|s| s.operator))?;
        Ok(Restored { positions, out_seqs, ended, body })
    }
}

/// The body of subtask `name` built afresh and restored from `operator` (the operator state
/// of its snapshot; none: fresh).
fn restore_body(name: &str, build: &BuildBody, log: &Log, operator: Option<Vec<u8>>) -> Result<Body, String> {
    let mut body = build(log).map_err(|e| format!("{name}: {e}"))?;
    match (&mut body, operator) {
        (Body::Operator(op), Some(state)) => op.restore(&state).map_err(|e| e.to_string())?,
        (Body::Sink(_), Some(state)) if !state.is_empty() => {
            return Err(format!(
                "{name}: snapshot cannot be decoded: a sink's snapshot holds {} bytes of operator state",
                state.len()
            ));
        }
        _ => {}
    }
    Ok(body)
}

/// The runtime's log as the protocol driver's storage seam: what a restart of one subtask
/// (with `inputs` inputs and `outputs` output channels) reads, its snapshot checked against
/// that topology and decoded into the driver's part and the operator's bytes.
pub struct LogStorage<'a> {
    /// The log.
    pub log: &'a Log,
    /// The subtask, for messages.
    pub name: &'a str,
    /// Its inputs and output channels.
    pub shape: (usize, usize),
}

impl Storage<Payload> for LogStorage<'_> {
    type State = Vec<u8>;
    type Error = String;

    fn completed(&self) -> Result<Option<CheckpointId>, String> {
        self.log.completed().map_err(|e| e.to_string())
    }

    fn participant_log(&self, p: ParticipantId, sink: bool) -> Result<ParticipantLog, String> {
        self.log.participant_log(p, sink).map_err(|e| e.to_string())
    }

    fn snapshot(&self, p: ParticipantId, c: CheckpointId) -> Result<Snapshot<Vec<u8>>, String> {
        let record = self.log.read_snapshot(p, c).map_err(|e| e.to_string())?;
        let (inputs, outputs) = self.shape;
        let state = check_record(&record, inputs, outputs)
            .map_err(|e| format!("{}: snapshot cannot be decoded: {e}", self.name))?;
        Ok(Snapshot {
            positions: record.positions,
            out_seqs: record.out_seqs,
            ended: state.ended,
            state: state.operator,
        })
    }

    fn committed_through(&self, p: ParticipantId) -> Result<Option<CheckpointId>, String> {
        let record = self.log.read_commit(p).map_err(|e| e.to_string())?;
        Ok(record.filter(|r| r.through > 0).map(|r| CheckpointId(r.through)))
    }
}

/// The task state of snapshot `record` of a subtask with `inputs` inputs and `outputs` output
/// channels, checked against that topology: a position per input, a sequence number per
/// output, and an input that ended has delivered its `End` (which takes a sequence number).
fn check_record(record: &SnapshotRecord, inputs: usize, outputs: usize) -> Result<TaskState, String> {
    if record.positions.len() != inputs {
        return Err(format!(
            "snapshot has positions for {} inputs, the pipeline {inputs}",
            record.positions.len()
        ));
    }
    if record.out_seqs.len() != outputs {
        return Err(format!(
            "snapshot has sequence numbers for {} outputs, the pipeline {outputs}",
            record.out_seqs.len()
        ));
    }
    let state = TaskState::decode(&record.state, inputs)?;
    if let Some(i) = (0..inputs).find(|&i| state.ended[i] && record.positions[i] == 0) {
        return Err(format!("input {i} ended at position 0"));
    }
    Ok(state)
}

/// Wiring, sent once before anything else.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Wire {
    /// The wires of the output channels.
    pub links: Links,
    /// Where each input comes from.
    pub upstream: Vec<Upstream>,
    /// The coordinator.
    pub coordinator: ToCoordinator,
    /// Its slot.
    pub slot: Option<Arc<TaskSlot>>,
    /// How a standby protects it (none: no standby), and on which of the plan's arbiters it
    /// runs.
    pub failover: Option<(Arc<FailoverPlan>, usize)>,
    /// Whether it starts with its standby (`key_operator = "auto"` may start it later).
    pub standby: bool,
}

/// A write of epoch `.0` is durable (or failed).
#[derive(Message)]
#[rtype(result = "()")]
struct Written(Epoch, Durable);

enum Durable {
    Snapshot(CheckpointId),
    Commit(CheckpointId),
    Failed(std::sync::Arc<LogError>),
    /// Encoding a snapshot on the writer thread panicked (as operator code on this thread
    /// would have): nothing was written.
    Panicked(String),
}

/// Restore after the backoff (sent to itself).
#[derive(Message)]
#[rtype(result = "()")]
struct Restore;

/// A restart in progress: what the report will say.
struct Restarting {
    reason: FailureReason,
    message: String,
    at: Instant,
    backoff: Duration,
    failed: bool,
    restarted: Vec<String>,
}

/// One transform or sink subtask: the protocol driver ([`Subtask`]) decides; this carries
/// out its effects (the operator or the sink writer, the wires, the log, the coordinator).
pub struct TaskActor {
    cx: SubtaskContext,
    driver: Subtask<Payload>,
    body: Body,
    build: BuildBody,
    links: Links,
    upstream: Vec<Upstream>,
    /// Credits owed upstream, held back while the outputs are congested.
    owed: Vec<u32>,
    coordinator: Option<ToCoordinator>,
    scratch: Vec<Batch>,
    restarting: Option<Restarting>,
    /// Input positions at a failure this subtask is catching up from (for the report).
    catch_up: Option<Vec<Seq>>,
    /// Fault-injection counts: snapshots taken, commits started, writes submitted.
    snapshots: u64,
    commits: u64,
    writes: u64,
    /// Its slot (none for an actor a test drives alone).
    slot: Option<Arc<TaskSlot>>,
    /// How a standby protects its slot (none: no standby), and which of the plan's two
    /// arbiters this actor runs on.
    failover: Option<(Arc<FailoverPlan>, usize)>,
    /// A primary's standby.
    standby: Option<Addr<TaskActor>>,
    /// A standby: its replica of the primary, and its takeover.
    follower: Option<standby::Follower>,
    /// A primary that failed and handed its slot to its standby: it does nothing more.
    handed_over: bool,
    /// After a failure, until the first new output: for the report's `output_gap_ms`.
    gap: Option<Gap>,
    /// When it last sent a batch (milliseconds since the run started).
    last_output_ms: u64,
}

/// The output gap of a failure being measured.
struct Gap {
    /// The failure (the report's `at_ms`).
    at_ms: u64,
    /// The failed subtask's last batch sent before it.
    last_ms: u64,
    /// Per channel, the sequence number a batch must be above to be new to its receiver (a
    /// restarted subtask first produces again what it had sent); empty: any batch is.
    above: Vec<Seq>,
}

impl TaskActor {
    /// A subtask driven by `driver` (restored as the run's recovery plan says), applying
    /// `body`; `build` makes a fresh body for a local restart.
    pub fn new(cx: SubtaskContext, driver: Subtask<Payload>, body: Body, build: BuildBody) -> TaskActor {
        let inputs = driver.positions().len();
        let catch_up = cx.supervisor.catch_up_target(cx.participant);
        TaskActor {
            catch_up,
            cx,
            driver,
            body,
            build,
            links: Links::default(),
            upstream: Vec::new(),
            owed: vec![0; inputs],
            coordinator: None,
            scratch: Vec::new(),
            restarting: None,
            snapshots: 0,
            commits: 0,
            writes: 0,
            slot: None,
            failover: None,
            standby: None,
            follower: None,
            handed_over: false,
            gap: None,
            last_output_ms: 0,
        }
    }

    /// Whether its slot was granted to another since it was granted its own.
    fn deposed(&self) -> bool {
        self.slot.as_ref().is_some_and(|s| s.deposed(self.driver.grant()))
    }

    fn coordinator(&self) -> &ToCoordinator {
        self.coordinator.as_ref().expect("wired before any data")
    }

    fn give_credit(&mut self, input: usize) {
        if self.links.congested() {
            self.owed[input] += 1;
        } else {
            let up = &self.upstream[input];
            up.to.do_send(Credit { output: up.output, n: 1 });
        }
    }

    fn pay_owed(&mut self) {
        if self.links.congested() {
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

    /// Hand what the operator output to the driver, which routes it.
    fn forward(&mut self) {
        for batch in self.scratch.drain(..) {
            self.cx.counters.add_out(batch.len());
            if self.driver.emit(Payload::Data(crate::sync::Arc::new(batch))) {
                super::warn_overflow(&self.cx.name, self.driver.outputs().budget());
            }
        }
        let buffered = self.driver.outputs().buffered() as u64;
        self.cx.counters.buffered_bytes.store(buffered, crate::sync::atomic::Ordering::Relaxed);
    }

    /// Apply one batch (or, with `None`, the end of `input`) to the operator or the sink.
    fn process(&mut self, input: usize, payload: Option<Payload>) -> Result<(), String> {
        match (payload, &mut self.body) {
            (Some(Payload::Data(batch)), Body::Operator(op)) if batch.event_time_floor().is_some() => {
                let floor = batch.event_time_floor().expect("matched");
                if op.advance_event_time(input, floor, &mut self.scratch).map_err(|e| e.to_string())? {
                    self.scratch.push(crate::batch::Batch::floor_only(op.output_schema(), floor));
                }
            }
            (Some(Payload::Data(batch)), Body::Operator(op)) => {
                self.cx.counters.add_in(batch.len());
                self.cx.inject(self.cx.counters.records_in());
                let started = Instant::now();
                op.process(input, &batch, &mut self.scratch).map_err(|e| e.to_string())?;
                self.cx.counters.add_busy(started.elapsed().as_nanos() as u64);
                self.cx
                    .counters
                    .late_records
                    .store(op.late_records(), crate::sync::atomic::Ordering::Relaxed);
            }
            (Some(Payload::Data(batch)), Body::Sink(sink)) => {
                self.cx.counters.add_in(batch.len());
                self.cx.inject(self.cx.counters.records_in());
                self.cx.counters.add_out(batch.len());
                sink.write(&batch);
            }
            (Some(Payload::End), _) => unreachable!("the driver reports the end of input as InputEnded"),
            (None, body) => {
                if let Body::Operator(op) = body {
                    op.on_input_end(input, &mut self.scratch).map_err(|e| e.to_string())?;
                }
                tracing::debug!("{}: input {input} ended", self.cx.name);
            }
        }
        self.forward();
        Ok(())
    }

    /// Carry out the driver's effects until it has nothing more to do. A standby applies
    /// what its primary shipped instead; a primary that was replaced stops.
    fn drain(&mut self, ctx: &mut Context<Self>) {
        if self.follower.is_some() {
            return self.drain_replica(ctx);
        }
        if self.deposed() {
            tracing::warn!("{}: replaced by its standby; stopping", self.cx.name);
            ctx.stop();
            return;
        }
        if self.handed_over {
            return;
        }
        // The standby's watchdog reads how long the primary has been in here.
        let watched = self.standby.is_some().then(|| self.slot.clone()).flatten();
        if let Some(slot) = &watched {
            slot.busy(self.cx.supervisor.since_start(Instant::now()));
        }
        self.drain_effects(ctx);
        if let Some(slot) = &watched {
            slot.idle();
        }
    }

    fn drain_effects(&mut self, ctx: &mut Context<Self>) {
        if self.restarting.is_some() {
            return;
        }
        while let Some(effect) = self.driver.poll_effect() {
            if self.cx.fatal.failed() || self.handed_over || self.deposed() {
                return; // the attempt is stopping, or the slot is another's: nothing done now counts
            }
            // A panic in operator code (or anywhere in carrying out the effect) is caught and
            // handed to the supervisor; the subtask's state is not trusted after it.
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.carry_out(effect, ctx))) {
                Ok(Ok(true)) => {}
                Ok(Ok(false)) => return,
                Ok(Err(e)) => {
                    // Operator errors name their node already: say it once, as the subtask.
                    let text = e.to_string();
                    let text = text.strip_prefix(&format!("{}: ", self.cx.node)).unwrap_or(&text);
                    self.cx.fatal.fail(format!("{}: {text}", self.cx.name));
                    return;
                }
                Err(payload) => {
                    let message = super::panic_message(&*payload);
                    return self.fail(FailureReason::Panic, message, ctx);
                }
            }
        }
    }

    /// Something failed in this subtask: ask the supervisor, then restart locally or
    /// escalate.
    fn fail(&mut self, reason: FailureReason, message: String, ctx: &mut Context<Self>) {
        let at = Instant::now();
        tracing::error!("{}: {reason}: {message}", self.cx.name);
        let positions = self.driver.positions().to_vec();
        self.cx.supervisor.note_failure(self.cx.participant, at, positions.clone());
        if self.hand_over(reason, &message, at) {
            return;
        }
        match self.cx.supervisor.on_failure(self.cx.participant, at) {
            Decision::Global => self.cx.escalate(reason, message),
            Decision::Local { restart, backoff } => {
                self.catch_up = Some(positions);
                let (at_ms, last_ms) = (self.cx.supervisor.since_start(at), self.last_output_ms);
                self.gap = Some(Gap { at_ms, last_ms, above: self.driver.outputs().seqs() });
                let restarted = restart.iter().map(|&p| self.cx.supervisor.name(p).to_owned()).collect();
                self.cx
                    .supervisor
                    .restart_others(&restart, Restart { failed: self.cx.name.clone(), at, backoff });
                tracing::warn!(
                    "{}: restarting {} locally in {} ms",
                    self.cx.name,
                    if restart.len() > 1 { "it and what is downstream" } else { "it" },
                    backoff.as_millis()
                );
                self.begin_restart(Restarting { reason, message, at, backoff, failed: true, restarted }, ctx);
            }
        }
    }

    /// Drop everything volatile and restore after the backoff. The actor keeps its address,
    /// mailbox and wires; the driver keeps its gate (with its determinant log) and output
    /// side (buffer queues); the operator and the pending output are rebuilt from the log.
    fn begin_restart(&mut self, restarting: Restarting, ctx: &mut Context<Self>) {
        self.driver.fail();
        if let Some(slot) = &self.slot {
            slot.set_incarnation(self.driver.epoch());
        }
        let backoff = restarting.backoff;
        self.restarting = Some(restarting);
        self.scratch.clear();
        self.owed.iter_mut().for_each(|o| *o = 0);
        ctx.run_later(backoff, |_, ctx| ctx.notify(Restore));
    }

    /// Restore from the log: the driver plans and restores itself from the snapshot of the
    /// latest completed checkpoint; the body is rebuilt from the operator's part of it.
    fn restore(&mut self) -> Result<CheckpointId, String> {
        // Every write queued before the failure lands first, so what is read is settled.
        self.cx.writer.flush();
        let log = self.cx.log.clone();
        let shape = (self.driver.positions().len(), self.links.0.len());
        let storage = LogStorage { log: &log, name: &self.cx.name, shape };
        let started = Instant::now();
        let restored = self.driver.restart(&storage).map_err(|e| e.to_string())?;
        let bytes = restored.state.as_ref().map_or(0, Vec::len);
        self.body = restore_body(&self.cx.name, &self.build, &log, restored.state)?;
        self.cx.supervisor.note_restore(bytes, started.elapsed().as_secs_f64() * 1000.0);
        Ok(restored.checkpoint)
    }

    /// Count a write: its completion callback, which reports it to this actor as `Written`,
    /// and the injected error to report instead of writing, if one is due at it.
    fn next_write(
        &mut self,
        ctx: &Context<Self>,
        done: fn(CheckpointId) -> Durable,
        c: CheckpointId,
    ) -> (Done, Option<Arc<LogError>>) {
        self.writes += 1;
        let injected = self
            .cx
            .write_fails(self.writes)
            .then(|| Arc::new(LogError::Injected(format!("write {} of {}", self.writes, self.cx.name))));
        let (addr, epoch) = (ctx.address(), self.driver.epoch());
        let callback: Done = Box::new(move |r| match r {
            Ok(()) => addr.do_send(Written(epoch, done(c))),
            Err(e) => addr.do_send(Written(epoch, Durable::Failed(e))),
        });
        (callback, injected)
    }

    /// Commit through `c` on the log's writer thread: the append and its sync, then the commit
    /// record, so that no subtask on this thread waits for the output's disk. The record comes
    /// back `Written` as any write (and is ignored there if this subtask restarted meanwhile);
    /// an error appending is fatal, as it was on this thread.
    fn commit(&mut self, c: CheckpointId, ctx: &Context<Self>) {
        let Body::Sink(sink) = &self.body else { unreachable!("only sinks commit") };
        let (output, outbox) = (sink.output.clone(), sink.outbox.clone());
        let (done, injected) = self.next_write(ctx, Durable::Commit, c);
        // An outbox's publisher goes on once the commit is durable.
        let done: Done = match outbox {
            Some(outbox) => Box::new(move |r| {
                if r.is_ok() {
                    outbox.notify();
                }
                done(r)
            }),
            None => done,
        };
        let (log, participant, epoch) = (self.cx.log.clone(), self.cx.participant, self.driver.epoch());
        let (fatal, name) = (self.cx.fatal.clone(), self.cx.name.clone());
        let tap = self.cx.writer.tap();
        let job: Job = Box::new(move || {
            // The owner's self-fence (replication): nothing becomes visible once its lease is
            // about to run out; as a crash before the append.
            if let Some(Err(e)) = tap.map(|tap| tap.may_release()) {
                done(Err(Arc::new(crate::log::LogError::Replication(e))));
                return None;
            }
            let appended = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                lock(&output).append(&log, participant, c, epoch)
            }));
            match (appended, injected) {
                (Ok(Ok((record, mut ops))), None) => {
                    ops.push(WriteOp::Commit { participant, record });
                    return Some((ops, done));
                }
                // The output is appended, its record is not: as a crash between the two.
                (Ok(Ok(_)), Some(injected)) => done(Err(injected)),
                (Ok(Err(e)), _) => fatal.fail(format!("{name}: {e}")),
                (Err(panic), _) => fatal
                    .fail(format!("{name}: commit through {c} panicked: {}", super::panic_message(&*panic))),
            }
            None
        });
        if let Err(gone) = self.cx.writer.run(job) {
            let epoch = self.driver.epoch();
            ctx.address().do_send(Written(epoch, Durable::Failed(Arc::new(gone))));
        }
    }

    /// Snapshot for checkpoint `c` (`record` without its state yet; `ended`: the end flags).
    /// Here, on the thread this subtask shares, only the capture of the operator's state (or
    /// the taking of the sink's staged output); encoding it, the task state and the record
    /// runs on the log's writer thread, queued after every write of this subtask before it
    /// and so applied in that order, so that no subtask on this thread waits for a large
    /// state's encoding. It comes back `Written` as any write; an injected write error is
    /// reported at once, as before, nothing encoded; a panic encoding it is reported as a
    /// panic of this subtask.
    fn snapshot(
        &mut self,
        c: CheckpointId,
        mut record: SnapshotRecord,
        ended: Vec<bool>,
        ctx: &Context<Self>,
    ) {
        let (capture, staged) = match &mut self.body {
            Body::Operator(op) => (Some(op.capture()), None),
            Body::Sink(sink) => (None, Some(std::mem::take(&mut sink.pending))),
        };
        let (done, injected) = self.next_write(ctx, Durable::Snapshot, c);
        if let Some(injected) = injected {
            return done(Err(injected));
        }
        let (participant, addr, epoch) = (self.cx.participant, ctx.address(), self.driver.epoch());
        let (counters, supervisor) = (self.cx.counters.clone(), self.cx.supervisor.clone());
        let job: Job = Box::new(move || {
            let encoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| capture.map(|c| c())));
            let operator = match encoded {
                Ok(operator) => operator.unwrap_or_default(),
                Err(panic) => {
                    addr.do_send(Written(epoch, Durable::Panicked(super::panic_message(&*panic))));
                    return None;
                }
            };
            if !operator.is_empty() {
                counters
                    .snapshot_bytes
                    .fetch_max(operator.len() as u64, std::sync::atomic::Ordering::Relaxed);
                // Off the subtask's thread: the estimates changed.
                supervisor.reevaluate_key_operator();
            }
            record.state = TaskState { ended, operator }.encode();
            let mut ops = vec![WriteOp::Snapshot { participant, checkpoint: c, record }];
            if let Some(bytes) = staged {
                ops.push(WriteOp::Stage { participant, checkpoint: c, bytes });
            }
            Some((ops, done))
        });
        if let Err(gone) = self.cx.writer.run(job) {
            ctx.address().do_send(Written(self.driver.epoch(), Durable::Failed(Arc::new(gone))));
        }
    }

    /// Carry out one effect; false when draining must stop (the run escalates).
    fn carry_out(&mut self, effect: Effect<Payload>, ctx: &mut Context<Self>) -> Result<bool, String> {
        match effect {
            Effect::Process { input, batch, .. } => {
                self.process(input, Some(batch))?;
                self.processed();
            }
            Effect::InputEnded { input } => {
                self.process(input, None)?;
                self.processed();
            }
            Effect::Send { channel, epoch, item } => {
                if let super::Item::Batch { seq, .. } = item {
                    self.sent_output(channel, seq);
                }
                self.links.send(channel, epoch, item)
            }
            Effect::Reset { channel } => self.links.0[channel].reset(),
            Effect::Snapshot { checkpoint, positions, out_seqs, ended } => {
                self.snapshots += 1;
                self.cx.inject_at(FaultKind::Snapshot, self.snapshots);
                self.cx.counters.snapshot_taken();
                self.snapshot(
                    checkpoint,
                    SnapshotRecord { positions, out_seqs, state: Vec::new() },
                    ended,
                    ctx,
                );
            }
            Effect::Ack(c) => self.coordinator().ack.do_send(Ack {
                participant: self.cx.participant,
                grant: self.driver.grant(),
                checkpoint: c,
            }),
            Effect::Commit(c) => {
                self.commits += 1;
                self.cx.inject_at(FaultKind::Commit, self.commits);
                self.commit(c, ctx);
            }
            Effect::DropSnapshotsBelow(c) => {
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
            Effect::Credit { input } => self.give_credit(input),
            Effect::ResumeUpstream { input, from_seq, restored, epoch } => {
                let up = &self.upstream[input];
                let resume =
                    crate::protocol::driver::Resume { channel: up.output, from_seq, restored, epoch };
                up.resume.do_send(Resume(resume));
            }
            Effect::Committed(checkpoint) => self
                .coordinator()
                .committed
                .do_send(SinkCommitted { participant: self.cx.participant, checkpoint }),
            Effect::Ship(shipped) => self.ship(shipped),
            Effect::Install(_) => unreachable!("only a standby installs, in drain_replica"),
            Effect::Escalate(escalation) => {
                self.cx.escalate((&escalation).into(), escalation.to_string());
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Whether it has again received everything it had when it failed (for the report).
    fn check_caught_up(&mut self) {
        if let Some(target) = &self.catch_up
            && self.driver.positions().iter().zip(target).all(|(now, then)| now >= then)
        {
            self.cx.supervisor.caught_up(self.cx.participant, Instant::now());
            self.catch_up = None;
        }
    }

    /// It sent batch `seq` on `channel`: when the slot's standby may need it, and the end of
    /// an output gap being measured.
    fn sent_output(&mut self, channel: usize, seq: Seq) {
        let now = self.cx.supervisor.since_start(Instant::now());
        self.last_output_ms = now;
        if let Some(slot) = &self.slot {
            slot.output(now);
        }
        let new = self.gap.as_ref().is_some_and(|g| g.above.get(channel).is_none_or(|&above| seq > above));
        if new && let Some(gap) = self.gap.take() {
            let ms = now.saturating_sub(gap.last_ms);
            self.cx.supervisor.amend(self.cx.participant, gap.at_ms, |r| r.output_gap_ms = Some(ms));
        }
    }

    /// The operator is done with what the driver gave it: return the input's credit.
    fn processed(&mut self) {
        if let Some(input) = self.driver.processed() {
            self.give_credit(input);
        }
    }
}

impl Actor for TaskActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.watch_primary(ctx);
    }
}

impl Guarded for TaskActor {
    /// A panic outside operator code is handled as one inside it: the supervisor restarts
    /// this subtask or escalates.
    fn panicked(&mut self, message: String, ctx: &mut Context<Self>) {
        self.fail(FailureReason::Panic, message, ctx);
    }
}

impl Handler<Wire> for TaskActor {
    type Result = ();
    fn handle(&mut self, wire: Wire, ctx: &mut Context<Self>) {
        self.guard(ctx, |act, ctx| {
            act.links = wire.links;
            if let Some(slot) = wire.slot {
                act.links.set_grant(slot.grant());
                act.driver.set_grant(slot.grant());
                act.slot = Some(slot);
            }
            act.failover = wire.failover;
            let standby = wire.standby;
            act.upstream = wire.upstream;
            act.coordinator = Some(wire.coordinator);
            if standby {
                act.start_standby(ctx);
            }
            act.drain(ctx); // a restored sink's repair commit
        });
    }
}

impl Handler<Deliver> for TaskActor {
    type Result = ();
    fn handle(&mut self, msg: Deliver, ctx: &mut Context<Self>) {
        self.guard(ctx, |act, ctx| {
            // Only what the driver takes counts towards catching up: until the restore, its gate
            // still holds the positions of the failure.
            if act.follower.is_some() {
                return; // a standby is fed by its primary
            }
            let fence = act.upstream.get(msg.input).map_or(0, |up| up.to.grant());
            act.driver.fence(msg.input, fence);
            let taken = act.driver.handle_deliver(msg.input, msg.grant, msg.epoch, msg.item);
            if taken {
                act.check_caught_up();
            }
            act.drain(ctx);
        });
    }
}

impl Handler<Credit> for TaskActor {
    type Result = ();
    fn handle(&mut self, credit: Credit, ctx: &mut Context<Self>) {
        self.guard(ctx, |act, _| {
            if act.deposed() || act.handed_over || act.follower.is_some() {
                return;
            }
            act.cx.inject_on(FaultKind::Credit);
            act.links.on_credit(credit);
            if act.restarting.is_none() {
                act.pay_owed();
            }
        });
    }
}

impl Handler<Resume> for TaskActor {
    type Result = ();
    fn handle(&mut self, Resume(resume): Resume, ctx: &mut Context<Self>) {
        self.guard(ctx, |act, ctx| {
            act.driver.handle_resume(resume);
            act.drain(ctx);
        });
    }
}

impl Handler<Restart> for TaskActor {
    type Result = ();
    fn handle(&mut self, msg: Restart, ctx: &mut Context<Self>) {
        self.guard(ctx, |act, ctx| {
            if act.restarting.is_some() {
                return;
            }
            tracing::warn!("{}: restarting with {} (rest_for_one)", act.cx.name, msg.failed);
            let restarting = Restarting {
                reason: FailureReason::RestForOne,
                message: format!("{} failed", msg.failed),
                at: msg.at,
                backoff: msg.backoff,
                failed: false,
                restarted: Vec::new(),
            };
            act.begin_restart(restarting, ctx);
        });
    }
}

impl Handler<Restore> for TaskActor {
    type Result = ();
    fn handle(&mut self, _: Restore, ctx: &mut Context<Self>) {
        self.guard(ctx, |act, ctx| {
            let Some(restarting) = act.restarting.take() else { return };
            let restored = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| act.restore()));
            match restored {
                Ok(Ok(c)) => {
                    tracing::info!("{}: restored from {c}; upstream replays", act.cx.name);
                    if restarting.failed {
                        let supervisor = &act.cx.supervisor;
                        supervisor.record(RestartReport {
                            node: act.cx.node.clone(),
                            subtask: act.cx.subtask,
                            reason: restarting.reason,
                            recovery: "local".into(),
                            restarted: restarting.restarted,
                            message: restarting.message,
                            at_ms: supervisor.since_start(restarting.at),
                            duration_ms: restarting.at.elapsed().as_millis() as u64,
                            restored_from: (c.0 > 0).then_some(c.0),
                            caught_up_ms: None,
                            epoch: None,
                            output_gap_ms: None,
                            reprotected_ms: None,
                        });
                    }
                    act.drain(ctx);
                }
                Ok(Err(e)) => act.cx.escalate(FailureReason::RestoreFailed, e),
                Err(payload) => {
                    act.cx.escalate(FailureReason::RestoreFailed, super::panic_message(&*payload))
                }
            }
        });
    }
}

impl Handler<Written> for TaskActor {
    type Result = ();
    fn handle(&mut self, Written(epoch, durable): Written, ctx: &mut Context<Self>) {
        self.guard(ctx, |act, ctx| {
            if epoch != act.driver.epoch() {
                return; // a write of an earlier epoch: the restarted driver does not wait for it
            }
            match durable {
                Durable::Snapshot(c) => act.driver.on_snapshot_durable(epoch, c),
                Durable::Commit(c) => act.driver.on_commit_durable(epoch, c),
                Durable::Failed(e) if !e.is_healable() => {
                    // A full map or disk, an I/O error: the person must act; a restart would
                    // only retry the same write.
                    act.cx.fatal.fail(e);
                    return;
                }
                Durable::Failed(e) => return act.fail(FailureReason::WriteError, e.to_string(), ctx),
                Durable::Panicked(message) => return act.fail(FailureReason::Panic, message, ctx),
            }
            act.drain(ctx);
        });
    }
}

impl Handler<Complete> for TaskActor {
    type Result = ();
    fn handle(&mut self, Complete(c): Complete, ctx: &mut Context<Self>) {
        self.guard(ctx, |act, ctx| {
            if let Some(follower) = &mut act.follower {
                follower.replica.handle_complete(c);
            } else {
                act.driver.handle_complete(c);
                if let Some(standby) = &act.standby {
                    standby.do_send(Complete(c));
                }
            }
            act.drain(ctx);
        });
    }
}

impl Handler<Abort> for TaskActor {
    type Result = ();
    fn handle(&mut self, Abort(c): Abort, ctx: &mut Context<Self>) {
        self.guard(ctx, |act, ctx| {
            if act.follower.is_none() {
                act.driver.handle_abort(c);
            }
            act.drain(ctx);
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;

    /// The wiring of a subtask a test drives alone: no outputs, these inputs, no slot.
    fn wired(upstream: Vec<Upstream>) -> Wire {
        Wire {
            links: Links::default(),
            upstream,
            coordinator: nowhere(),
            slot: None,
            failover: None,
            standby: false,
        }
    }

    /// Reports to a coordinator that was never started: they go nowhere.
    fn nowhere() -> ToCoordinator {
        let coordinator = Context::<crate::actors::coordinator::CoordinatorActor>::new().address();
        ToCoordinator {
            failover: coordinator.clone().recipient(),
            ack: coordinator.clone().recipient(),
            finished: coordinator.clone().recipient(),
            committed: coordinator.recipient(),
        }
    }
    use crate::actors::{Failure, Fatal, Links, To};
    use crate::log::Writer;
    use crate::operators::{Capture, OperatorError};
    use crate::pipeline::spec::{FileFormat, SupervisionSpec};
    use crate::pipeline::supervise::Supervisor;
    use crate::protocol::aligner::AlignmentMode;
    use crate::protocol::participant::{Task, TaskConfig};
    use crate::protocol::recovery::{ParticipantRestore, SinkRestore};
    use crate::protocol::route;

    /// How long a test waits for something that takes milliseconds: a hang, not a slow machine.
    const PATIENCE: Duration = Duration::from_secs(20);

    /// A stream whose every write says it started, then waits until the test lets it through
    /// (or drops its end of `release`).
    struct Held {
        started: mpsc::Sender<()>,
        release: mpsc::Receiver<()>,
        printed: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    }

    impl Write for Held {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let _ = self.started.send(());
            let _ = self.release.recv();
            self.printed.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Answers a ping: shows that its thread is free.
    struct Echo;

    impl Actor for Echo {
        type Context = Context<Self>;
    }

    #[derive(Message)]
    #[rtype(result = "()")]
    struct Ping(mpsc::Sender<()>);

    impl Handler<Ping> for Echo {
        type Result = ();
        fn handle(&mut self, Ping(pong): Ping, _: &mut Context<Self>) {
            let _ = pong.send(());
        }
    }

    /// Whether `echo`, an actor on the thread under test, answers a ping in time.
    fn answers(echo: &Addr<Echo>) -> bool {
        let (pong_tx, pong) = mpsc::channel();
        echo.do_send(Ping(pong_tx));
        pong.recv_timeout(PATIENCE).is_ok()
    }

    /// Subtask 0 of node `name`, writing to `log`, the only participant of its run.
    fn context(log: &Log, name: &str, fatal: Arc<Fatal>) -> SubtaskContext {
        let names = vec![name.to_owned()];
        let supervisor =
            Supervisor::new(SupervisionSpec::default(), Instant::now(), vec![Vec::new()], vec![true], names);
        SubtaskContext {
            name: name.into(),
            node: name.into(),
            subtask: 0,
            faults: Vec::new(),
            participant: 0,
            writer: Writer::start(log.clone()),
            log: log.clone(),
            counters: Arc::default(),
            fatal,
            supervisor: Arc::new(supervisor),
        }
    }

    fn task_config(sink: bool) -> TaskConfig {
        TaskConfig { inputs: 1, mode: AlignmentMode::ExactlyOnce, sink, mutations: Default::default() }
    }

    fn not_restarted() -> BuildBody {
        std::sync::Arc::new(|_: &Log| Err("not restarted in this test".into()))
    }

    /// Sink subtask 0 with one input, restored at checkpoint `c` whose staged output is not
    /// committed yet: its first effect is the repair commit through `c`.
    fn restored_sink(log: &Log, c: CheckpointId, sink: SinkWriter, fatal: Arc<Fatal>) -> TaskActor {
        let config = task_config(true);
        let restore = ParticipantRestore {
            from: Some(c),
            discard_snapshots: Vec::new(),
            sink: Some(SinkRestore { commit: Some(c), staged: vec![c], discard_staged: Vec::new() }),
        };
        let outputs = route::Outputs::new(&[], c, Vec::new(), (false, 0), Default::default());
        let driver =
            Subtask::new(0, Task::restore(config, &restore, &[0]), config, (&[0], vec![false], c), outputs);
        TaskActor::new(context(log, "out", fatal), driver, Body::Sink(sink), not_restarted())
    }

    /// Output staged in `log` under checkpoint 1, and a CSV sink over `destination` restored
    /// from it (so its first action is the repair commit), started and wired on a new actor
    /// thread; what it tells the coordinator goes nowhere.
    fn started_sink(log: &Log, destination: Destination) -> (SystemRunner, Arbiter, Arc<Fatal>) {
        let c1 = CheckpointId(1);
        log.write_now(&[WriteOp::Stage { participant: 0, checkpoint: c1, bytes: b"a,1\n".to_vec() }])
            .unwrap();
        let format = OutputFormat { encoding: FileFormat::Csv, float_precision: None };
        let sink = SinkWriter::new(format, destination, CommitRecord::default());
        let fatal = Arc::new(Fatal::default());
        fatal.set_stop_hook(|| {});
        let actor = restored_sink(log, c1, sink, fatal.clone());
        let system = System::new();
        let arbiter = Arbiter::new();
        let sink = TaskActor::start_in_arbiter(&arbiter.handle(), move |_| actor);
        sink.do_send(wired(Vec::new()));
        (system, arbiter, fatal)
    }

    // While a sink's commit waits on its output (a slow disk, a full pipe), another actor on
    // the sink's thread still answers; the commit then completes, record and all.
    #[test]
    fn a_slow_commit_does_not_hold_up_the_sinks_thread() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path(), 16 << 20).unwrap();
        let (started_tx, started) = mpsc::channel();
        let (release, release_rx) = mpsc::channel();
        let printed = std::sync::Arc::default();
        let held =
            Held { started: started_tx, release: release_rx, printed: std::sync::Arc::clone(&printed) };
        let (_system, arbiter, fatal) = started_sink(&log, Destination::Stream(Box::new(held)));
        let echo = Echo::start_in_arbiter(&arbiter.handle(), |_| Echo);
        started.recv_timeout(PATIENCE).expect("the repair commit prints");
        let answered = answers(&echo);
        drop(release);
        assert!(answered, "the sink's thread waited for its commit");

        let deadline = Instant::now() + PATIENCE;
        let committed = CommitRecord { through: 1, file_len: 4 };
        while log.read_commit(0).unwrap() != Some(committed) {
            assert!(Instant::now() < deadline, "the commit record was never written");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(*printed.lock().unwrap(), b"a,1\n");
        assert!(log.read_staged(0, CheckpointId(0), CheckpointId(1)).unwrap().is_empty());
        assert!(!fatal.failed());
        arbiter.stop();
        arbiter.join().unwrap();
    }

    /// An operator that does nothing with its input and whose state's every encoding (a
    /// snapshot, or a capture's, wherever it runs) is `encode()`.
    struct Encodes(std::sync::Arc<dyn Fn() -> Vec<u8> + Send + Sync>);

    impl Operator for Encodes {
        fn output_schema(&self) -> crate::batch::SchemaRef {
            crate::pipeline::spec::sensors_schema()
        }

        fn process(&mut self, _: usize, _: &Batch, _: &mut Vec<Batch>) -> Result<(), OperatorError> {
            Ok(())
        }

        fn on_input_end(&mut self, _: usize, _: &mut Vec<Batch>) -> Result<(), OperatorError> {
            Ok(())
        }

        fn snapshot(&self) -> Vec<u8> {
            (self.0)()
        }

        fn capture(&self) -> Capture {
            let encode = self.0.clone();
            Box::new(move || encode())
        }

        fn restore(&mut self, _: &[u8]) -> Result<(), OperatorError> {
            Ok(())
        }
    }

    /// A one-input transform subtask running `op`, with nothing restored.
    fn fresh_transform(cx: SubtaskContext, op: Encodes, build: BuildBody) -> TaskActor {
        let config = task_config(false);
        let c0 = CheckpointId(0);
        let outputs = route::Outputs::new(&[], c0, Vec::new(), (false, 0), Default::default());
        let driver = Subtask::new(0, Task::new(config), config, (&[0], vec![false], c0), outputs);
        TaskActor::new(cx, driver, Body::Operator(Box::new(op)), build)
    }

    /// Takes credit and replay requests, and drops them.
    struct Upstream0;

    impl Actor for Upstream0 {
        type Context = Context<Self>;
    }

    impl Handler<Credit> for Upstream0 {
        type Result = ();
        fn handle(&mut self, _: Credit, _: &mut Context<Self>) {}
    }

    impl Handler<Resume> for Upstream0 {
        type Result = ();
        fn handle(&mut self, _: Resume, _: &mut Context<Self>) {}
    }

    // While a transform's snapshot is being encoded (a large state), another actor on the
    // transform's thread still answers: the thread only captured the state. The snapshot
    // then becomes durable with the state as encoded.
    #[test]
    fn a_slow_snapshot_encoding_does_not_hold_up_the_subtasks_thread() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path(), 16 << 20).unwrap();
        let (started_tx, started) = mpsc::channel();
        let (release, release_rx) = mpsc::channel::<()>();
        // The state is one byte, 7; its encoding says it started, then waits until the test
        // lets it through (or drops its end of `release`).
        let (started_tx, release_rx) = (std::sync::Mutex::new(started_tx), std::sync::Mutex::new(release_rx));
        let op = Encodes(std::sync::Arc::new(move || {
            let _ = started_tx.lock().unwrap().send(());
            let _ = release_rx.lock().unwrap().recv();
            vec![7]
        }));
        let fatal = Arc::new(Fatal::default());
        fatal.set_stop_hook(|| {});
        let cx = context(&log, "windows", fatal.clone());
        let actor = fresh_transform(cx, op, not_restarted());
        let _system = System::new();
        let arbiter = Arbiter::new();
        let up = Upstream0::start_in_arbiter(&arbiter.handle(), |_| Upstream0);
        let task = TaskActor::start_in_arbiter(&arbiter.handle(), move |_| actor);
        let echo = Echo::start_in_arbiter(&arbiter.handle(), |_| Echo);
        task.do_send(wired(vec![Upstream {
            to: To::Fixed(up.clone().recipient()),
            resume: To::Fixed(up.recipient()),
            output: 0,
        }]));
        let c1 = CheckpointId(1);
        task.do_send(Deliver { input: 0, epoch: 0, grant: 0, item: route::Item::Barrier(c1) });
        started.recv_timeout(PATIENCE).expect("the snapshot is encoded");
        let answered = answers(&echo);
        drop(release);
        assert!(answered, "the subtask's thread waited for its snapshot's encoding");

        let deadline = Instant::now() + PATIENCE;
        let record = loop {
            if let Ok(record) = log.read_snapshot(0, c1) {
                break record;
            }
            assert!(Instant::now() < deadline, "the snapshot record was never written");
            std::thread::sleep(Duration::from_millis(1));
        };
        assert_eq!(record.positions, vec![0]);
        assert_eq!(check_record(&record, 1, 0), Ok(TaskState { ended: vec![false], operator: vec![7] }));
        assert!(!fatal.failed());
        arbiter.stop();
        arbiter.join().unwrap();
    }

    // A panic while the writer thread encodes a snapshot is the subtask's failure, as a panic
    // in operator code on its own thread is: it restarts (here its rebuild is refused, which
    // stops the attempt), nothing is written for that checkpoint, and the writer goes on.
    #[test]
    fn a_panic_encoding_a_snapshot_restarts_the_subtask_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path(), 16 << 20).unwrap();
        let fatal = Arc::new(Fatal::default());
        fatal.set_stop_hook(|| {});
        let cx = context(&log, "windows", fatal.clone());
        let writer = cx.writer.clone();
        let (rebuilt_tx, rebuilt) = mpsc::channel();
        let rebuilt_tx = std::sync::Mutex::new(rebuilt_tx);
        let build: BuildBody = std::sync::Arc::new(move |_: &Log| {
            let _ = rebuilt_tx.lock().unwrap().send(());
            Err("not restarted in this test".into())
        });
        let op = Encodes(std::sync::Arc::new(|| panic!("this state cannot be encoded")));
        let actor = fresh_transform(cx, op, build);
        let _system = System::new();
        let arbiter = Arbiter::new();
        let up = Upstream0::start_in_arbiter(&arbiter.handle(), |_| Upstream0);
        let task = TaskActor::start_in_arbiter(&arbiter.handle(), move |_| actor);
        task.do_send(wired(vec![Upstream {
            to: To::Fixed(up.clone().recipient()),
            resume: To::Fixed(up.recipient()),
            output: 0,
        }]));
        let c1 = CheckpointId(1);
        task.do_send(Deliver { input: 0, epoch: 0, grant: 0, item: route::Item::Barrier(c1) });
        rebuilt.recv_timeout(PATIENCE).expect("the subtask restarts after the panic");
        let deadline = Instant::now() + PATIENCE;
        while !fatal.failed() {
            assert!(Instant::now() < deadline, "the refused rebuild never stopped the attempt");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(
            matches!(fatal.take(), Some(Failure::Healable { reason: FailureReason::RestoreFailed, .. })),
            "the attempt stops because the rebuild was refused"
        );
        assert!(log.read_snapshot(0, c1).is_err(), "nothing is written for the checkpoint");
        let (done_tx, done) = mpsc::channel();
        writer.submit(Vec::new(), Box::new(move |r| done_tx.send(r.is_ok()).unwrap()));
        assert_eq!(done.recv_timeout(PATIENCE), Ok(true), "the writer thread survived the panic");
        arbiter.stop();
        arbiter.join().unwrap();
    }

    fn state() -> TaskState {
        TaskState { ended: vec![true, false, true], operator: vec![1, 2, 3, 200] }
    }

    #[test]
    fn task_state_round_trips_and_refuses_other_encodings() {
        let bytes = state().encode();
        assert_eq!(TaskState::decode(&bytes, 3), Ok(state()));
        assert_eq!(
            TaskState::decode(&bytes, 2),
            Err("snapshot has end flags for 3 inputs, the pipeline 2".into())
        );
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(TaskState::decode(&longer, 3), Err("task state: 1 trailing bytes".into()));
        // The length 3 of `ended` written in two bytes: postcard reads it, weir never writes it.
        let mut overlong = bytes.clone();
        overlong.splice(0..1, [0x83, 0x00]);
        assert_eq!(postcard::from_bytes::<TaskState>(&overlong).unwrap(), state());
        assert_eq!(
            TaskState::decode(&overlong, 3),
            Err("task state: not in canonical form (10 bytes, 9 as written by weir)".into())
        );
    }

    // Every bit flipped in turn and every cut: refused, or re-encodes to the same bytes.
    #[test]
    fn damaged_task_states_are_refused_or_canonical() {
        let bytes = state().encode();
        let mut damaged = bytes.clone();
        for bit in 0..bytes.len() * 8 {
            damaged[bit / 8] ^= 1 << (bit % 8);
            if let Ok(decoded) = TaskState::decode(&damaged, 3) {
                assert_eq!(decoded.encode(), damaged, "bit {bit}");
            }
            damaged[bit / 8] ^= 1 << (bit % 8);
        }
        for len in 0..bytes.len() {
            assert!(TaskState::decode(&bytes[..len], 3).is_err(), "cut at {len}");
        }
    }

    #[test]
    fn a_task_record_must_fit_the_topology() {
        let record = SnapshotRecord { positions: vec![4, 0, 9], out_seqs: vec![7], state: state().encode() };
        assert_eq!(check_record(&record, 3, 1), Ok(state()));
        let error = |r: &SnapshotRecord, inputs, outputs| check_record(r, inputs, outputs).unwrap_err();
        assert_eq!(error(&record, 3, 2), "snapshot has sequence numbers for 1 outputs, the pipeline 2");
        assert_eq!(error(&record, 2, 1), "snapshot has positions for 3 inputs, the pipeline 2");
        let ended_early = SnapshotRecord { positions: vec![0, 0, 9], ..record.clone() };
        assert_eq!(error(&ended_early, 3, 1), "input 0 ended at position 0");
        let short_state =
            SnapshotRecord { state: TaskState { ended: vec![true], operator: vec![] }.encode(), ..record };
        assert_eq!(error(&short_state, 3, 1), "snapshot has end flags for 1 inputs, the pipeline 3");
    }

    // An output that cannot be written stops the run with one line naming the sink and the
    // file, as when the append ran on the sink's own thread; no commit record is written.
    #[test]
    fn an_error_appending_the_output_is_fatal_and_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(&dir.path().join("data"), 16 << 20).unwrap();
        let path = dir.path().join("out.csv");
        std::fs::write(&path, "").unwrap();
        // Open for reading only: the append's first step (cutting the file back) fails.
        let destination = Destination::File { path: path.clone(), file: File::open(&path).unwrap() };
        let (_system, arbiter, fatal) = started_sink(&log, destination);
        let deadline = Instant::now() + PATIENCE;
        while !fatal.failed() {
            assert!(Instant::now() < deadline, "the failed append was not reported");
            std::thread::sleep(Duration::from_millis(1));
        }
        let Some(crate::actors::Failure::Error(message)) = fatal.take() else { panic!("not a fatal error") };
        let expected = format!("out: writing {}: Invalid argument (os error 22)", path.display());
        assert_eq!(message, expected);
        arbiter.stop();
        arbiter.join().unwrap();
        assert_eq!(log.read_commit(0).unwrap(), None);
    }

    #[test]
    fn a_sink_snapshot_with_operator_state_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path(), 1 << 20).unwrap();
        let format = OutputFormat { encoding: FileFormat::Csv, float_precision: None };
        let build: BuildBody = std::sync::Arc::new(move |_: &Log| {
            SinkWriter::open(&SinkSpec::Stdout { format }, CommitRecord::default()).map(Body::Sink)
        });
        let record = |operator: Vec<u8>| SnapshotRecord {
            positions: vec![3],
            out_seqs: vec![],
            state: TaskState { ended: vec![false], operator }.encode(),
        };
        let restored = Restored::from_record("out", Some(record(vec![])), (1, 0), &build, &log).unwrap();
        assert_eq!(restored.positions, vec![3]);
        let e = Restored::from_record("out", Some(record(vec![1])), (1, 0), &build, &log).err().unwrap();
        assert_eq!(e, "out: snapshot cannot be decoded: a sink's snapshot holds 1 bytes of operator state");
        let e = Restored::from_record("out", Some(record(vec![])), (1, 1), &build, &log).err().unwrap();
        assert_eq!(
            e,
            "out: snapshot cannot be decoded: snapshot has sequence numbers for 0 outputs, the pipeline 1"
        );
    }

    #[test]
    fn a_symlinked_output_is_refused_at_open_unless_allowed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target.csv");
        std::fs::write(&target, "theirs\n").unwrap();
        let link = dir.path().join("out.csv");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert_eq!(
            open_output(&link, false, 0o644).unwrap_err(),
            format!(
                "cannot open {}: it is a symbolic link (set allow_symlink = true to write through it)",
                link.display()
            )
        );
        // A dangling link is not followed to create its target either.
        std::fs::remove_file(&target).unwrap();
        assert!(open_output(&link, false, 0o644).is_err());
        assert!(!target.exists());
        assert!(open_output(&link, true, 0o644).is_ok());
        assert!(target.exists());
    }

    #[test]
    fn a_new_output_gets_exactly_its_mode_and_an_old_one_keeps_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/out.csv");
        let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o7777;
        open_output(&path, false, 0o664).unwrap();
        assert_eq!(mode(&path), 0o664);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        open_output(&path, false, 0o644).unwrap();
        assert_eq!(mode(&path), 0o600);
    }
}
