//! The log's single writer thread (DESIGN.md §6: one LMDB writer at a time, so appends are
//! batched): subtasks queue writes with a completion callback; the thread applies everything
//! queued in one transaction, commits, and only then calls the callbacks. It also runs the
//! blocking work that must precede a write, in queue order ([`Writer::run`]: a sink's append
//! and fsync before its commit record), so that no actor thread waits on a disk, and a
//! [`Writer::flush`] (a restart, the end of an attempt) waits for that work too.
//!
//! The queue and the batching loop ([`Queue`]) do not know about LMDB: they are generic over
//! what is written and what applying a batch returns, so the loom tests below check them
//! with a fake "apply" that records what is durable (LMDB cannot run under loom). The queue
//! is a mutex and a condition variable from `crate::sync` rather than an `mpsc` channel:
//! loom's channel does not model a disconnected end, and the writer's contract depends on it
//! (the thread ends when every handle is gone; a submission after the thread ended is
//! refused).

use std::collections::VecDeque;

use super::{Done, Log, LogError, WriteOp};
use crate::sync::{Arc, Condvar, Mutex, lock, thread};

/// The most submissions applied in one transaction.
const MAX_BATCH: usize = 256;

/// The single writer: a thread that applies queued writes in batches and reports each batch
/// durable only after its transaction committed.
#[derive(Clone)]
pub struct Writer {
    queue: Queue<WriteOp, Result<(), std::sync::Arc<LogError>>>,
    tap: Option<std::sync::Arc<dyn super::ship::Tap>>,
}

impl Writer {
    /// Start the writer thread for `log`.
    pub fn start(log: Log) -> Writer {
        Writer::start_tapped(log, None)
    }

    /// Start the writer thread for `log`, telling `tap` of every batch it commits before
    /// the batch's callbacks run ([`super::ship`]: replication to another agent).
    pub fn start_tapped(log: Log, tap: Option<std::sync::Arc<dyn super::ship::Tap>>) -> Writer {
        // The thread runs until every `Writer` is dropped; nobody waits for it.
        let batch_tap = tap.clone();
        let (queue, _thread) = Queue::start("weir-log-writer", move |ops: &[Vec<WriteOp>]| {
            log.transaction(ops.iter().flatten()).map_err(std::sync::Arc::new)?;
            match &batch_tap {
                Some(tap) => {
                    tap.committed(&log, ops).map_err(|e| std::sync::Arc::new(LogError::Replication(e)))
                }
                None => Ok(()),
            }
        });
        Writer { queue, tap }
    }

    /// The replication tap, if the log is shipped to another agent.
    pub fn tap(&self) -> Option<std::sync::Arc<dyn super::ship::Tap>> {
        self.tap.clone()
    }

    /// Wait until every write queued before this call has been applied (or failed).
    pub fn flush(&self) {
        self.queue.flush();
    }

    /// Queue `ops`; `done` is called once they are durable, or with the error that stopped them.
    pub fn submit(&self, ops: Vec<WriteOp>, done: Done) {
        if let Err(done) = self.queue.submit(ops, done) {
            done(Err(std::sync::Arc::new(LogError::WriterGone)));
        }
    }

    /// Queue `job`, to run on the writer thread after everything queued before it was taken;
    /// the writes it returns (if any) are applied in the transaction of its batch, after it
    /// ran, and their `done` called as [`Writer::submit`]'s. A later [`Writer::flush`] waits
    /// for it. Refused ([`LogError::WriterGone`], `job` dropped unrun) once the thread ended.
    pub fn run(&self, job: Job) -> Result<(), LogError> {
        self.queue.run(job).map_err(|_| LogError::WriterGone)
    }
}

/// Blocking work run on the writer thread ([`Writer::run`]), and what it then writes.
pub type Job = Box<dyn FnOnce() -> Option<(Vec<WriteOp>, Done)> + Send>;

/// Called with the outcome of the batch its submission was applied in.
type Callback<R> = Box<dyn FnOnce(R) + Send>;

/// One submission: what to apply, and whom to tell once it was.
type Submission<O, R> = (Vec<O>, Callback<R>);

/// What is queued: a submission, or work that runs first and may then submit.
enum Work<O, R> {
    Write(Submission<O, R>),
    Job(Box<dyn FnOnce() -> Option<Submission<O, R>> + Send>),
}

impl<O, R> Work<O, R> {
    /// What to apply: a job runs now, on the serving thread.
    fn into_submission(self) -> Option<Submission<O, R>> {
        match self {
            Work::Write(submission) => Some(submission),
            Work::Job(job) => job(),
        }
    }
}

/// A queue served by one thread, which takes everything queued (up to [`MAX_BATCH`]
/// submissions), runs its jobs in order, applies the writes in one go, and only then calls
/// each submission's callback with the outcome. Submissions are applied in the order they
/// were queued, and a job's after it ran.
struct Queue<O, R> {
    submissions: Sender<Work<O, R>>,
}

impl<O, R> Clone for Queue<O, R> {
    fn clone(&self) -> Self {
        Queue { submissions: self.submissions.clone() }
    }
}

impl<O: Send + 'static, R: Clone + Send + 'static> Queue<O, R> {
    /// Start the serving thread, which applies batches with `apply` until every handle to
    /// the queue is dropped.
    fn start(
        name: &str,
        mut apply: impl FnMut(&[Vec<O>]) -> R + Send + 'static,
    ) -> (Queue<O, R>, thread::JoinHandle<()>) {
        let (submissions, rx) = channel::<Work<O, R>>();
        let thread = thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                while let Some(batch) = rx.next_batch(MAX_BATCH) {
                    serve(batch, &mut apply);
                }
            })
            .expect("spawning a queue's serving thread");
        (Queue { submissions }, thread)
    }

    /// Queue `ops`; `done` is called once they are applied. Hands `done` back, uncalled, if
    /// the serving thread is gone.
    fn submit(&self, ops: Vec<O>, done: Callback<R>) -> Result<(), Callback<R>> {
        match self.submissions.send(Work::Write((ops, done))) {
            Ok(()) => Ok(()),
            Err(Work::Write((_, done))) => Err(done),
            Err(Work::Job(_)) => unreachable!("a write is handed back as it was sent"),
        }
    }

    /// Queue `job`, which runs on the serving thread in queue order; the submission it
    /// returns is applied with the batch it was taken in. `Err` (the job dropped unrun) if
    /// the serving thread is gone.
    fn run(&self, job: Box<dyn FnOnce() -> Option<Submission<O, R>> + Send>) -> Result<(), ()> {
        self.submissions.send(Work::Job(job)).map_err(drop)
    }

    /// Wait until everything queued before this call has been applied (or the serving thread
    /// ended without applying it).
    fn flush(&self) {
        let (tx, rx) = channel();
        let marker = Box::new(move |_| {
            let _ = tx.send(());
        });
        if self.submit(Vec::new(), marker).is_ok() {
            // `None`: the serving thread ended and dropped the marker uncalled.
            let _ = rx.next_batch(1);
        }
    }
}

/// Serve one batch: run its jobs in queue order, apply the writes with `apply`, and only then
/// call each callback with the outcome.
fn serve<O, R: Clone>(batch: Vec<Work<O, R>>, apply: &mut impl FnMut(&[Vec<O>]) -> R) {
    let (ops, callbacks): (Vec<_>, Vec<_>) = batch.into_iter().filter_map(Work::into_submission).unzip();
    if callbacks.is_empty() {
        return; // only jobs that wrote nothing
    }
    let outcome = apply(&ops);
    for done in callbacks {
        done(outcome.clone());
    }
}

/// A multi-producer, single-consumer queue (like `std::sync::mpsc`, whose disconnection
/// rules it follows) that hands the consumer everything queued at once.
fn channel<T>() -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Channel {
        state: Mutex::new(ChannelState { items: VecDeque::new(), senders: 1, receiving: true }),
        ready: Condvar::new(),
    });
    (Sender { shared: shared.clone() }, Receiver { shared })
}

struct Channel<T> {
    state: Mutex<ChannelState<T>>,
    /// Signalled when the queue becomes non-empty or the last sender goes.
    ready: Condvar,
}

struct ChannelState<T> {
    items: VecDeque<T>,
    /// Live `Sender`s: the receiver stops waiting once none is left.
    senders: usize,
    /// Whether the `Receiver` is alive: sending fails once it is gone.
    receiving: bool,
}

struct Sender<T> {
    shared: Arc<Channel<T>>,
}

impl<T> Sender<T> {
    /// Queue `item`, or hand it back if the receiver is gone.
    fn send(&self, item: T) -> Result<(), T> {
        let mut state = lock(&self.shared.state);
        if !state.receiving {
            return Err(item);
        }
        state.items.push_back(item);
        // The receiver only waits on an empty queue.
        if state.items.len() == 1 {
            self.shared.ready.notify_one();
        }
        Ok(())
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        lock(&self.shared.state).senders += 1;
        Sender { shared: self.shared.clone() }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let mut state = lock(&self.shared.state);
        state.senders -= 1;
        if state.senders == 0 {
            self.shared.ready.notify_one();
        }
    }
}

struct Receiver<T> {
    shared: Arc<Channel<T>>,
}

impl<T> Receiver<T> {
    /// Wait for the queue to hold something and take up to `max` items, oldest first; `None`
    /// once it is empty and every sender is gone.
    fn next_batch(&self, max: usize) -> Option<Vec<T>> {
        let mut state = lock(&self.shared.state);
        loop {
            if !state.items.is_empty() {
                let n = state.items.len().min(max);
                return Some(state.items.drain(..n).collect());
            }
            if state.senders == 0 {
                return None;
            }
            state = self.shared.ready.wait(state).unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let mut state = lock(&self.shared.state);
        state.receiving = false;
        let unserved = std::mem::take(&mut state.items);
        drop(state);
        // Outside the lock: dropping an item may drop a sender of this very queue.
        drop(unserved);
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use crate::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    type Applied = Arc<Mutex<Vec<u32>>>;

    /// A queue whose "apply" records each item as durable.
    fn recording_queue() -> (Queue<u32, ()>, thread::JoinHandle<()>, Applied) {
        let applied = Applied::default();
        let durable = applied.clone();
        let (queue, server) = Queue::start("test-writer", move |ops: &[Vec<u32>]| {
            lock(&durable).extend(ops.iter().flatten());
        });
        (queue, server, applied)
    }

    /// A callback that checks that `item` was applied before it runs, and counts.
    fn expect_applied(item: u32, applied: &Applied, calls: &Arc<AtomicUsize>) -> Callback<()> {
        let (applied, calls) = (applied.clone(), calls.clone());
        Box::new(move |()| {
            assert!(lock(&applied).contains(&item), "done({item}) ran before {item} was applied");
            calls.fetch_add(1, Ordering::Relaxed);
        })
    }

    fn is_applied(applied: &Applied, items: &[u32]) -> bool {
        let applied = lock(applied);
        items.iter().all(|i| applied.contains(i))
    }

    /// A producer submits two writes and hangs up while the main thread submits one and
    /// flushes: each `done` runs after its item was applied, and exactly once; the flush
    /// returns after the main thread's write, and after the producer's if they were submitted
    /// before it; the serving thread ends once every handle is gone.
    #[test]
    fn loom_writer_queue_done_after_apply_and_flush_after_earlier_writes() {
        loom::model(|| {
            let (queue, server, applied) = recording_queue();
            let calls = Arc::new(AtomicUsize::new(0));
            let submitted = Arc::new(AtomicBool::new(false));
            let producer = {
                let (queue, applied, calls, submitted) =
                    (queue.clone(), applied.clone(), calls.clone(), submitted.clone());
                thread::spawn(move || {
                    for item in [1, 2] {
                        assert!(queue.submit(vec![item], expect_applied(item, &applied, &calls)).is_ok());
                    }
                    submitted.store(true, Ordering::Release);
                })
            };
            assert!(queue.submit(vec![3], expect_applied(3, &applied, &calls)).is_ok());
            let producer_done = submitted.load(Ordering::Acquire);
            queue.flush();
            assert!(is_applied(&applied, &[3]), "flush returned before this thread's write");
            if producer_done {
                assert!(is_applied(&applied, &[1, 2]), "flush returned before an earlier write");
            }
            producer.join().unwrap();
            drop(queue);
            server.join().unwrap();
            assert!(is_applied(&applied, &[1, 2, 3]));
            assert_eq!(calls.load(Ordering::Relaxed), 3, "every done runs once");
        });
    }

    /// A producer queues two jobs (each does its blocking work, recorded as 10 or 20, then
    /// returns a write of 1 or 2: a sink's append, then its commit record) while the main
    /// thread writes 3 and flushes: each job's work comes before its write, the jobs run in
    /// the order they were queued, each `done` runs once after its write was applied, and a
    /// flush queued after the jobs returns only after their work and their writes (a
    /// restart's flush before the sink's output is opened again).
    #[test]
    fn loom_writer_queue_runs_jobs_in_order_before_their_writes_and_flush_waits_for_them() {
        loom::model(|| {
            let (queue, server, applied) = recording_queue();
            let calls = Arc::new(AtomicUsize::new(0));
            let queued = Arc::new(AtomicBool::new(false));
            let producer = {
                let (queue, applied, calls, queued) =
                    (queue.clone(), applied.clone(), calls.clone(), queued.clone());
                thread::spawn(move || {
                    for item in [1, 2] {
                        let (applied, calls) = (applied.clone(), calls.clone());
                        let job = Box::new(move || {
                            lock(&applied).push(item * 10);
                            Some((vec![item], expect_applied(item, &applied, &calls)))
                        });
                        assert!(queue.run(job).is_ok());
                    }
                    queued.store(true, Ordering::Release);
                })
            };
            assert!(queue.submit(vec![3], expect_applied(3, &applied, &calls)).is_ok());
            let jobs_queued = queued.load(Ordering::Acquire);
            queue.flush();
            if jobs_queued {
                assert!(is_applied(&applied, &[10, 1, 20, 2]), "flush returned before an earlier job");
            }
            producer.join().unwrap();
            drop(queue);
            server.join().unwrap();
            let order = lock(&applied).clone();
            let at = |item| order.iter().position(|&i| i == item).expect("every job and write applied");
            assert!(at(10) < at(1) && at(20) < at(2), "a job's write applied before its work: {order:?}");
            assert!(at(10) < at(20), "jobs ran out of order: {order:?}");
            assert_eq!(calls.load(Ordering::Relaxed), 3, "every done runs once");
        });
    }

    /// The serving thread ends (in production: a panic on the writer thread) while a
    /// producer submits: a submission is either applied and then reported, or refused, or
    /// dropped uncalled with the queue; once the thread has ended, every submission is
    /// refused (the writer then reports `WriterGone`).
    #[test]
    fn loom_writer_queue_refuses_submissions_after_the_serving_thread_ended() {
        loom::model(|| {
            let (submissions, rx) = channel();
            let queue: Queue<u32, ()> = Queue { submissions };
            let applied = Applied::default();
            let durable = applied.clone();
            let server = thread::spawn(move || {
                // Serve one batch, then end.
                if let Some(batch) = rx.next_batch(MAX_BATCH) {
                    serve(batch, &mut |ops: &[Vec<u32>]| lock(&durable).extend(ops.iter().flatten()));
                }
            });
            let calls = Arc::new(AtomicUsize::new(0));
            let producer = {
                let (queue, applied, calls) = (queue.clone(), applied.clone(), calls.clone());
                thread::spawn(move || {
                    for item in [1, 2] {
                        // Refused (handed back uncalled) once the serving thread ended.
                        let _ = queue.submit(vec![item], expect_applied(item, &applied, &calls));
                    }
                })
            };
            server.join().unwrap();
            let late = queue.submit(vec![3], Box::new(|()| panic!("served after the thread ended")));
            assert!(late.is_err(), "a submission after the serving thread ended was accepted");
            let late_job = queue.run(Box::new(|| panic!("a job ran after the thread ended")));
            assert!(late_job.is_err(), "a job after the serving thread ended was accepted");
            // A flush after the end returns at once instead of waiting forever.
            queue.flush();
            producer.join().unwrap();
            // The producer's first write always reaches the one batch served.
            assert!(is_applied(&applied, &[1]));
            assert_eq!(calls.load(Ordering::Relaxed), lock(&applied).len(), "an applied write not reported");
        });
    }
}
