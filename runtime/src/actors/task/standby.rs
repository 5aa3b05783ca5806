//! The standby of a transform subtask and its takeover (SPEC §11.8): the actix shell around
//! the core's [`Replica`]. A standby is a [`TaskActor`] on another arbiter than its primary's,
//! fed what the primary applies ([`Ship`]); it installs snapshots from the log, applies
//! batches to its own operator and keeps what that outputs in its buffer queues, sending
//! nothing. When its primary fails (it says so: [`PrimaryFailed`]) or hangs (the watchdog
//! sees it inside one handler for longer than `progress_timeout_ms`), the standby takes the
//! slot over: it writes the slot's next epoch to the log, raises the slot's grant (from then
//! on what the old primary sends is refused) and takes the slot's address, has the
//! coordinator abort what was in flight, applies everything the primary had shipped, and
//! becomes the primary; every receiver is asked to reconnect, upstream replays what follows
//! its positions, and a new standby is started, which attaches at the next snapshot.

use std::time::{Duration, Instant};

use actix::prelude::*;

use super::{Body, TaskActor, check_record, restore_body};
use crate::actors::coordinator::Failover;
use crate::actors::{FailureReason, Guarded, OutGroup, Payload, SubtaskContext};
use crate::log::WriteOp;
use crate::pipeline::supervise::RestartReport;
use crate::protocol::driver::{Effect, Epoch, Mode, Replica, Shipped, Subtask};
use crate::protocol::participant::{Task, TaskConfig};
use crate::protocol::{CheckpointId, Mutations, route};
use crate::sync::{Arc, Mutex, lock};

/// How a slot is protected by a standby: the same for every standby it has in turn.
pub struct FailoverPlan {
    /// Hot or warm.
    pub mode: Mode,
    /// A primary inside one handler for longer than this is taken over.
    pub progress_timeout: Duration,
    /// A standby more entries behind than this does not take over a failed primary (it
    /// restarts locally instead).
    pub acceptable_lag: u64,
    /// The subtask's checkpoint configuration.
    pub config: TaskConfig,
    /// Its output channels' groups, and how many channels.
    pub groups: Vec<OutGroup>,
    /// Number of output channels.
    pub channels: usize,
    /// Its buffer queues' budget in bytes.
    pub budget: usize,
    /// The two arbiters the primary and its standby run on.
    pub arbiters: [ArbiterHandle; 2],
    /// Arbiters started for standbys after a hang (the hung primary's thread is not free), to
    /// be stopped with the run's.
    pub spares: Spares,
}

/// Threads started during a run for standbys, stopped and joined with the run's own.
pub type Spares = std::sync::Arc<std::sync::Mutex<Vec<Arbiter>>>;

impl FailoverPlan {
    /// The same plan with the standby of a primary on arbiter `side` on a new thread.
    fn on_spare_arbiter(&self, side: usize) -> FailoverPlan {
        let spare = Arbiter::new();
        let mut arbiters = self.arbiters.clone();
        arbiters[1 - side] = spare.handle();
        self.spares.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(spare);
        FailoverPlan {
            mode: self.mode,
            progress_timeout: self.progress_timeout,
            acceptable_lag: self.acceptable_lag,
            config: self.config,
            groups: self.groups.clone(),
            channels: self.channels,
            budget: self.budget,
            arbiters,
            spares: self.spares.clone(),
        }
    }
}

/// A standby's state beside its actor's.
pub(super) struct Follower {
    pub(super) replica: Replica<Payload>,
    /// The grant of the primary it follows: the one it takes the slot over from.
    primary_grant: Epoch,
    promotion: Option<Promotion>,
    /// A replacement standby: when its primary's failure happened (for the report).
    replaces: Option<u64>,
}

/// A takeover under way.
struct Promotion {
    grant: Epoch,
    incarnation: Epoch,
    reason: FailureReason,
    message: String,
    at: Instant,
}

/// Primary to standby: what it applied.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Ship(pub Shipped<Payload>);

/// Primary to standby: it failed; take over.
#[derive(Message)]
#[rtype(result = "()")]
pub struct PrimaryFailed {
    reason: FailureReason,
    message: String,
    at: Instant,
}

/// Standby to itself, behind everything its primary shipped before the takeover.
#[derive(Message)]
#[rtype(result = "()")]
struct Promote;

/// Standby to its primary: it could not start from what was shipped; attach again.
#[derive(Message)]
#[rtype(result = "()")]
struct Reattach;

/// `key_operator = "auto"` to a primary: start (`true`) or stop its standby.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetStandby(pub bool);

/// Primary to its standby: it is not needed any more.
#[derive(Message)]
#[rtype(result = "()")]
struct Dismiss;

/// A promoted standby to a receiver: ask me for what follows your position on `input`.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Reconnect {
    /// The receiver's input.
    pub input: usize,
}

impl TaskActor {
    /// A primary protected by a standby starts it (at the start of the attempt, and after a
    /// takeover, on the other arbiter).
    pub(super) fn start_standby(&mut self, ctx: &mut Context<Self>) {
        let Some((plan, side)) = self.failover.clone() else { return };
        let Some(slot) = self.slot.clone() else { return };
        let build = self.build.clone();
        let body = match build(&self.cx.log) {
            Ok(body) => body,
            Err(e) => return tracing::warn!("{}: no standby: {e}", self.cx.name),
        };
        let p = self.cx.participant;
        let replica = Replica::new(
            p,
            plan.config,
            plan.mode,
            (plan.channels, plan.groups.clone()),
            plan.budget,
            Mutations::NONE,
        );
        let replaces = self.gap.as_ref().map(|g| g.at_ms);
        let follower = Follower { replica, primary_grant: self.driver.grant(), promotion: None, replaces };
        // The standby injects no faults: they are aimed at the primary.
        let cx = SubtaskContext { faults: Vec::new(), ..self.cx.clone() };
        let mut standby = TaskActor::new(cx, placeholder(p, &plan), body, build);
        standby.links = self.links.fresh();
        standby.upstream = self.upstream.clone();
        standby.coordinator = self.coordinator.clone();
        standby.slot = Some(slot.clone());
        standby.failover = Some((plan.clone(), 1 - side));
        standby.follower = Some(follower);
        slot.new_standby();
        let addr = TaskActor::start_in_arbiter(&plan.arbiters[1 - side], move |_| standby);
        tracing::info!("{}: standby started ({:?})", self.cx.name, plan.mode);
        self.standby = Some(addr);
        self.driver.attach_standby();
        let _ = ctx;
    }

    /// Carry out `Effect::Ship`.
    pub(super) fn ship(&mut self, shipped: Shipped<Payload>) {
        if let (Some(standby), Some(slot)) = (&self.standby, &self.slot) {
            slot.shipped();
            standby.do_send(Ship(shipped));
        }
    }

    /// The primary failed: if its standby can take over, hand the slot to it (true).
    pub(super) fn hand_over(&mut self, reason: FailureReason, message: &str, at: Instant) -> bool {
        let (Some(standby), Some(slot), Some((plan, _))) = (&self.standby, &self.slot, &self.failover) else {
            return false;
        };
        if !slot.standby_ready(plan.acceptable_lag) {
            tracing::warn!("{}: the standby cannot take over (no state yet, or behind)", self.cx.name);
            return false;
        }
        tracing::warn!("{}: handing over to the standby", self.cx.name);
        standby.do_send(PrimaryFailed { reason, message: message.to_owned(), at });
        self.handed_over = true;
        true
    }

    /// A standby's watchdog: a primary inside one handler for longer than the progress
    /// timeout is taken over.
    pub(super) fn watch_primary(&mut self, ctx: &mut Context<Self>) {
        let Some((plan, _)) = &self.failover else { return };
        if self.follower.is_none() {
            return;
        }
        let timeout = plan.progress_timeout;
        ctx.run_interval(timeout / 4, move |act, ctx| {
            act.guard(ctx, |act, ctx| {
                let Some(slot) = &act.slot else { return };
                let now = act.cx.supervisor.since_start(Instant::now());
                let waiting = act.follower.as_ref().is_some_and(|f| f.promotion.is_none());
                if waiting && slot.hung(now, timeout.as_millis() as u64) {
                    let message = format!("no progress for {} ms", timeout.as_millis());
                    tracing::error!("{}: hung: {message}", act.cx.name);
                    act.take_over(FailureReason::Hung, message, Instant::now(), ctx);
                }
            });
        });
    }

    /// A standby applies what it was shipped.
    pub(super) fn drain_replica(&mut self, ctx: &mut Context<Self>) {
        let applied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.apply_shipped()));
        let failure = match applied {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e),
            Err(panic) => Some(format!("panicked: {}", crate::actors::panic_message(&*panic))),
        };
        if let Some(e) = failure {
            return self.standby_lost(&e, ctx);
        }
        let (Some(follower), Some(slot)) = (&mut self.follower, &self.slot) else { return };
        let ready = follower.replica.can_take_over();
        slot.set_standby_ready(ready);
        if ready && let Some(at_ms) = follower.replaces.take() {
            let ready = self.cx.supervisor.since_start(Instant::now()).saturating_sub(at_ms);
            self.cx.supervisor.amend(self.cx.participant, at_ms, |r| r.reprotected_ms = Some(ready));
        }
    }

    fn apply_shipped(&mut self) -> Result<(), String> {
        let Some(follower) = &mut self.follower else { return Ok(()) };
        while let Some(effect) = follower.replica.poll_effect() {
            match effect {
                Effect::Install(c) => {
                    // The primary issued the snapshot's write before shipping this: once the
                    // writer has applied what was queued, it is there (or its write failed).
                    if c.0 > 0 {
                        self.cx.writer.flush();
                    }
                    let state = match c.0 {
                        0 => None,
                        _ => {
                            let record = self
                                .cx
                                .log
                                .read_snapshot(self.cx.participant, c)
                                .map_err(|e| e.to_string())?;
                            let inputs = self.driver.positions().len();
                            let channels = self.links.0.len();
                            Some(check_record(&record, inputs, channels)?.operator)
                        }
                    };
                    self.body = restore_body(&self.cx.name, &self.build, &self.cx.log, state)?;
                }
                Effect::Process { input, batch, .. } => {
                    let (Payload::Data(batch), Body::Operator(op)) = (batch, &mut self.body) else {
                        unreachable!("a standby's operator applies batches")
                    };
                    op.process(input, &batch, &mut self.scratch).map_err(|e| e.to_string())?;
                    for out in self.scratch.drain(..) {
                        follower.replica.emit(Payload::Data(Arc::new(out)));
                    }
                    follower.replica.processed();
                }
                Effect::InputEnded { input } => {
                    let Body::Operator(op) = &mut self.body else {
                        unreachable!("a standby has an operator")
                    };
                    op.on_input_end(input, &mut self.scratch).map_err(|e| e.to_string())?;
                    for out in self.scratch.drain(..) {
                        follower.replica.emit(Payload::Data(Arc::new(out)));
                    }
                    follower.replica.processed();
                }
                other => unreachable!("a replica yields no {other:?}"),
            }
        }
        Ok(())
    }

    /// The standby cannot follow (its install or its operator failed): it starts again
    /// from the primary's next snapshot.
    fn standby_lost(&mut self, error: &str, ctx: &mut Context<Self>) {
        tracing::warn!("{}: standby lost: {error}; it starts again at the next snapshot", self.cx.name);
        let Some(follower) = &mut self.follower else { return };
        if follower.promotion.is_some() {
            // Taking over with a state it cannot apply to: the run rolls back.
            return self.cx.escalate(FailureReason::Panic, format!("standby: {error}"));
        }
        let Some((plan, _)) = &self.failover else { return };
        follower.replica = Replica::new(
            self.cx.participant,
            plan.config,
            plan.mode,
            (plan.channels, plan.groups.clone()),
            plan.budget,
            Mutations::NONE,
        );
        self.scratch.clear();
        if let Some(slot) = &self.slot {
            slot.new_standby();
            if !slot.deposed(follower.primary_grant) {
                slot.addr().do_send(Reattach);
            }
        }
        let _ = ctx;
    }

    /// Take the slot over from the primary.
    fn take_over(&mut self, reason: FailureReason, message: String, at: Instant, ctx: &mut Context<Self>) {
        let (Some(slot), Some(follower)) = (self.slot.clone(), &self.follower) else { return };
        if follower.promotion.is_some() || !follower.replica.can_take_over() {
            return;
        }
        let (writer, p) = (self.cx.writer.clone(), self.cx.participant);
        let persist = |grant: Epoch| -> Result<(), String> {
            let outcome = Arc::new(Mutex::new(None));
            let written = outcome.clone();
            let done = Box::new(move |r| *lock(&written) = Some(r));
            writer.submit(vec![WriteOp::Grant { participant: p, epoch: grant }], done);
            writer.flush();
            match lock(&outcome).take() {
                Some(Ok(())) => Ok(()),
                Some(Err(e)) => Err(e.to_string()),
                None => Err("the log's writer stopped".to_owned()),
            }
        };
        let (grant, incarnation) = match slot.take_over(follower.primary_grant, ctx.address(), persist) {
            Ok(Some(granted)) => granted,
            Ok(None) => return, // taken over already
            Err(e) => {
                return self.cx.fatal.fail(format!("{}: cannot record the takeover: {e}", self.cx.name));
            }
        };
        tracing::warn!("{}: taking over as epoch {grant}", self.cx.name);
        self.coordinator().failover.do_send(Failover { participant: p, epoch: grant });
        let Some(follower) = &mut self.follower else { return };
        follower.replica.take_over();
        follower.promotion = Some(Promotion { grant, incarnation, reason, message, at });
        // Through the mailbox: behind everything the old primary shipped before the grant
        // was raised, which the standby applies first (S13).
        ctx.address().do_send(Promote);
    }

    /// Become the primary (SPEC §11.8).
    fn promote(&mut self, ctx: &mut Context<Self>) {
        self.drain_replica(ctx);
        let Some(follower) = self.follower.take() else { return };
        let Some(Promotion { grant, incarnation, reason, message, at }) = follower.promotion else {
            self.follower = Some(follower);
            return;
        };
        if !follower.replica.caught_up() {
            // Nothing is left half-applied in one handler; this cannot happen.
            return self.cx.escalate(reason, "standby: promoted before it applied what was shipped".into());
        }
        let failed_at_ms = self.cx.supervisor.since_start(at);
        let last_ms = self.slot.as_ref().map_or(failed_at_ms, |s| s.last_output());
        self.driver = follower.replica.into_primary(incarnation, grant);
        self.links.set_grant(grant);
        self.cx.supervisor.record(RestartReport {
            node: self.cx.node.clone(),
            subtask: self.cx.subtask,
            reason,
            recovery: "failover".into(),
            restarted: vec![self.cx.supervisor.name(self.cx.participant).to_owned()],
            message,
            at_ms: failed_at_ms,
            duration_ms: at.elapsed().as_millis() as u64,
            restored_from: None,
            caught_up_ms: None,
            epoch: Some(grant),
            output_gap_ms: None,
            reprotected_ms: None,
        });
        // Every batch it sends is new to its receivers (they asked from their positions).
        self.gap = Some(super::Gap { at_ms: failed_at_ms, last_ms, above: Vec::new() });
        // A primary that failed said what it had received (a hung one could not).
        self.catch_up = self.cx.supervisor.catch_up_target(self.cx.participant);
        self.check_caught_up();
        tracing::warn!("{}: promoted (epoch {grant}); receivers reconnect", self.cx.name);
        for link in &self.links.0 {
            if let Some(receiver) = link.to().slot() {
                receiver.addr().do_send(Reconnect { input: link.input() });
            }
        }
        if reason == FailureReason::Hung
            && let Some((plan, side)) = &self.failover
        {
            // The old primary's thread is blocked: the new standby goes to a new one.
            self.failover = Some((Arc::new(plan.on_spare_arbiter(*side)), *side));
        }
        self.start_standby(ctx);
        self.drain(ctx);
    }
}

/// The driver a standby holds until it is promoted (it is replaced then): an unrestored
/// subtask of the same shape.
fn placeholder(p: crate::protocol::ParticipantId, plan: &FailoverPlan) -> Subtask<Payload> {
    let inputs = plan.config.inputs;
    let outputs = route::Outputs::new(
        &vec![0; plan.channels],
        CheckpointId(0),
        plan.groups.clone(),
        (false, 0),
        Mutations::NONE,
    );
    Subtask::new(
        p,
        Task::new(plan.config),
        plan.config,
        (&vec![0; inputs], vec![false; inputs], CheckpointId(0)),
        outputs,
    )
}

impl Handler<Ship> for TaskActor {
    type Result = ();
    fn handle(&mut self, Ship(shipped): Ship, ctx: &mut Context<Self>) {
        self.guard(ctx, |act, ctx| {
            if let Some(slot) = &act.slot {
                slot.applied();
            }
            let Some(follower) = &mut act.follower else { return };
            follower.replica.handle_shipped(shipped);
            act.drain(ctx);
        });
    }
}

impl Handler<PrimaryFailed> for TaskActor {
    type Result = ();
    fn handle(&mut self, msg: PrimaryFailed, ctx: &mut Context<Self>) {
        self.guard(ctx, |act, ctx| act.take_over(msg.reason, msg.message, msg.at, ctx));
    }
}

impl Handler<Promote> for TaskActor {
    type Result = ();
    fn handle(&mut self, _: Promote, ctx: &mut Context<Self>) {
        self.guard(ctx, |act, ctx| act.promote(ctx));
    }
}

impl Handler<SetStandby> for TaskActor {
    type Result = ();
    fn handle(&mut self, SetStandby(on): SetStandby, ctx: &mut Context<Self>) {
        self.guard(ctx, |act, ctx| {
            if act.follower.is_some() || act.handed_over {
                return;
            }
            match (on, act.standby.take()) {
                (true, None) => act.start_standby(ctx),
                (false, Some(standby)) => {
                    standby.do_send(Dismiss);
                    act.driver.detach_standby();
                    if let Some(slot) = &act.slot {
                        slot.new_standby();
                    }
                    tracing::info!("{}: standby stopped (the key operator moved)", act.cx.name);
                }
                (_, standby) => act.standby = standby,
            }
            act.drain(ctx);
        });
    }
}

impl Handler<Dismiss> for TaskActor {
    type Result = ();
    fn handle(&mut self, _: Dismiss, ctx: &mut Context<Self>) {
        if self.follower.as_ref().is_some_and(|f| f.promotion.is_none()) {
            ctx.stop();
        }
    }
}

impl Handler<Reattach> for TaskActor {
    type Result = ();
    fn handle(&mut self, _: Reattach, ctx: &mut Context<Self>) {
        self.guard(ctx, |act, ctx| {
            act.driver.detach_standby();
            act.driver.attach_standby();
            act.drain(ctx);
        });
    }
}

impl Handler<Reconnect> for TaskActor {
    type Result = ();
    fn handle(&mut self, msg: Reconnect, ctx: &mut Context<Self>) {
        self.guard(ctx, |act, ctx| {
            if act.follower.is_none() {
                act.driver.reconnect(msg.input);
                act.drain(ctx);
            }
        });
    }
}
