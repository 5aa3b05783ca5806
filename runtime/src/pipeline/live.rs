//! A running pipeline seen from outside while it runs: what `weir agent` serves on
//! `/status` and `/metrics`. The runner ([`super::run::run`]) attaches each attempt's
//! counters and coordinator view here and folds them into totals when the attempt ends, so
//! the figures only grow across global rollbacks; a reader takes a [`LiveView`], a copy made
//! under one short lock (never per record: the counters are the subtasks' own atomics).

use std::time::Instant;

use serde::Serialize;

use crate::actors::shared::{CoordinatorShared, Counters};
use crate::pipeline::supervise::{RestartReport, Supervisor};
use crate::sync::atomic::Ordering;
use crate::sync::{Arc, Mutex, MutexGuard, lock};

/// Where a pipeline is in its life.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Opening its log and restoring the last completed checkpoint.
    #[default]
    Starting,
    /// Every subtask restored and running.
    Running,
    /// Rolling back to the last completed checkpoint after a failure.
    Restarting,
    /// A stop was requested: it ends at the next completed checkpoint.
    Stopping,
    /// Its input ended and all output is committed.
    Finished,
    /// It stopped at a checkpoint as requested.
    Stopped,
    /// It failed (the error says why).
    Failed,
    /// Replicated, and another agent owns it: this one keeps a copy of its log up to date
    /// and takes over when the ownership register says so.
    Replica,
}

impl Phase {
    /// Its name, as `/status` shows it.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Replica => "replica",
            Phase::Running => "running",
            Phase::Restarting => "restarting",
            Phase::Stopping => "stopping",
            Phase::Finished => "finished",
            Phase::Stopped => "stopped",
            Phase::Failed => "failed",
        }
    }
}

/// One subtask's figures, summed over the run's attempts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SubtaskView {
    /// Its node.
    pub node: String,
    /// Its index within the node.
    pub subtask: usize,
    /// `source`, `transform` or `sink`.
    pub kind: &'static str,
    /// Records received.
    pub records_in: u64,
    /// Records sent (a sink: written).
    pub records_out: u64,
    /// Records its window dropped as late (since the pipeline's state began: restored with
    /// its snapshots).
    pub late_records: u64,
    /// Bytes its buffer queues hold for local recovery now.
    pub buffer_bytes: u64,
    /// Bytes of its largest snapshot's operator state in this run.
    pub snapshot_bytes: u64,
}

/// An MQTT source subtask's connection and write-ahead log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MqttView {
    /// Its node.
    pub node: String,
    /// Connected to the broker now.
    pub connected: bool,
    /// Its subscriptions were acknowledged: what is published to its topics is kept for it.
    pub subscribed: bool,
    /// Connections lost since the pipeline started.
    pub disconnects: u64,
    /// Messages written to the WAL.
    pub received: u64,
    /// Messages the broker sent again that the WAL had (recognised by `dedup_key`).
    pub duplicates: u64,
    /// Payloads that did not decode (skipped).
    pub bad_payloads: u64,
    /// Entries in the WAL that no completed checkpoint covers yet (or not yet truncated).
    pub wal_entries: u64,
}

/// An MQTT sink's figures.
#[derive(Clone, Debug, Serialize)]
pub struct OutboxView {
    /// Its node.
    pub node: String,
    /// Connected to the broker now.
    pub connected: bool,
    /// Connections lost (or given up for want of progress) since the pipeline started.
    pub disconnects: u64,
    /// Messages sent (again after a reconnect included).
    pub published: u64,
    /// Messages the broker acknowledged.
    pub acknowledged: u64,
    /// Messages sent again after a reconnect.
    pub resent: u64,
    /// Messages dropped by `on_full`.
    pub dropped: u64,
    /// Acknowledgements with an error reason.
    pub refused: u64,
    /// Bytes of committed messages waiting in the outbox.
    pub outbox_bytes: u64,
    /// Commits with output waiting.
    pub outbox_chunks: u64,
    /// How long the oldest waiting output has waited, in milliseconds.
    pub outbox_oldest_age_ms: u64,
}

/// A copy of a pipeline's live figures.
#[derive(Clone, Debug, Serialize)]
pub struct LiveView {
    /// Where it is.
    pub phase: Phase,
    /// Per subtask, in pipeline order.
    pub subtasks: Vec<SubtaskView>,
    /// Its MQTT sources.
    pub mqtt: Vec<MqttView>,
    /// Its MQTT sinks.
    pub mqtt_sinks: Vec<OutboxView>,
    /// Bytes of its data directory's LMDB map in use (the high-water mark of its pages).
    pub lmdb_used_bytes: u64,
    /// The size of that map (`map_size_mb`).
    pub lmdb_map_bytes: u64,
    /// Checkpoints completed since it started.
    pub checkpoints_completed: u64,
    /// Checkpoints aborted since it started.
    pub checkpoints_aborted: u64,
    /// The sum of the completed checkpoints' durations (trigger to durable completion).
    pub checkpoint_duration_ms_sum: u64,
    /// The latest completed checkpoint (0: none yet).
    pub last_checkpoint: u64,
    /// How long the latest completed checkpoint took.
    pub last_checkpoint_duration_ms: u64,
    /// The checkpoint it restored when it started, if it resumed.
    pub restored_from: Option<u64>,
    /// Restarts by the supervisor, in order.
    pub restarts: Vec<RestartReport>,
    /// Since it started, in milliseconds.
    pub uptime_ms: u64,
    /// Why it failed, if it did.
    pub error: Option<String>,
}

/// The current attempt's live parts.
struct Attached {
    counters: Vec<Arc<Counters>>,
    shared: Arc<CoordinatorShared>,
}

#[derive(Default)]
struct Inner {
    phase: Phase,
    started: Option<Instant>,
    /// Per participant: node, subtask index and kind.
    names: Vec<(String, usize, &'static str)>,
    /// Per participant: records in and out of the attempts that ended.
    totals: Vec<(u64, u64)>,
    /// Per participant: late records and snapshot bytes as the last attempt that ended left
    /// them (the late count carries over in snapshots: it is not summed).
    last_gauges: Vec<(u64, u64)>,
    /// Checkpoint figures of the attempts that ended: completed, aborted, duration sum.
    ended: (u64, u64, u64),
    last: (u64, u64),
    restored_from: Option<u64>,
    /// Attempts attached so far.
    attempts: u32,
    supervisor: Option<Arc<Supervisor>>,
    attempt: Option<Attached>,
    error: Option<String>,
    mqtt: Vec<(String, Arc<crate::connectors::mqtt::Wal>)>,
    outboxes: Vec<(String, Arc<crate::connectors::mqtt_sink::Outbox>)>,
    usage: Option<std::sync::Arc<crate::log::MapUsage>>,
}

/// A pipeline's live figures, shared by its runner and its readers.
#[derive(Default)]
pub struct Live {
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live").field("phase", &self.view().phase).finish()
    }
}

impl Live {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        lock(&self.inner)
    }

    /// The run starts: its subtasks are `names` (node, index, kind) in participant order.
    pub(crate) fn begin(
        &self,
        names: Vec<(String, usize, &'static str)>,
        supervisor: Arc<Supervisor>,
        at: Instant,
    ) {
        let mut inner = self.lock();
        inner.totals = vec![(0, 0); names.len()];
        inner.names = names;
        inner.supervisor = Some(supervisor);
        inner.started = Some(at);
        if inner.phase != Phase::Stopping {
            inner.phase = Phase::Starting;
        }
    }

    /// An attempt restored `restored` and runs with these counters and coordinator view.
    pub(crate) fn attach(
        &self,
        counters: Vec<Arc<Counters>>,
        shared: Arc<CoordinatorShared>,
        restored: Option<u64>,
    ) {
        let mut inner = self.lock();
        if inner.attempts == 0 {
            inner.restored_from = restored;
        }
        inner.attempts += 1;
        inner.attempt = Some(Attached { counters, shared });
        if inner.phase != Phase::Stopping {
            inner.phase = Phase::Running;
        }
    }

    /// The attempt ended: its figures become part of the totals.
    pub(crate) fn detach(&self) {
        let mut inner = self.lock();
        let Some(attempt) = inner.attempt.take() else { return };
        for (total, c) in inner.totals.iter_mut().zip(&attempt.counters) {
            total.0 += c.records_in.load(Ordering::Relaxed);
            total.1 += c.records_out.load(Ordering::Relaxed);
        }
        inner.last_gauges = (attempt.counters.iter())
            .map(|c| (c.late_records.load(Ordering::Relaxed), c.snapshot_bytes.load(Ordering::Relaxed)))
            .collect();
        let (completed, aborted, sum) = checkpoint_figures(&attempt.shared);
        inner.ended.0 += completed;
        inner.ended.1 += aborted;
        inner.ended.2 += sum;
        if let Some(last) = last_checkpoint(&attempt.shared) {
            inner.last = last;
        }
    }

    /// Its MQTT sources' write-ahead logs, by node.
    pub(crate) fn set_mqtt(&self, wals: Vec<(String, Arc<crate::connectors::mqtt::Wal>)>) {
        self.lock().mqtt = wals;
    }

    /// The runner opened its log, whose map use this is.
    pub(crate) fn set_usage(&self, usage: std::sync::Arc<crate::log::MapUsage>) {
        self.lock().usage = Some(usage);
    }

    /// The runner started its MQTT sinks' publishers, whose outboxes these are.
    pub(crate) fn set_outboxes(&self, outboxes: Vec<(String, Arc<crate::connectors::mqtt_sink::Outbox>)>) {
        self.lock().outboxes = outboxes;
    }

    /// The runner rolls the pipeline back after a failure.
    pub(crate) fn restarting(&self) {
        let mut inner = self.lock();
        if inner.phase != Phase::Stopping {
            inner.phase = Phase::Restarting;
        }
    }

    /// Set where it is (the agent: `Stopping` when it asks it to stop; the end).
    pub fn set_phase(&self, phase: Phase) {
        self.lock().phase = phase;
    }

    /// It failed with `error`.
    pub fn fail(&self, error: String) {
        let mut inner = self.lock();
        inner.phase = Phase::Failed;
        inner.error = Some(error);
    }

    /// Its figures now.
    pub fn view(&self) -> LiveView {
        let inner = self.lock();
        let mut subtasks: Vec<SubtaskView> = (inner.names.iter().zip(&inner.totals))
            .map(|((node, subtask, kind), &(records_in, records_out))| SubtaskView {
                node: node.clone(),
                subtask: *subtask,
                kind,
                records_in,
                records_out,
                late_records: 0,
                buffer_bytes: 0,
                snapshot_bytes: 0,
            })
            .collect();
        for (view, &(late, snapshot)) in subtasks.iter_mut().zip(&inner.last_gauges) {
            (view.late_records, view.snapshot_bytes) = (late, snapshot);
        }
        let (mut completed, mut aborted, mut sum) = inner.ended;
        let mut last = inner.last;
        if let Some(attempt) = &inner.attempt {
            for (view, c) in subtasks.iter_mut().zip(&attempt.counters) {
                view.records_in += c.records_in.load(Ordering::Relaxed);
                view.records_out += c.records_out.load(Ordering::Relaxed);
                view.late_records = c.late_records.load(Ordering::Relaxed);
                view.buffer_bytes = c.buffered_bytes.load(Ordering::Relaxed);
                view.snapshot_bytes = c.snapshot_bytes.load(Ordering::Relaxed);
            }
            let (c, a, s) = checkpoint_figures(&attempt.shared);
            (completed, aborted, sum) = (completed + c, aborted + a, sum + s);
            last = last_checkpoint(&attempt.shared).unwrap_or(last);
        }
        let mqtt = (inner.mqtt.iter())
            .map(|(node, wal)| {
                let s = &wal.status;
                let released = s.released.load(Ordering::Relaxed);
                MqttView {
                    node: node.clone(),
                    connected: s.connected.load(Ordering::Relaxed),
                    subscribed: s.subscribed.load(Ordering::Relaxed),
                    disconnects: s.disconnects.load(Ordering::Relaxed),
                    received: s.received.load(Ordering::Relaxed),
                    duplicates: s.duplicates.load(Ordering::Relaxed),
                    bad_payloads: s.bad_payloads.load(Ordering::Relaxed),
                    wal_entries: wal.end().saturating_sub(released),
                }
            })
            .collect();
        let mqtt_sinks = (inner.outboxes.iter())
            .map(|(node, outbox)| {
                let s = &outbox.status;
                OutboxView {
                    node: node.clone(),
                    connected: s.connected.load(Ordering::Relaxed),
                    disconnects: s.disconnects.load(Ordering::Relaxed),
                    published: s.published.load(Ordering::Relaxed),
                    acknowledged: s.acknowledged.load(Ordering::Relaxed),
                    resent: s.resent.load(Ordering::Relaxed),
                    dropped: s.dropped.load(Ordering::Relaxed),
                    refused: s.refused.load(Ordering::Relaxed),
                    outbox_bytes: outbox.bytes(),
                    outbox_chunks: outbox.chunks() as u64,
                    outbox_oldest_age_ms: outbox.oldest_age_ms(),
                }
            })
            .collect();
        LiveView {
            phase: inner.phase,
            subtasks,
            mqtt,
            mqtt_sinks,
            lmdb_used_bytes: inner.usage.as_ref().map_or(0, |u| u.used.load(Ordering::Relaxed)),
            lmdb_map_bytes: inner.usage.as_ref().map_or(0, |u| u.size),
            checkpoints_completed: completed,
            checkpoints_aborted: aborted,
            checkpoint_duration_ms_sum: sum,
            last_checkpoint: last.0,
            last_checkpoint_duration_ms: last.1,
            restored_from: inner.restored_from,
            restarts: inner.supervisor.as_ref().map(|s| s.reports()).unwrap_or_default(),
            uptime_ms: inner.started.map_or(0, |t| t.elapsed().as_millis() as u64),
            error: inner.error.clone(),
        }
    }
}

/// Completed, aborted and the sum of the completed durations, of one attempt.
fn checkpoint_figures(shared: &CoordinatorShared) -> (u64, u64, u64) {
    let completed = lock(&shared.completed);
    let sum = completed.iter().map(|t| t.duration_ms).sum();
    (completed.len() as u64, shared.aborted.load(Ordering::Relaxed), sum)
}

/// The latest completed checkpoint of one attempt and its duration.
fn last_checkpoint(shared: &CoordinatorShared) -> Option<(u64, u64)> {
    let completed = lock(&shared.completed);
    completed.last().map(|t| (t.id, t.duration_ms))
}
