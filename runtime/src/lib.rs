//! # weir-runtime
//!
//! The runtime behind the `weir` agent. Today it holds the part everything else is built
//! on: [`protocol`], the sans-IO core of Weir's checkpoint protocol (asynchronous barrier
//! snapshots with alignment and two-phase-commit sinks), which `weir-protocol-model` checks
//! exhaustively with stateright. Actors, the LMDB log, operators and connectors are built
//! around it and carry out the actions it returns.
//!
//! ## A checkpoint, driven by hand
//!
//! A coordinator, one source and one sink. The driver (an actor in the runtime, the model
//! checker in `protocol-model`, plain code here) feeds inputs in and carries actions out.
//!
//! ```
//! use weir_runtime::protocol::{
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
//! coordinator.handle_ack(0, CheckpointId(1));
//! coordinator.handle_ack(1, CheckpointId(1));
//!
//! // Complete only once the completion record is durable; then the sink commits.
//! assert_eq!(coordinator.poll_action(), Some(CoordinatorAction::PersistCompletion(CheckpointId(1))));
//! coordinator.on_completion_durable(CheckpointId(1));
//! assert_eq!(coordinator.poll_action(), Some(CoordinatorAction::NotifyComplete(CheckpointId(1))));
//! sink.handle_checkpoint_complete(CheckpointId(1));
//! assert_eq!(sink.poll_action(), Some(Action::Commit(CheckpointId(1))));
//! ```
// Unsafe code is denied workspace-wide; the one exception is opening the LMDB environment
// (`log::Log::open`), and the protocol core forbids it outright.

#[cfg(feature = "io")]
pub mod actors;
pub mod batch;
pub mod codec;
#[cfg(feature = "io")]
pub mod connectors;
#[cfg(feature = "io")]
pub mod log;
pub mod operators;
pub mod pipeline;
pub mod protocol;
pub mod sync;
