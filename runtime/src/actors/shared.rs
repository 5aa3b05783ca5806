//! Structures shared between threads: the actor threads (arbiters), the log writer's thread
//! and the runner. Each goes through `crate::sync`, so loom can explore its interleavings.
//! Here too is how a panic anywhere in an actor reaches the runner as a [`Failure`]: every
//! handler runs under [`Guarded::guard`], and a [`Watch`] on every actor and actor thread
//! catches a panic that escaped the guards.

use actix::{Actor, AsyncContext, Context, System};

use std::time::{Duration, Instant};

use crate::sync::atomic::{AtomicU64, Ordering};
use crate::sync::{Arc, Condvar, Mutex, lock};

/// Records counted by one subtask, read by the progress display and the run report.
#[derive(Debug, Default)]
pub struct Counters {
    /// Records received.
    pub records_in: AtomicU64,
    /// Records sent (or, for a sink, written).
    pub records_out: AtomicU64,
    /// Bytes of its largest snapshot's operator state (for the recovery estimate).
    pub snapshot_bytes: AtomicU64,
    /// Most records received between two of its snapshots.
    pub interval_records: AtomicU64,
    /// Records received at its last snapshot.
    at_snapshot: AtomicU64,
    /// Nanoseconds its operator spent processing batches.
    pub busy_nanos: AtomicU64,
    /// Records its operator dropped as late (a window's; restored with its snapshot).
    pub late_records: AtomicU64,
    /// Bytes its buffer queues hold for local recovery.
    pub buffered_bytes: AtomicU64,
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
    /// A snapshot was taken: the records since the one before are an interval's input.
    pub(crate) fn snapshot_taken(&self) {
        let now = self.records_in();
        let before = self.at_snapshot.swap(now, Ordering::Relaxed);
        self.interval_records.fetch_max(now.saturating_sub(before), Ordering::Relaxed);
    }
    pub(crate) fn add_busy(&self, nanos: u64) {
        self.busy_nanos.fetch_add(nanos, Ordering::Relaxed);
    }
}

/// Why a subtask (or the coordinator, or an actor thread) failed in a way a restart heals;
/// [`FailureReason::name`] is what the run report's `reason` says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureReason {
    /// Code panicked in a message handler (operator code, or an injected fault).
    Panic,
    /// A log write failed with an error a retry may not meet again.
    WriteError,
    /// A sender cannot replay what its restarted receiver needs.
    ReplayGap,
    /// Local recovery cannot reproduce the logged input order.
    ReplayDiverged,
    /// A local restart could not restore the subtask.
    RestoreFailed,
    /// Restarted because a subtask upstream failed (`rest_for_one`).
    RestForOne,
    /// An actor ended by a panic that no handler's guard caught.
    ActorDied,
    /// An actor thread (arbiter) ended by a panic while the attempt ran.
    ArbiterDied,
    /// A primary made no progress for its progress timeout; its standby took over.
    Hung,
}

impl From<&crate::protocol::driver::Escalation> for FailureReason {
    fn from(escalation: &crate::protocol::driver::Escalation) -> FailureReason {
        match escalation {
            crate::protocol::driver::Escalation::ReplayGap { .. } => FailureReason::ReplayGap,
            crate::protocol::driver::Escalation::Diverged(_) => FailureReason::ReplayDiverged,
        }
    }
}

impl FailureReason {
    /// Its name in the run report and in messages.
    pub fn name(self) -> &'static str {
        match self {
            FailureReason::Panic => "panic",
            FailureReason::WriteError => "write_error",
            FailureReason::ReplayGap => "replay_gap",
            FailureReason::ReplayDiverged => "replay_diverged",
            FailureReason::RestoreFailed => "restore_failed",
            FailureReason::RestForOne => "rest_for_one",
            FailureReason::ActorDied => "actor_died",
            FailureReason::ArbiterDied => "arbiter_died",
            FailureReason::Hung => "hung",
        }
    }
}

impl std::fmt::Display for FailureReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl serde::Serialize for FailureReason {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

/// The node a failure of the coordinator names (no pipeline node can have this name).
pub const COORDINATOR: &str = "(coordinator)";

/// The node a failure of an actor thread names; its subtask is the thread's index.
pub const ARBITER: &str = "(arbiter)";

/// Why an attempt stopped early.
#[derive(Debug, Clone)]
pub enum Failure {
    /// An error that a restart cannot heal (storage, bad input data): the run stops.
    Error(String),
    /// A failure a global rollback heals (within the restart intensity).
    Healable {
        /// The node ([`COORDINATOR`] for the coordinator, [`ARBITER`] for an actor thread).
        node: String,
        /// The subtask (an actor thread: its index).
        subtask: usize,
        /// Why.
        reason: FailureReason,
        /// What happened (a panic's message).
        message: String,
        /// When it happened.
        at: std::time::Instant,
    },
}

/// What stops the actor system: [`Fatal::set_system`] installs one that stops an actix
/// `System`; the loom tests install one that only counts.
type StopHook = Box<dyn Fn() + Send>;

/// The run's shared outcome: the first failure stops the actor system. Safe to call from any
/// thread (the log writer's callbacks run outside the actor system).
#[derive(Default)]
pub struct Fatal {
    failure: Mutex<Option<Failure>>,
    stop_hook: Mutex<Option<StopHook>>,
}

impl Fatal {
    /// Remember the actor system to stop (call once it runs).
    pub fn set_system(&self, system: System) {
        self.set_stop_hook(move || system.stop());
    }

    /// Install what [`Fatal::stop`] calls to stop the actor system; the first one installed
    /// stays. Without one, `stop` stops the current thread's actix system.
    pub fn set_stop_hook(&self, hook: impl Fn() + Send + 'static) {
        let mut slot = lock(&self.stop_hook);
        if slot.is_none() {
            *slot = Some(Box::new(hook));
        }
    }

    /// Record `failure` (the first one wins) and stop the actor system.
    pub fn stop(&self, failure: Failure) {
        let mut slot = lock(&self.failure);
        if slot.is_none() {
            *slot = Some(failure);
        }
        drop(slot);
        match lock(&self.stop_hook).as_ref() {
            Some(stop) => stop(),
            None => System::current().stop(),
        }
    }

    /// Record an error that no restart heals.
    pub fn fail(&self, error: impl std::fmt::Display) {
        self.stop(Failure::Error(error.to_string()));
    }

    /// Whether the attempt is stopping.
    pub fn failed(&self) -> bool {
        lock(&self.failure).is_some()
    }

    /// The failure, if any.
    pub fn take(&self) -> Option<Failure> {
        lock(&self.failure).take()
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

/// An actor whose message handlers run under [`Guarded::guard`]. A panic that escapes a
/// handler does not stop the run: tokio catches it and drops the actor, whose messages are
/// then lost, and the run waits forever for an acknowledgement or a record that never
/// comes. So every handler body runs guarded, and a panic becomes a failure the supervisor
/// heals.
pub trait Guarded: Actor {
    /// A handler panicked with `message`: hand it to the supervisor.
    fn panicked(&mut self, message: String, ctx: &mut Self::Context);

    /// Run a handler's `body`; a panic in it goes to [`Guarded::panicked`].
    fn guard(&mut self, ctx: &mut Self::Context, body: impl FnOnce(&mut Self, &mut Self::Context)) {
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body(self, ctx)));
        if let Err(payload) = caught {
            self.panicked(panic_message(&*payload), ctx);
        }
    }
}

/// Stops the attempt with a healable failure when it is dropped by a panic: tied to an actor
/// ([`Watch::attach`]) or to an actor thread, it notices what no guard caught (a panic in
/// actix, or in code outside the guarded handlers), so the run heals or stops instead of
/// waiting forever for a dead actor. A drop without a panic (the attempt ending) says nothing.
pub struct Watch {
    fatal: Arc<Fatal>,
    node: String,
    subtask: usize,
    reason: FailureReason,
    what: String,
}

impl Watch {
    /// A watch over the actor of subtask `node/subtask`.
    pub fn actor(fatal: Arc<Fatal>, node: &str, subtask: usize) -> Watch {
        let what = format!("the actor of {node}/{subtask} ended by a panic outside its guarded handlers");
        Watch { fatal, node: node.to_owned(), subtask, reason: FailureReason::ActorDied, what }
    }

    /// A watch over the coordinator's actor.
    pub fn coordinator(fatal: Arc<Fatal>) -> Watch {
        let what = "the coordinator ended by a panic outside its guarded handlers".to_owned();
        Watch { fatal, node: COORDINATOR.to_owned(), subtask: 0, reason: FailureReason::ActorDied, what }
    }

    /// A watch over actor thread (arbiter) `index`.
    pub fn thread(fatal: Arc<Fatal>, index: usize) -> Watch {
        let what = format!("actor thread {index} ended by a panic");
        Watch { fatal, node: ARBITER.to_owned(), subtask: index, reason: FailureReason::ArbiterDied, what }
    }

    /// Tie the watch to the actor of `ctx`: it lives in the actor's context, so it is dropped
    /// exactly when the actor is (a panic escaping the actor drops it while unwinding).
    pub fn attach<A: Actor<Context = Context<A>>>(self, ctx: &mut Context<A>) {
        ctx.spawn(actix::fut::wrap_future(self.forever()));
    }

    /// A future that never ends and holds the watch until it is dropped.
    pub async fn forever(self) {
        let _watch = self;
        std::future::pending::<()>().await;
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Nothing here may panic: a second panic while unwinding aborts the process.
            self.fatal.stop(Failure::Healable {
                node: std::mem::take(&mut self.node),
                subtask: self.subtask,
                reason: self.reason,
                message: std::mem::take(&mut self.what),
                at: std::time::Instant::now(),
            });
        }
    }
}

/// A completed checkpoint, for the run report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckpointTiming {
    /// The checkpoint.
    pub id: u64,
    /// From trigger to durable completion record.
    pub duration_ms: u64,
    /// When it completed (its completion record was durable).
    pub at: Option<std::time::Instant>,
}

/// What the coordinator shares with the runner and the progress display.
#[derive(Default)]
pub struct CoordinatorShared {
    /// Completed checkpoints in order.
    pub completed: Mutex<Vec<CheckpointTiming>>,
    /// The latest completed checkpoint id (0 for none).
    pub last_completed: AtomicU64,
    /// Checkpoints aborted.
    pub aborted: AtomicU64,
    /// Set when the run finished normally.
    pub finished: AtomicU64,
    /// The checkpoint a requested stop ended the run at (0 for none).
    pub stopped_at: AtomicU64,
}

/// Tells the current attempt's coordinator that a stop was requested.
type StopNotify = Box<dyn Fn() + Send>;

#[derive(Default)]
struct StopState {
    reason: Option<String>,
    notify: Option<StopNotify>,
}

/// A request to end the run early at a checkpoint (SPEC §6.7), made from any thread (the
/// signal handler's); it outlives attempts, so a stop made during a global rollback is
/// seen by the next step of the runner, and one made before an attempt's coordinator runs
/// reaches it as soon as it is attached.
#[derive(Default)]
pub struct StopRequest {
    state: Mutex<StopState>,
    changed: Condvar,
}

impl StopRequest {
    /// Ask the run to stop; `reason` says why (`SIGTERM`). True for the first request.
    pub fn request(&self, reason: &str) -> bool {
        let mut state = lock(&self.state);
        if state.reason.is_some() {
            return false;
        }
        state.reason = Some(reason.to_owned());
        // Under the lock, so that a coordinator being attached hears it exactly once.
        if let Some(notify) = &state.notify {
            notify();
        }
        self.changed.notify_all();
        true
    }

    /// Why the run was asked to stop, if it was.
    pub fn reason(&self) -> Option<String> {
        lock(&self.state).reason.clone()
    }

    /// Route requests to a running attempt's coordinator; called at once if one was made.
    pub(crate) fn attach(&self, notify: impl Fn() + Send + 'static) {
        let mut state = lock(&self.state);
        if state.reason.is_some() {
            notify();
        }
        state.notify = Some(Box::new(notify));
    }

    /// The attempt ended: its coordinator is gone.
    pub(crate) fn detach(&self) {
        lock(&self.state).notify = None;
    }

    /// Wait up to `timeout` (a backoff) for a request; true if one was made.
    pub fn wait(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = lock(&self.state);
        while state.reason.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            state =
                self.changed.wait_timeout(state, left).unwrap_or_else(std::sync::PoisonError::into_inner).0;
        }
        state.reason.is_some()
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::sync::thread;

    /// An actor for the guard and watch tests: `Boom` panics (under the guard when
    /// `guarded`), `Ping` answers; panics handed to it are counted.
    struct Probe {
        guarded: bool,
        panics: Arc<Mutex<Vec<String>>>,
    }

    impl Actor for Probe {
        type Context = Context<Self>;
    }

    impl Guarded for Probe {
        fn panicked(&mut self, message: String, _: &mut Context<Self>) {
            lock(&self.panics).push(message);
        }
    }

    #[derive(actix::Message)]
    #[rtype(result = "()")]
    struct Boom;

    #[derive(actix::Message)]
    #[rtype(result = "usize")]
    struct Ping;

    impl actix::Handler<Boom> for Probe {
        type Result = ();
        fn handle(&mut self, _: Boom, ctx: &mut Context<Self>) {
            if self.guarded {
                self.guard(ctx, |_, _| panic!("boom"));
            } else {
                panic!("boom");
            }
        }
    }

    impl actix::Handler<Ping> for Probe {
        type Result = usize;
        fn handle(&mut self, _: Ping, _: &mut Context<Self>) -> usize {
            lock(&self.panics).len()
        }
    }

    #[test]
    fn a_panic_in_a_guarded_handler_is_handed_over_and_the_actor_lives_on() {
        let panics = Arc::new(Mutex::new(Vec::new()));
        let probe = Probe { guarded: true, panics: panics.clone() };
        let answer = actix::System::new().block_on(async move {
            let addr = probe.start();
            let _ = addr.send(Boom).await;
            addr.send(Ping).await
        });
        assert_eq!(answer, Ok(1), "the actor died, or the panic was not handed over");
        assert_eq!(*lock(&panics), ["boom"]);
    }

    /// A panic that escapes a handler ends the actor; its watch stops the system with a
    /// healable failure naming the subtask. The system runs on a thread of its own, so that
    /// a watch that never fires fails the test at the deadline instead of hanging it.
    #[test]
    fn a_panic_that_escapes_an_actor_stops_the_attempt_through_its_watch() {
        let (done, outcome) = std::sync::mpsc::channel();
        thread::spawn(move || {
            let fatal = Arc::new(Fatal::default());
            let system = actix::System::new();
            system.block_on(async {
                fatal.set_system(System::current());
                let probe = Probe { guarded: false, panics: Arc::default() };
                let watch = Watch::actor(fatal.clone(), "windows", 2);
                let addr = Probe::create(move |ctx| {
                    watch.attach(ctx);
                    probe
                });
                addr.do_send(Boom);
            });
            let _ = system.run();
            let _ = done.send(fatal.take());
        });
        let failure = outcome.recv_timeout(Duration::from_secs(60)).expect("the system stopped");
        match failure {
            Some(Failure::Healable { node, subtask, reason, message, .. }) => {
                assert_eq!((node.as_str(), subtask, reason), ("windows", 2, FailureReason::ActorDied));
                assert_eq!(message, "the actor of windows/2 ended by a panic outside its guarded handlers");
            }
            other => panic!("expected a healable failure, got {other:?}"),
        }
    }

    /// A watch dropped without a panic (the attempt ending) says nothing; one dropped while
    /// its thread unwinds stops the attempt.
    #[test]
    fn a_watch_fires_only_when_a_panic_drops_it() {
        let fatal = Arc::new(Fatal::default());
        let stops = Arc::new(AtomicU64::new(0));
        let counted = stops.clone();
        fatal.set_stop_hook(move || {
            counted.fetch_add(1, Ordering::Relaxed);
        });
        drop(Watch::thread(fatal.clone(), 1));
        assert!(!fatal.failed());
        let watched = fatal.clone();
        let died = thread::spawn(move || {
            let _watch = Watch::thread(watched, 3);
            panic!("the arbiter's event loop failed");
        });
        assert!(died.join().is_err());
        assert_eq!(stops.load(Ordering::Relaxed), 1);
        match fatal.take() {
            Some(Failure::Healable { node, subtask, reason, message, .. }) => {
                assert_eq!((node.as_str(), subtask, reason), (ARBITER, 3, FailureReason::ArbiterDied));
                assert_eq!(message, "actor thread 3 ended by a panic");
            }
            other => panic!("expected a healable failure, got {other:?}"),
        }
    }

    /// The run report's `reason` values are a format: tests and tools read them.
    #[test]
    fn failure_reasons_keep_their_report_names() {
        use FailureReason::*;
        let all = [
            Panic,
            WriteError,
            ReplayGap,
            ReplayDiverged,
            RestoreFailed,
            RestForOne,
            ActorDied,
            ArbiterDied,
            Hung,
        ];
        let names: Vec<String> = all.iter().map(|r| serde_json::to_string(r).unwrap()).collect();
        assert_eq!(
            names,
            [
                "\"panic\"",
                "\"write_error\"",
                "\"replay_gap\"",
                "\"replay_diverged\"",
                "\"restore_failed\"",
                "\"rest_for_one\"",
                "\"actor_died\"",
                "\"arbiter_died\"",
                "\"hung\""
            ]
        );
        assert_eq!(RestForOne.to_string(), "rest_for_one");
    }

    #[test]
    fn stop_request_wakes_a_waiting_runner_and_is_remembered() {
        let stop = Arc::new(StopRequest::default());
        assert!(!stop.wait(Duration::ZERO));
        let requester = {
            let stop = stop.clone();
            thread::spawn(move || stop.request("SIGINT"))
        };
        // A generous deadline: returning true shows the request woke the wait.
        assert!(stop.wait(Duration::from_secs(60)));
        assert!(requester.join().unwrap());
        assert_eq!(stop.reason().as_deref(), Some("SIGINT"));
        let heard = Arc::new(crate::sync::atomic::AtomicUsize::new(0));
        let counted = heard.clone();
        stop.attach(move || {
            counted.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(heard.load(Ordering::Relaxed), 1, "attached after the request: told at once");
        stop.detach();
        assert!(!stop.request("SIGTERM"));
        assert_eq!(heard.load(Ordering::Relaxed), 1);
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use crate::sync::atomic::{AtomicBool, AtomicUsize};
    use crate::sync::{Arc, thread};

    fn message(failure: Option<Failure>) -> Option<String> {
        match failure {
            Some(Failure::Error(message)) => Some(message),
            Some(Failure::Healable { message, .. }) => Some(format!("healable: {message}")),
            None => None,
        }
    }

    /// Three threads stop the run at once: one failure is recorded, the first (a stop that
    /// begins after another returned does not win) and it never changes afterwards;
    /// everyone sees the run failed; the stop hook ran; `take` hands the failure out once.
    #[test]
    fn loom_fatal_the_first_failure_wins() {
        loom::model(|| {
            let fatal = Arc::new(Fatal::default());
            let stops = Arc::new(AtomicUsize::new(0));
            let counted = stops.clone();
            fatal.set_stop_hook(move || {
                counted.fetch_add(1, Ordering::Relaxed);
            });
            // Thread i sets returned[i] once its stop returned.
            let returned: Arc<[AtomicBool; 3]> = Arc::new(Default::default());
            let threads: Vec<_> = (0..3)
                .map(|i| {
                    let (fatal, returned) = (fatal.clone(), returned.clone());
                    thread::spawn(move || {
                        let late = returned.iter().any(|r| r.load(Ordering::Acquire));
                        fatal.stop(Failure::Error(format!("failure {i}")));
                        returned[i].store(true, Ordering::Release);
                        assert!(fatal.failed(), "thread {i}: not failed after its own stop");
                        (late, message(lock(&fatal.failure).clone()))
                    })
                })
                .collect();
            let seen: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
            assert!(fatal.failed());
            let recorded = message(fatal.take()).expect("a failure is recorded");
            for (i, (late, saw)) in seen.into_iter().enumerate() {
                assert_eq!(saw.as_deref(), Some(recorded.as_str()), "thread {i} saw another failure");
                if late {
                    assert_ne!(recorded, format!("failure {i}"), "thread {i} stopped after another and won");
                }
            }
            assert!(fatal.take().is_none(), "taken twice");
            assert!(!fatal.failed());
            assert!(stops.load(Ordering::Relaxed) >= 1, "the stop hook never ran");
        });
    }

    /// Concurrent additions from two threads add up exactly.
    #[test]
    fn loom_counters_sum_concurrent_additions() {
        loom::model(|| {
            let counters = Arc::new(Counters::default());
            let threads: Vec<_> = [1, 2]
                .into_iter()
                .map(|n| {
                    let counters = counters.clone();
                    thread::spawn(move || {
                        counters.add_in(n);
                        counters.add_out(10 * n);
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
            assert_eq!(counters.records_in(), 3);
            assert_eq!(counters.records_out.load(Ordering::Relaxed), 30);
        });
    }

    /// Two threads record completed checkpoints the way the coordinator does (push the
    /// timing, then store the id): every timing is kept, and the latest id is one of those
    /// stored.
    #[test]
    fn loom_coordinator_shared_keeps_every_completion() {
        loom::model(|| {
            let shared = Arc::new(CoordinatorShared::default());
            let threads: Vec<_> = [1, 2]
                .into_iter()
                .map(|id| {
                    let shared = shared.clone();
                    thread::spawn(move || {
                        lock(&shared.completed).push(CheckpointTiming { id, duration_ms: 10 * id, at: None });
                        shared.last_completed.store(id, Ordering::Relaxed);
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
            let mut completed = lock(&shared.completed).clone();
            completed.sort_by_key(|c| c.id);
            assert_eq!(
                completed,
                [
                    CheckpointTiming { id: 1, duration_ms: 10, at: None },
                    CheckpointTiming { id: 2, duration_ms: 20, at: None }
                ]
            );
            assert!([1, 2].contains(&shared.last_completed.load(Ordering::Relaxed)));
        });
    }

    /// A stop requested while an attempt's coordinator is being attached reaches it exactly
    /// once, whichever comes first; a second request is not the first.
    #[test]
    fn loom_stop_request_reaches_an_attaching_coordinator_once() {
        loom::model(|| {
            let stop = Arc::new(StopRequest::default());
            let heard = Arc::new(AtomicUsize::new(0));
            let requester = {
                let stop = stop.clone();
                thread::spawn(move || stop.request("SIGTERM"))
            };
            let counted = heard.clone();
            stop.attach(move || {
                counted.fetch_add(1, Ordering::Relaxed);
            });
            assert!(requester.join().unwrap());
            assert!(!stop.request("SIGINT"));
            assert_eq!(heard.load(Ordering::Relaxed), 1);
            assert_eq!(stop.reason().as_deref(), Some("SIGTERM"));
        });
    }
}
