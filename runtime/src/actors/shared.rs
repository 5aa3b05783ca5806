//! Structures shared between threads: the actor threads (arbiters), the log writer's thread
//! and the runner. Each goes through `crate::sync`, so loom can explore its interleavings.

use crate::sync::atomic::{AtomicU64, Ordering};
use actix::System;

use crate::sync::Mutex;

/// Records counted by one subtask, read by the progress display and the run report.
#[derive(Debug, Default)]
pub struct Counters {
    /// Records received.
    pub records_in: AtomicU64,
    /// Records sent (or, for a sink, written).
    pub records_out: AtomicU64,
}

impl Counters {
    /// Records received so far.
    pub fn records_in(&self) -> u64 {
        self.records_in.load(Ordering::Relaxed)
    }
    pub(crate) fn add_in(&self, n: usize) {
        self.records_in.fetch_add(n as u64, Ordering::Relaxed);
    }
    pub(crate) fn add_out(&self, n: usize) {
        self.records_out.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// Why an attempt stopped early.
#[derive(Debug, Clone)]
pub enum Failure {
    /// An error that a restart cannot heal (storage, bad input data): the run stops.
    Error(String),
    /// Operator code panicked: the supervisor may restart.
    Panic {
        /// The node.
        node: String,
        /// The subtask.
        subtask: usize,
        /// The panic message.
        message: String,
        /// When it happened.
        at: std::time::Instant,
    },
}

/// The run's shared outcome: the first failure stops the actor system. Safe to call from any
/// thread (the log writer's callbacks run outside the actor system).
#[derive(Default)]
pub struct Fatal {
    failure: std::sync::Mutex<Option<Failure>>,
    system: std::sync::OnceLock<System>,
}

impl Fatal {
    /// Remember the actor system to stop (call once it runs).
    pub fn set_system(&self, system: System) {
        let _ = self.system.set(system);
    }

    /// Record `failure` (the first one wins) and stop the actor system.
    pub fn stop(&self, failure: Failure) {
        let mut slot = self.failure.lock().expect("failure slot");
        if slot.is_none() {
            *slot = Some(failure);
        }
        drop(slot);
        match self.system.get() {
            Some(system) => system.stop(),
            None => System::current().stop(),
        }
    }

    /// Record an error that no restart heals.
    pub fn fail(&self, error: impl std::fmt::Display) {
        self.stop(Failure::Error(error.to_string()));
    }

    /// Whether the attempt is stopping.
    pub fn failed(&self) -> bool {
        self.failure.lock().expect("failure slot").is_some()
    }

    /// The failure, if any.
    pub fn take(&self) -> Option<Failure> {
        self.failure.lock().expect("failure slot").take()
    }
}

/// The message of a caught panic.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

/// A completed checkpoint, for the run report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckpointTiming {
    /// The checkpoint.
    pub id: u64,
    /// From trigger to durable completion record.
    pub duration_ms: u64,
}

/// What the coordinator shares with the runner and the progress display.
#[derive(Default)]
pub struct CoordinatorShared {
    /// Completed checkpoints in order.
    pub completed: Mutex<Vec<CheckpointTiming>>,
    /// The latest completed checkpoint id (0 for none).
    pub last_completed: AtomicU64,
    /// Set when the run finished normally.
    pub finished: AtomicU64,
}
