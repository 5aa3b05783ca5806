//! The coordinator actor: the interval timer and checkpoint timeouts feed the protocol
//! core's [`Coordinator`]; its actions become triggers, completion records and notices.
//! It also ends the run: after the final checkpoint completed and every sink has made that
//! checkpoint's output durable, it stops the actor system. A requested stop (SIGTERM) ends
//! the run the same way at the checkpoint the core names (SPEC §6.7).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use actix::prelude::*;

use super::shared::{COORDINATOR, CoordinatorShared, Failure, FailureReason, Guarded};
use super::{Abort, Ack, Complete, Fatal, SinkCommitted, SourceFinished, To, Trigger};
use crate::log::{WriteOp, Writer};
use crate::protocol::CheckpointId;
use crate::protocol::coordinator::{Coordinator, CoordinatorAction};
use crate::sync::Arc;
use crate::sync::atomic::Ordering;

#[derive(Message)]
#[rtype(result = "()")]
struct CompletionDurable(CheckpointId);

/// Wiring, sent once before `Start`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Wire {
    /// The source subtasks, by source index.
    pub sources: Vec<Recipient<Trigger>>,
    /// Every participant's notice inboxes, by participant id.
    pub participants: Vec<(To<Complete>, To<Abort>)>,
}

/// A standby of `participant` was promoted under `epoch` (SPEC §11.8).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Failover {
    /// The participant.
    pub participant: crate::protocol::ParticipantId,
    /// Its slot's new grant.
    pub epoch: crate::protocol::driver::Epoch,
}

/// Start the interval timer.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Start;

/// End the run early at a checkpoint (SPEC §6.7).
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopRequested;

/// The coordinator of one pipeline run.
pub struct CoordinatorActor {
    core: Coordinator,
    interval: Option<Duration>,
    timeout: Duration,
    writer: Writer,
    sources: Vec<Recipient<Trigger>>,
    participants: Vec<(To<Complete>, To<Abort>)>,
    triggered_at: BTreeMap<CheckpointId, Instant>,
    shared: Arc<CoordinatorShared>,
    fatal: Arc<Fatal>,
}

impl CoordinatorActor {
    /// A coordinator over a restored core (which knows the sinks it waits for).
    pub fn new(
        core: Coordinator,
        interval: Option<Duration>,
        timeout: Duration,
        writer: Writer,
        shared: Arc<CoordinatorShared>,
        fatal: Arc<Fatal>,
    ) -> CoordinatorActor {
        CoordinatorActor {
            core,
            interval,
            timeout,
            writer,
            sources: Vec::new(),
            participants: Vec::new(),
            triggered_at: BTreeMap::new(),
            shared,
            fatal,
        }
    }

    fn drain(&mut self, ctx: &mut Context<Self>) {
        while let Some(action) = self.core.poll_action() {
            match action {
                CoordinatorAction::Trigger(c) => {
                    self.triggered_at.insert(c, Instant::now());
                    for source in &self.sources {
                        source.do_send(Trigger(c));
                    }
                }
                CoordinatorAction::ArmTimeout(c) => {
                    ctx.run_later(self.timeout, move |act, ctx| {
                        act.guard(ctx, |act, ctx| {
                            act.core.handle_timeout(c);
                            act.drain(ctx);
                        });
                    });
                }
                CoordinatorAction::PersistCompletion(c) => {
                    let (addr, fatal) = (ctx.address(), self.fatal.clone());
                    self.writer.submit(
                        vec![WriteOp::Completion(c)],
                        Box::new(move |r| match r {
                            Ok(()) => addr.do_send(CompletionDurable(c)),
                            Err(e) => fatal.fail(e),
                        }),
                    );
                }
                CoordinatorAction::NotifyComplete(c) => {
                    if let Some(at) = self.triggered_at.remove(&c) {
                        let timing = super::shared::CheckpointTiming {
                            id: c.0,
                            duration_ms: at.elapsed().as_millis() as u64,
                            at: Some(Instant::now()),
                        };
                        self.shared.completed.lock().expect("checkpoint list").push(timing);
                    }
                    self.shared.last_completed.store(c.0, Ordering::Relaxed);
                    tracing::debug!("{c} complete");
                    for (complete, _) in &self.participants {
                        complete.do_send(Complete(c));
                    }
                }
                CoordinatorAction::NotifyAbort(c) => {
                    self.triggered_at.remove(&c);
                    self.shared.aborted.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!("{c} aborted");
                    for (_, abort) in &self.participants {
                        abort.do_send(Abort(c));
                    }
                }
                CoordinatorAction::Finished => tracing::debug!("final checkpoint complete"),
                CoordinatorAction::Stopped(c) => {
                    tracing::info!("stopping at {c}");
                    // The commits are already under way; a sink that cannot make them must
                    // not hold the stop forever.
                    ctx.run_later(self.timeout, move |act, _| {
                        act.fatal.fail(format!(
                            "stop: the sinks did not commit {c} within the checkpoint timeout ({} ms); run the same command to resume",
                            act.timeout.as_millis()
                        ));
                    });
                }
                CoordinatorAction::RunEnded { checkpoint, stopped } => {
                    if stopped {
                        self.shared.stopped_at.store(checkpoint.0, Ordering::Relaxed);
                    } else {
                        self.shared.finished.store(1, Ordering::Relaxed);
                    }
                    System::current().stop();
                }
                CoordinatorAction::StopFailed(c) => {
                    let last = self.core.completed().map_or("no checkpoint".to_owned(), |l| l.to_string());
                    self.fatal.fail(format!(
                        "stop: {c} did not complete within the checkpoint timeout ({} ms); the log keeps {last}, run the same command to resume",
                        self.timeout.as_millis()
                    ));
                }
            }
        }
    }
}

impl Actor for CoordinatorActor {
    type Context = Context<Self>;
}

impl Guarded for CoordinatorActor {
    /// The coordinator's state is lost with the panic, the completion records in the log
    /// are not: a global rollback restores the pipeline from them.
    fn panicked(&mut self, message: String, _: &mut Context<Self>) {
        tracing::error!("coordinator: panicked: {message}");
        self.fatal.stop(Failure::Healable {
            node: COORDINATOR.to_owned(),
            subtask: 0,
            reason: FailureReason::Panic,
            message,
            at: Instant::now(),
        });
    }
}

impl Handler<Wire> for CoordinatorActor {
    type Result = ();
    fn handle(&mut self, wire: Wire, ctx: &mut Context<Self>) {
        self.guard(ctx, |act, _| {
            act.sources = wire.sources;
            act.participants = wire.participants;
        });
    }
}

impl Handler<Start> for CoordinatorActor {
    type Result = ();
    fn handle(&mut self, _: Start, ctx: &mut Context<Self>) {
        self.guard(ctx, |act, ctx| {
            if let Some(interval) = act.interval {
                ctx.run_interval(interval, |act, ctx| {
                    act.guard(ctx, |act, ctx| {
                        act.core.handle_tick();
                        act.drain(ctx);
                    });
                });
            }
        });
    }
}

impl Handler<StopRequested> for CoordinatorActor {
    type Result = ();
    fn handle(&mut self, _: StopRequested, ctx: &mut Context<Self>) {
        self.guard(ctx, |act, ctx| {
            act.core.handle_stop_requested();
            act.drain(ctx);
        });
    }
}

impl Handler<Ack> for CoordinatorActor {
    type Result = ();
    fn handle(&mut self, ack: Ack, ctx: &mut Context<Self>) {
        self.guard(ctx, |act, ctx| {
            act.core.handle_ack(ack.participant, ack.grant, ack.checkpoint);
            act.drain(ctx);
        });
    }
}

impl Handler<Failover> for CoordinatorActor {
    type Result = ();
    fn handle(&mut self, msg: Failover, ctx: &mut Context<Self>) {
        self.guard(ctx, |act, ctx| {
            act.core.handle_failover(msg.participant, msg.epoch);
            act.drain(ctx);
        });
    }
}

impl Handler<SourceFinished> for CoordinatorActor {
    type Result = ();
    fn handle(&mut self, SourceFinished(source): SourceFinished, ctx: &mut Context<Self>) {
        self.guard(ctx, |act, ctx| {
            act.core.handle_source_finished(source);
            act.drain(ctx);
        });
    }
}

impl Handler<CompletionDurable> for CoordinatorActor {
    type Result = ();
    fn handle(&mut self, CompletionDurable(c): CompletionDurable, ctx: &mut Context<Self>) {
        self.guard(ctx, |act, ctx| {
            act.core.on_completion_durable(c);
            act.drain(ctx);
        });
    }
}

impl Handler<SinkCommitted> for CoordinatorActor {
    type Result = ();
    fn handle(&mut self, msg: SinkCommitted, ctx: &mut Context<Self>) {
        self.guard(ctx, |act, ctx| {
            act.core.handle_sink_committed(msg.participant, msg.checkpoint);
            act.drain(ctx);
        });
    }
}
