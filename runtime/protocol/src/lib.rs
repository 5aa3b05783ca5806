//! The sans-IO checkpoint protocol core (see `SPEC.md` beside this file).
//!
//! Everything here is a pure, deterministic state machine: inputs arrive through `handle_*`
//! (and `on_*` for acknowledgements such as "this write is durable"), outputs are drained as
//! action values with `poll_action`. Nothing in this module sends a message, reads a clock,
//! draws a random number, spawns a thread or touches a disk; time and failures are inputs.
//! That is what lets `weir-protocol-model` drive these exact types through every interleaving,
//! and it must stay so: the crate has no dependencies (`.ci/run` checks its dependency tree),
//! and `tests/sans_io.rs` rejects clocks, threads, file and network I/O and hash maps in its
//! files.
//!
//! The parts, each a state machine of its own:
//! - [`aligner`]: barrier alignment and de-duplication on a subtask's inputs (SPEC §3).
//! - [`participant`]: the per-subtask checkpoint duties: snapshot, acknowledge only when
//!   durable, truncate on completion, and for sinks the two-phase commit (SPEC §4, §5).
//! - [`coordinator`]: trigger, collect acknowledgements, complete durably, abort, and end the
//!   run once every sink has committed the last checkpoint (SPEC §6).
//! - [`recovery`]: the global-rollback plan after a crash, and the local plan of one
//!   restarted subtask (SPEC §7, §10).
//! - [`buffer`]: the buffer queue of one output channel, for upstream replay (SPEC §10).
//! - [`replay`]: the input gate of a subtask: de-duplication, and the determinant log that
//!   makes a local recovery consume replayed input in the original order (SPEC §10).
//! - [`route`]: the output side of a subtask: sequence numbers, buffer queues, routers and
//!   the buffer budget (SPEC §10.2, §11).
//! - [`driver`]: the driver of a transform or sink subtask, which owns all of the above and
//!   the local-restart sequence; and [`driver::source`], the driver of a source subtask (its
//!   re-read for a restarted receiver). The runtime's actors and the model drive both
//!   (SPEC §11).
//! - [`storage`]: what a restart reads from durable storage, and its in-memory twin.
//! - [`lease`]: ownership of a pipeline across agents: the epoch-and-lease register
//!   (CASPaxos), the holder's self-fence and the candidate's takeover (SPEC §12).
//! - [`replication`]: shipping completed checkpoints to a peer agent, the replication modes,
//!   and the replica's restore point (SPEC §12).
//!
//! ## A checkpoint, driven by hand
//!
//! A coordinator, one source and one sink. The driver (an actor in the runtime, the model
//! checker in `protocol-model`, plain code here) feeds inputs in and carries actions out.
//!
//! ```
//! use weir_protocol::{
//!     CheckpointId,
//!     aligner::AlignmentMode,
//!     coordinator::{Coordinator, CoordinatorAction, CoordinatorConfig},
//!     participant::{Action, SourceTask, Task, TaskConfig},
//! };
//!
//! // Participants 0 (the source) and 1 (the sink); one source.
//! let mut coordinator = Coordinator::new(CoordinatorConfig::new(2, 1));
//! let mut source = SourceTask::new();
//! let mut sink: Task<&str> = Task::new(TaskConfig::sink(1, AlignmentMode::ExactlyOnce));
//!
//! // The interval timer fired: trigger checkpoint 1.
//! coordinator.handle_tick();
//! assert_eq!(coordinator.poll_action(), Some(CoordinatorAction::Trigger(CheckpointId(1))));
//! assert_eq!(coordinator.poll_action(), Some(CoordinatorAction::ArmTimeout(CheckpointId(1))));
//!
//! // The source records its position, emits a batch it read earlier, then the barrier.
//! source.handle_trigger(CheckpointId(1));
//! assert_eq!(source.poll_action(), Some(Action::Snapshot { checkpoint: CheckpointId(1), positions: vec![] }));
//! sink.handle_batch(0, 1, "batch 1");
//! sink.handle_barrier(0, CheckpointId(1));
//! assert_eq!(sink.poll_action(), Some(Action::Process { input: 0, seq: 1, batch: "batch 1" }));
//! // The sink pre-commits: it stages what it wrote under checkpoint 1 and writes its snapshot.
//! assert_eq!(sink.poll_action(), Some(Action::Snapshot { checkpoint: CheckpointId(1), positions: vec![1] }));
//!
//! // Nobody acknowledges before its snapshot is durable.
//! assert_eq!(source.poll_action(), None);
//! source.on_snapshot_durable(CheckpointId(1));
//! sink.on_snapshot_durable(CheckpointId(1));
//! assert_eq!(source.poll_action(), Some(Action::Ack(CheckpointId(1))));
//! assert_eq!(sink.poll_action(), Some(Action::Ack(CheckpointId(1))));
//! coordinator.handle_ack(0, 0, CheckpointId(1));
//! coordinator.handle_ack(1, 0, CheckpointId(1));
//!
//! // Complete only once the completion record is durable; then the sink commits.
//! assert_eq!(coordinator.poll_action(), Some(CoordinatorAction::PersistCompletion(CheckpointId(1))));
//! coordinator.on_completion_durable(CheckpointId(1));
//! assert_eq!(coordinator.poll_action(), Some(CoordinatorAction::NotifyComplete(CheckpointId(1))));
//! sink.handle_checkpoint_complete(CheckpointId(1));
//! assert_eq!(sink.poll_action(), Some(Action::Commit(CheckpointId(1))));
//! ```
#![forbid(unsafe_code)]

pub mod aligner;
pub mod buffer;
pub mod coordinator;
pub mod driver;
pub mod lease;
pub mod participant;
pub mod recovery;
pub mod replay;
pub mod replication;
pub mod route;
pub mod storage;

use std::fmt;

/// Identifies one checkpoint. Ids start at 1 and increase; 0 never names a checkpoint.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct CheckpointId(pub u64);

impl CheckpointId {
    /// The id after this one.
    pub fn next(self) -> CheckpointId {
        CheckpointId(self.0 + 1)
    }
}

impl fmt::Debug for CheckpointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "c{}", self.0)
    }
}

impl fmt::Display for CheckpointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "checkpoint {}", self.0)
    }
}

/// The sequence number of a batch on one channel: 1, 2, 3, ... (0 means "nothing yet").
pub type Seq = u64;

/// Identifies a participant of the checkpoint protocol (a source, transform or sink subtask)
/// to the coordinator: an index into the pipeline's participant list.
pub type ParticipantId = usize;

/// A deliberately broken variant of the protocol. Only `weir-protocol-model` switches these on,
/// to prove that its checker finds each one (SPEC §9). Without the `mutants` feature
/// [`Mutations::has`] is a constant `false` and the knobs cost nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mutant {
    /// Exactly-once alignment does not hold back input after its barrier.
    NoAlignment,
    /// A participant acknowledges a checkpoint before its snapshot is durable.
    AckBeforeDurable,
    /// A sink commits staged output when it pre-commits, before the checkpoint completes.
    CommitBeforeComplete,
    /// A restored subtask forgets the last sequence number it applied on each input.
    ResetSeqOnRestore,
    /// Receivers apply a batch again when a replay delivers it a second time.
    NoDedup,
    /// A buffer queue is truncated when its sender takes a snapshot, not when the checkpoint
    /// completes.
    TruncateAtSnapshot,
    /// A locally recovered subtask consumes replayed input in arrival order instead of the
    /// logged order.
    NoDeterminants,
    /// A sender that restarts past what its (itself restarted) receiver has been sent goes on
    /// as if the receiver had it all.
    NoRestartGap,
    /// A restarted sender starts its round-robin routers from the first channel instead of
    /// where they were at its snapshot.
    RouterNotRestored,
    /// A restarted subtask forgets which of its inputs had ended.
    EndNotRestored,
    /// The coordinator ends the run when the last checkpoint completes, without waiting for
    /// the sinks to commit it.
    EndBeforeCommit,
    /// Receivers (and the coordinator) accept what a deposed primary sends under its old
    /// epoch.
    NoEpochCheck,
    /// A standby is promoted before it has applied everything its primary shipped.
    PromoteUnsynced,
    /// A standby sends what its operator outputs.
    StandbyEmits,
    /// A standby applies its primary's batches in its own order (lowest input first).
    StandbyOwnOrder,
    /// A warm standby drops the input a snapshot covers when the snapshot is shipped, before
    /// it is known durable.
    WarmDropsUncovered,
    /// A lease holder releases sink commits until its lease ends by its clock, without the
    /// grace period for clock drift.
    NoGrace,
    /// A candidate takes over as soon as it has seen the register's value, without waiting
    /// for the holder's lease (and the grace period) to run out.
    TakeoverBeforeExpiry,
    /// A `sync` pipeline completes a checkpoint before the peer has it durable.
    AsyncReportsSync,
    /// A replica takes a checkpoint as its restore point when the manifest arrives, before
    /// every part has.
    PartialManifest,
    /// An owner acts alone whenever the last value it holds says solo: also after it asked
    /// to leave solo, or proposed a value that is not solo, until a renewal records it.
    SoloUntilRenewal,
}

impl Mutant {
    /// Every mutant, in a fixed order.
    pub const ALL: [Mutant; 21] = [
        Mutant::NoAlignment,
        Mutant::AckBeforeDurable,
        Mutant::CommitBeforeComplete,
        Mutant::ResetSeqOnRestore,
        Mutant::NoDedup,
        Mutant::TruncateAtSnapshot,
        Mutant::NoDeterminants,
        Mutant::NoRestartGap,
        Mutant::RouterNotRestored,
        Mutant::EndNotRestored,
        Mutant::EndBeforeCommit,
        Mutant::NoEpochCheck,
        Mutant::PromoteUnsynced,
        Mutant::StandbyEmits,
        Mutant::StandbyOwnOrder,
        Mutant::WarmDropsUncovered,
        Mutant::NoGrace,
        Mutant::TakeoverBeforeExpiry,
        Mutant::AsyncReportsSync,
        Mutant::PartialManifest,
        Mutant::SoloUntilRenewal,
    ];

    /// The mutant's name on the command line (`weir-model check checkpoint --mutant NAME`).
    pub fn name(self) -> &'static str {
        match self {
            Mutant::NoAlignment => "no-alignment",
            Mutant::AckBeforeDurable => "ack-before-durable",
            Mutant::CommitBeforeComplete => "commit-before-complete",
            Mutant::ResetSeqOnRestore => "reset-seq-on-restore",
            Mutant::NoDedup => "no-dedup",
            Mutant::TruncateAtSnapshot => "truncate-at-snapshot",
            Mutant::NoDeterminants => "no-determinants",
            Mutant::NoRestartGap => "no-restart-gap",
            Mutant::RouterNotRestored => "router-not-restored",
            Mutant::EndNotRestored => "end-not-restored",
            Mutant::EndBeforeCommit => "end-before-commit",
            Mutant::NoEpochCheck => "no-epoch-check",
            Mutant::PromoteUnsynced => "promote-unsynced",
            Mutant::StandbyEmits => "standby-emits",
            Mutant::StandbyOwnOrder => "standby-own-order",
            Mutant::WarmDropsUncovered => "warm-drops-uncovered",
            Mutant::NoGrace => "no-grace",
            Mutant::TakeoverBeforeExpiry => "takeover-before-expiry",
            Mutant::AsyncReportsSync => "async-reports-sync",
            Mutant::PartialManifest => "partial-manifest",
            Mutant::SoloUntilRenewal => "solo-until-renewal",
        }
    }

    /// The mutant with this command-line name.
    pub fn from_name(name: &str) -> Option<Mutant> {
        Mutant::ALL.into_iter().find(|m| m.name() == name)
    }
}

/// The set of [`Mutant`]s switched on for one state machine; empty in every product build.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Mutations {
    #[cfg(feature = "mutants")]
    bits: u32,
}

impl Mutations {
    /// No mutant: the protocol as specified.
    pub const NONE: Mutations = Mutations {
        #[cfg(feature = "mutants")]
        bits: 0,
    };

    /// These mutations plus `mutant`.
    #[cfg(feature = "mutants")]
    pub fn with(self, mutant: Mutant) -> Mutations {
        Mutations { bits: self.bits | (1 << mutant as u32) }
    }

    /// Whether `mutant` is switched on.
    #[inline(always)]
    pub fn has(self, mutant: Mutant) -> bool {
        #[cfg(feature = "mutants")]
        {
            self.bits & (1 << mutant as u32) != 0
        }
        #[cfg(not(feature = "mutants"))]
        {
            let _ = mutant;
            false
        }
    }
}
