//! The supervisor (DESIGN.md §5): decides how a failure is healed and keeps the record.
//!
//! A subtask that catches a panic in its operator (or an injected fault) asks
//! [`Supervisor::on_failure`]. With local recovery and the `one_for_one` or `rest_for_one`
//! strategy, and while the operator-level restart intensity allows, the answer is a local
//! restart after a backoff: the subtask (and, for `rest_for_one`, every subtask downstream of
//! it) restores its own snapshot and its upstream replays. Otherwise the failure escalates to
//! the next level: a global rollback of the pipeline, which has an intensity of its own; past
//! that the run stops with one clear line (the level after that, failing over to a peer
//! agent, comes with replication).
//!
//! The supervisor is shared by every actor thread and the runner, so its state sits behind
//! one mutex (from `crate::sync`, so loom can check it).

use std::time::{Duration, Instant};

use actix::prelude::*;
use serde::Serialize;

use crate::actors::shared::FailureReason;
use crate::pipeline::spec::{RecoveryStrategy, RestartStrategy, SupervisionSpec};
use crate::protocol::ParticipantId;
use crate::sync::Mutex;

/// One restart by the supervisor, as the run report shows it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct RestartReport {
    /// The node whose subtask failed.
    pub node: String,
    /// The subtask.
    pub subtask: usize,
    /// Why (the report says [`FailureReason::name`]: `panic`, `write_error`, ...).
    pub reason: FailureReason,
    /// How it was healed: `local` (the restarted subtasks restored their own snapshots and
    /// their upstream replayed) or `global` (every subtask restored the last completed
    /// checkpoint).
    pub recovery: String,
    /// Every subtask restarted (`node/subtask`): one for `one_for_one`, the failed one and
    /// those downstream for `rest_for_one`, all for a global rollback.
    pub restarted: Vec<String>,
    /// The panic message.
    pub message: String,
    /// When the failure happened, in milliseconds since the run started.
    pub at_ms: u64,
    /// From the failure until the restarted subtasks were restored and running again
    /// (backoff included).
    pub duration_ms: u64,
    /// The checkpoint the restart restored (`null`: from the beginning).
    pub restored_from: Option<u64>,
    /// From the failure until the failed subtask had again received everything it had
    /// received before failing (replay done; `null` if the run ended first).
    pub caught_up_ms: Option<u64>,
    /// A failover: the epoch its standby was granted (`null` for a restart).
    pub epoch: Option<u32>,
    /// From the last batch the failed subtask sent to the first new batch after the failure:
    /// one its promoted standby sent, or, after a local restart, one above what it had sent
    /// before (`null`: a global rollback, a subtask without outputs, or the run ended first).
    pub output_gap_ms: Option<u64>,
    /// A failover: from the failure until a new standby had a state and could take over
    /// (`null` for a restart, or if the run ended first).
    pub reprotected_ms: Option<u64>,
}

/// Supervisor to a subtask: restart now (the `rest_for_one` strategy restarts what is
/// downstream of a failed subtask).
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct Restart {
    /// The failed subtask (`node/subtask`).
    pub failed: String,
    /// When it failed.
    pub at: Instant,
    /// How long to wait before restoring.
    pub backoff: Duration,
}

/// How a failure is healed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Restart these subtasks (the failed one first) and recover them locally, after the
    /// backoff.
    Local {
        /// The subtasks.
        restart: Vec<ParticipantId>,
        /// The wait before restoring.
        backoff: Duration,
    },
    /// Roll the whole pipeline back (the runner does it, within its own intensity).
    Global,
}

#[derive(Default)]
struct Ledger {
    local: Vec<Instant>,
    global: Vec<Instant>,
    reports: Vec<RestartReport>,
    /// Per failure: the subtask, when, its input positions then, and when it caught up.
    catch_up: Vec<CatchUp>,
}

/// How far a failed subtask had got, and when it got there again.
#[derive(Clone, Debug)]
pub struct CatchUp {
    /// The failed subtask.
    pub participant: ParticipantId,
    /// When it failed.
    pub at: Instant,
    /// Its highest sequence number per input when it failed.
    pub positions: Vec<u64>,
    /// When it had them again.
    pub done: Option<Instant>,
}

/// The run's supervisor.
pub struct Supervisor {
    spec: SupervisionSpec,
    started: Instant,
    /// Per participant, the transform and sink subtasks downstream of it (transitively).
    downstream: Vec<Vec<ParticipantId>>,
    /// Per participant, whether it can restart alone (transforms and sinks; sources are
    /// restarted by a global rollback).
    local: Vec<bool>,
    /// Per participant, `node/subtask`.
    names: Vec<String>,
    ledger: Mutex<Ledger>,
    members: Mutex<Vec<Option<crate::actors::To<Restart>>>>,
    /// `key_operator = "auto"` in the current attempt, with its subtasks' counters.
    chooser: Mutex<Option<(crate::pipeline::keyop::Chooser, Vec<crate::sync::Arc<crate::actors::Counters>>)>>,
    /// Snapshot bytes restored per millisecond, as this run's local restarts measured it.
    restore_rate: Mutex<f64>,
}

impl Supervisor {
    /// A supervisor for a pipeline whose participants have these downstream sets and
    /// local-restart abilities.
    pub fn new(
        spec: SupervisionSpec,
        started: Instant,
        downstream: Vec<Vec<ParticipantId>>,
        local: Vec<bool>,
        names: Vec<String>,
    ) -> Supervisor {
        Supervisor {
            spec,
            started,
            downstream,
            local,
            names,
            ledger: Mutex::new(Ledger::default()),
            members: Mutex::new(Vec::new()),
            chooser: Mutex::new(None),
            restore_rate: Mutex::new(crate::pipeline::keyop::PRIOR_RESTORE_BYTES_PER_MS),
        }
    }

    /// The subtasks of the current attempt that can receive `Restart`, by participant.
    pub fn set_members(&self, members: Vec<Option<crate::actors::To<Restart>>>) {
        *self.members.lock().expect("supervisor members") = members;
    }

    /// `key_operator = "auto"` in the current attempt (none: not asked for), over subtasks
    /// counted by `counters`.
    pub fn set_chooser(
        &self,
        chooser: Option<crate::pipeline::keyop::Chooser>,
        counters: Vec<crate::sync::Arc<crate::actors::Counters>>,
    ) {
        *self.chooser.lock().expect("supervisor chooser") = chooser.map(|c| (c, counters));
    }

    /// A transform took a snapshot: with `key_operator = "auto"`, move the standby if another
    /// transform's estimated recovery is now well above its current one's.
    pub fn reevaluate_key_operator(&self) {
        let rate = self.restore_rate();
        if let Some((chooser, counters)) = self.chooser.lock().expect("supervisor chooser").as_mut() {
            chooser.reevaluate(counters, rate);
        }
    }

    /// With `key_operator = "auto"`, the node whose subtasks have the standby now.
    pub fn key_operator(&self) -> Option<String> {
        self.chooser.lock().expect("supervisor chooser").as_ref().map(|(c, _)| c.current().to_owned())
    }

    /// A local restart restored `bytes` of snapshot in `ms`: the restore rate estimates use.
    pub fn note_restore(&self, bytes: usize, ms: f64) {
        if bytes > 0 && ms > 0.0 {
            *self.restore_rate.lock().expect("supervisor restore rate") = bytes as f64 / ms;
        }
    }

    /// Snapshot bytes restored per millisecond (measured, or the prior).
    pub fn restore_rate(&self) -> f64 {
        *self.restore_rate.lock().expect("supervisor restore rate")
    }

    /// Participant `p` failed at `at`: how is it healed? A local decision is counted in the
    /// operator-level intensity.
    pub fn on_failure(&self, p: ParticipantId, at: Instant) -> Decision {
        if self.spec.recovery == RecoveryStrategy::Global
            || self.spec.strategy == RestartStrategy::OneForAll
            || !self.local[p]
        {
            return Decision::Global;
        }
        let mut ledger = self.ledger.lock().expect("supervisor ledger");
        let Some(n) = admit(&mut ledger.local, &self.spec, at) else {
            tracing::warn!(
                "supervision: {} local restarts within {} ms, escalating to a global rollback",
                self.spec.max_restarts,
                self.spec.within_ms
            );
            return Decision::Global;
        };
        let mut restart = vec![p];
        if self.spec.strategy == RestartStrategy::RestForOne {
            restart.extend(self.downstream[p].iter().copied());
        }
        Decision::Local { restart, backoff: backoff(&self.spec, n, at) }
    }

    /// Send `Restart` to the subtasks of a `rest_for_one` decision other than the failed one.
    pub fn restart_others(&self, restart: &[ParticipantId], message: Restart) {
        let members = self.members.lock().expect("supervisor members");
        for &p in restart.iter().skip(1) {
            if let Some(Some(to)) = members.get(p) {
                to.do_send(message.clone());
            }
        }
    }

    /// A global rollback for a failure at `at`: the backoff before it, or `None` when the
    /// pipeline-level intensity is exceeded (the run stops).
    pub fn admit_global(&self, at: Instant) -> Option<Duration> {
        let mut ledger = self.ledger.lock().expect("supervisor ledger");
        let n = admit(&mut ledger.global, &self.spec, at)?;
        Some(backoff(&self.spec, n, at))
    }

    /// Global restarts counted in the current window (for the escalation message).
    pub fn recent_global(&self, at: Instant) -> usize {
        let ledger = self.ledger.lock().expect("supervisor ledger");
        let window = Duration::from_millis(self.spec.within_ms);
        ledger.global.iter().filter(|&&t| at.duration_since(t) < window).count()
    }

    /// Participant `p` as `node/subtask`.
    pub fn name(&self, p: ParticipantId) -> &str {
        &self.names[p]
    }

    /// Milliseconds since the run started.
    pub fn since_start(&self, at: Instant) -> u64 {
        at.duration_since(self.started).as_millis() as u64
    }

    /// Participant `p` failed at `at` with these input positions: its catch-up is measured.
    pub fn note_failure(&self, p: ParticipantId, at: Instant, positions: Vec<u64>) {
        let catch_up = CatchUp { participant: p, at, positions, done: None };
        self.ledger.lock().expect("supervisor ledger").catch_up.push(catch_up);
    }

    /// The input positions participant `p` must reach again, if it is catching up.
    pub fn catch_up_target(&self, p: ParticipantId) -> Option<Vec<u64>> {
        let ledger = self.ledger.lock().expect("supervisor ledger");
        ledger
            .catch_up
            .iter()
            .rev()
            .find(|c| c.participant == p && c.done.is_none())
            .map(|c| c.positions.clone())
    }

    /// Participant `p` reached its positions of the failure again.
    pub fn caught_up(&self, p: ParticipantId, now: Instant) {
        let mut ledger = self.ledger.lock().expect("supervisor ledger");
        if let Some(c) = ledger.catch_up.iter_mut().rev().find(|c| c.participant == p && c.done.is_none()) {
            c.done = Some(now);
        }
    }

    /// Record a finished restart.
    pub fn record(&self, report: RestartReport) {
        self.ledger.lock().expect("supervisor ledger").reports.push(report);
    }

    /// Amend the report of participant `p`'s failure at `at_ms` (a failover's figures come
    /// after the promotion).
    pub fn amend(&self, p: ParticipantId, at_ms: u64, change: impl FnOnce(&mut RestartReport)) {
        let name = &self.names[p];
        let mut ledger = self.ledger.lock().expect("supervisor ledger");
        let found = ledger
            .reports
            .iter_mut()
            .rev()
            .find(|r| r.at_ms == at_ms && &format!("{}/{}", r.node, r.subtask) == name);
        if let Some(report) = found {
            change(report);
        }
    }

    /// Every restart so far, in the order of their failures.
    pub fn reports(&self) -> Vec<RestartReport> {
        let ledger = self.ledger.lock().expect("supervisor ledger");
        let mut reports = ledger.reports.clone();
        for r in &mut reports {
            let done = ledger.catch_up.iter().find(|c| {
                self.names[c.participant] == format!("{}/{}", r.node, r.subtask)
                    && self.since_start(c.at) == r.at_ms
            });
            r.caught_up_ms =
                done.and_then(|c| c.done.map(|d| d.saturating_duration_since(c.at).as_millis() as u64));
        }
        reports.sort_by_key(|r| r.at_ms);
        reports
    }
}

/// Count a restart at `at` in `window` if the intensity allows: the restart's number within
/// the window (1-based), or `None`. Restarts older than `within_ms` no longer count (the
/// healthy period resets the count).
fn admit(window: &mut Vec<Instant>, spec: &SupervisionSpec, at: Instant) -> Option<usize> {
    let within = Duration::from_millis(spec.within_ms);
    window.retain(|&t| at.saturating_duration_since(t) < within);
    if window.len() as u32 >= spec.max_restarts {
        return None;
    }
    window.push(at);
    Some(window.len())
}

/// Exponential backoff before the `n`-th restart in the window (1-based), plus up to 25 %
/// jitter so that agents restarting together do not retry in step.
fn backoff(spec: &SupervisionSpec, n: usize, at: Instant) -> Duration {
    let base = spec.backoff_initial_ms.saturating_mul(1 << (n - 1).min(20)).min(spec.backoff_max_ms);
    // Jitter from the clock and the process id: supervision is shell code, where time is allowed.
    let noise = (u64::from(at.elapsed().subsec_nanos()) ^ u64::from(std::process::id())) % 1000;
    Duration::from_millis(base + base * noise / 4000)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn supervisor(strategy: RestartStrategy, max_restarts: u32) -> Supervisor {
        let spec = SupervisionSpec { strategy, max_restarts, ..SupervisionSpec::default() };
        // 0 source -> 1 window -> 2 sink
        let names = vec!["gen/0".into(), "window/0".into(), "out/0".into()];
        Supervisor::new(
            spec,
            Instant::now(),
            vec![vec![1, 2], vec![2], vec![]],
            vec![false, true, true],
            names,
        )
    }

    #[test]
    fn one_for_one_restarts_the_failed_subtask_until_the_intensity_then_escalates() {
        let s = supervisor(RestartStrategy::OneForOne, 2);
        let at = Instant::now();
        assert!(matches!(s.on_failure(1, at), Decision::Local { ref restart, .. } if restart == &vec![1]));
        assert!(matches!(s.on_failure(1, at), Decision::Local { .. }));
        assert_eq!(s.on_failure(1, at), Decision::Global);
        assert!(s.admit_global(at).is_some());
        assert!(s.admit_global(at).is_some());
        assert_eq!(s.admit_global(at), None);
    }

    #[test]
    fn rest_for_one_restarts_everything_downstream_and_sources_roll_back_globally() {
        let s = supervisor(RestartStrategy::RestForOne, 3);
        let at = Instant::now();
        assert!(matches!(s.on_failure(1, at), Decision::Local { ref restart, .. } if restart == &vec![1, 2]));
        assert_eq!(s.on_failure(0, at), Decision::Global);
        assert_eq!(supervisor(RestartStrategy::OneForAll, 3).on_failure(1, at), Decision::Global);
    }

    #[test]
    fn restarts_older_than_the_window_no_longer_count() {
        let spec = SupervisionSpec { max_restarts: 1, within_ms: 10, ..SupervisionSpec::default() };
        let mut window = Vec::new();
        let t0 = Instant::now();
        assert_eq!(admit(&mut window, &spec, t0), Some(1));
        assert_eq!(admit(&mut window, &spec, t0 + Duration::from_millis(5)), None);
        assert_eq!(admit(&mut window, &spec, t0 + Duration::from_millis(20)), Some(1));
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use crate::sync::{Arc, thread};

    // Subtasks on different actor threads fail at once: the operator-level intensity admits
    // exactly `max_restarts` local restarts in total, the rest escalate.
    #[test]
    fn loom_concurrent_failures_admit_exactly_max_restarts_local_restarts() {
        loom::model(|| {
            let spec = SupervisionSpec { max_restarts: 2, ..SupervisionSpec::default() };
            let names = vec!["w/0".into(), "w/1".into(), "w/2".into()];
            let s = Arc::new(Supervisor::new(spec, Instant::now(), vec![vec![]; 3], vec![true; 3], names));
            let at = Instant::now();
            let threads: Vec<_> = (1..3)
                .map(|p| {
                    let s = s.clone();
                    thread::spawn(move || matches!(s.on_failure(p, at), Decision::Local { .. }))
                })
                .collect();
            let mine = matches!(s.on_failure(0, at), Decision::Local { .. });
            let local =
                threads.into_iter().map(|t| t.join().unwrap()).filter(|&l| l).count() + usize::from(mine);
            assert_eq!(local, 2);
        });
    }
}
