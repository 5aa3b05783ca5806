//! The slot of a transform or sink subtask: where messages to it go, and the epoch it is
//! granted (SPEC §11.8). Everything that sends to a subtask (its upstream's links, its
//! downstream's credits and replay requests, the coordinator, the supervisor) holds its
//! slot, not its actor, so a promoted standby takes the slot over by swapping one address;
//! a hung primary that wakes up finds the slot's grant above its own and does nothing, and
//! whatever it had sent already is refused by its receivers, which compare the grant an item
//! was sent under with the slot's.
//!
//! The slot is shared between the primary's thread, its standby's, its neighbours' and the
//! watchdog's; the loom tests below explore their interleavings.

use actix::prelude::*;

use crate::protocol::driver::Epoch;
use crate::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use crate::sync::{Arc, Mutex, lock};

/// One subtask's slot: generic over the address so that loom can check it without actors.
pub struct Slot<A> {
    /// Where its messages go: the primary's actor.
    addr: Mutex<A>,
    /// The epoch granted: raised by each promotion, after it is durable.
    grant: AtomicU32,
    /// The epoch its primary consumes input under (its receiver epoch: bumped by every local
    /// restart and by a promotion); a promoted standby consumes under the next one.
    incarnation: AtomicU32,
    /// Since when (milliseconds after the slot was made, plus one) its primary has been in
    /// the handler it is in; 0 when it is idle.
    busy_since: AtomicU64,
    /// Its standby has a state and can take over.
    standby_ready: AtomicBool,
    /// Entries its primary shipped to its standby, and those the standby took in: the lag.
    shipped: AtomicU64,
    applied: AtomicU64,
    /// When (milliseconds after the run started) its primary last sent a batch.
    output_at: AtomicU64,
}

impl<A: Clone> Slot<A> {
    /// A slot held by `addr`, granted `grant` (the epoch persisted for it).
    pub fn new(addr: A, grant: Epoch) -> Slot<A> {
        Slot {
            addr: Mutex::new(addr),
            grant: AtomicU32::new(grant),
            incarnation: AtomicU32::new(0),
            busy_since: AtomicU64::new(0),
            standby_ready: AtomicBool::new(false),
            shipped: AtomicU64::new(0),
            applied: AtomicU64::new(0),
            output_at: AtomicU64::new(0),
        }
    }

    /// Where its messages go now.
    pub fn addr(&self) -> A {
        lock(&self.addr).clone()
    }

    /// The epoch granted.
    pub fn grant(&self) -> Epoch {
        self.grant.load(Ordering::SeqCst)
    }

    /// Whether a subtask acting under `grant` has been replaced (its own check, before every
    /// effect: a race here is caught by its receivers, which use [`Slot::fence`]).
    pub fn deposed(&self, grant: Epoch) -> bool {
        self.grant() > grant
    }

    /// The grant a receiver holds what it handles now to: read under the slot's lock, so that
    /// a takeover is entirely before or entirely after it. If it is still the old primary's,
    /// everything the old primary shipped before sending what the receiver handles is in its
    /// standby's mailbox ahead of the takeover's `Promote` (happens-before through this lock),
    /// so the standby applies it before it is promoted (S13). Without the lock only a
    /// sequentially consistent machine would guarantee that (loom finds the interleaving).
    pub fn fence(&self) -> Epoch {
        let _held = lock(&self.addr);
        self.grant()
    }

    /// The primary granted `from` is replaced by `addr`, if nobody replaced it first: `persist`
    /// makes the new grant durable (S11: persisted before it is granted); then the grant is
    /// raised (from now on receivers refuse what `from` sends, S12) and the address swapped.
    /// Returns the new grant and the epoch the new primary consumes under.
    pub fn take_over<E>(
        &self,
        from: Epoch,
        addr: A,
        persist: impl FnOnce(Epoch) -> Result<(), E>,
    ) -> Result<Option<(Epoch, Epoch)>, E> {
        let mut current = lock(&self.addr);
        if self.grant() != from {
            return Ok(None);
        }
        let grant = from + 1;
        persist(grant)?;
        self.grant.store(grant, Ordering::SeqCst);
        *current = addr;
        let incarnation = self.incarnation.fetch_add(1, Ordering::SeqCst) + 1;
        self.standby_ready.store(false, Ordering::SeqCst);
        Ok(Some((grant, incarnation)))
    }

    /// The primary consumes under `epoch` now (it restarted locally).
    pub fn set_incarnation(&self, epoch: Epoch) {
        self.incarnation.fetch_max(epoch, Ordering::SeqCst);
    }

    /// The primary entered a handler at `now_ms` (since the run started).
    pub fn busy(&self, now_ms: u64) {
        self.busy_since.store(now_ms + 1, Ordering::SeqCst);
    }

    /// The primary left its handler.
    pub fn idle(&self) {
        self.busy_since.store(0, Ordering::SeqCst);
    }

    /// Whether the primary has been in one handler for more than `timeout_ms` at `now_ms`.
    pub fn hung(&self, now_ms: u64, timeout_ms: u64) -> bool {
        let since = self.busy_since.load(Ordering::SeqCst);
        since > 0 && now_ms + 1 > since + timeout_ms
    }

    /// Whether its standby can take over, `acceptable_lag` entries behind at most.
    pub fn standby_ready(&self, acceptable_lag: u64) -> bool {
        let lag = self.shipped.load(Ordering::SeqCst).saturating_sub(self.applied.load(Ordering::SeqCst));
        self.standby_ready.load(Ordering::SeqCst) && lag <= acceptable_lag
    }

    /// The primary shipped an entry to its standby.
    pub fn shipped(&self) {
        self.shipped.fetch_add(1, Ordering::Relaxed);
    }

    /// The standby took an entry in.
    pub fn applied(&self) {
        self.applied.fetch_add(1, Ordering::Relaxed);
    }

    /// A new standby starts: nothing shipped to it yet.
    pub fn new_standby(&self) {
        self.standby_ready.store(false, Ordering::SeqCst);
        self.applied.store(self.shipped.load(Ordering::SeqCst), Ordering::SeqCst);
    }

    /// The primary sent a batch at `now_ms`.
    pub fn output(&self, now_ms: u64) {
        self.output_at.store(now_ms, Ordering::Relaxed);
    }

    /// When the primary last sent a batch.
    pub fn last_output(&self) -> u64 {
        self.output_at.load(Ordering::Relaxed)
    }

    /// Its standby can (or cannot) take over.
    pub fn set_standby_ready(&self, ready: bool) {
        self.standby_ready.store(ready, Ordering::SeqCst);
    }
}

/// Where a message goes: an actor, or whichever actor holds a slot.
pub enum Route<M: Message + Send, A>
where
    M::Result: Send,
{
    /// An actor (a source; a test's stand-in).
    Fixed(Recipient<M>),
    /// A transform or sink subtask's slot.
    Slot(Arc<Slot<A>>),
}

impl<M: Message + Send, A> Clone for Route<M, A>
where
    M::Result: Send,
{
    fn clone(&self) -> Self {
        match self {
            Route::Fixed(r) => Route::Fixed(r.clone()),
            Route::Slot(s) => Route::Slot(s.clone()),
        }
    }
}

impl<M, A> Route<M, A>
where
    M: Message<Result = ()> + Send + 'static,
    A: Clone + Into<Recipient<M>>,
{
    /// Send `msg` to whoever holds the route's end now.
    pub fn do_send(&self, msg: M) {
        match self {
            Route::Fixed(r) => r.do_send(msg),
            Route::Slot(s) => s.addr().into().do_send(msg),
        }
    }

    /// The slot, if it goes to one.
    pub fn slot(&self) -> Option<&Arc<Slot<A>>> {
        match self {
            Route::Fixed(_) => None,
            Route::Slot(s) => Some(s),
        }
    }

    /// The grant a receiver fences this input with ([`Slot::fence`]; 0 for an actor outside
    /// any slot).
    pub fn grant(&self) -> Epoch {
        match self {
            Route::Fixed(_) => 0,
            Route::Slot(s) => s.fence(),
        }
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use crate::sync::thread;

    // S11 under concurrency: the watchdog (a hung primary) and the primary's own failure
    // report race to promote the standby; exactly one promotion happens, granted once.
    #[test]
    fn loom_racing_takeovers_grant_the_slot_once() {
        loom::model(|| {
            let slot = Arc::new(Slot::new(0u8, 0));
            let other = slot.clone();
            let t = thread::spawn(move || other.take_over(0, 1, |_| Ok::<(), ()>(())).unwrap());
            let mine = slot.take_over(0, 1, |_| Ok::<(), ()>(())).unwrap();
            let theirs = t.join().unwrap();
            assert!(mine.is_some() ^ theirs.is_some(), "{mine:?} {theirs:?}");
            assert_eq!(slot.grant(), 1);
            assert_eq!(slot.addr(), 1);
        });
    }

    // S12/S13 under concurrency, the argument of SPEC 11.8 in miniature: the old primary
    // ships an entry and then sends its output; a receiver accepts that output only if the
    // slot's grant is still the old one when it looks; the standby raises the grant and then
    // drains what was shipped. Whenever the receiver accepted, the standby sees the entry.
    // With the receiver reading the grant without the slot's lock, loom finds the
    // store-buffering interleaving in which it does not.
    #[test]
    fn loom_output_accepted_from_the_old_primary_was_shipped_before_the_takeover() {
        loom::model(|| {
            let slot = Arc::new(Slot::new(0u8, 0));
            let shipped = Arc::new(AtomicBool::new(false));
            let sent = Arc::new(AtomicBool::new(false));
            let primary = {
                let (shipped, sent) = (shipped.clone(), sent.clone());
                thread::spawn(move || {
                    shipped.store(true, Ordering::SeqCst);
                    sent.store(true, Ordering::SeqCst);
                })
            };
            let receiver = {
                let (slot, sent) = (slot.clone(), sent.clone());
                thread::spawn(move || sent.load(Ordering::SeqCst) && slot.fence() == 0)
            };
            assert!(slot.take_over(0, 1, |_| Ok::<(), ()>(())).unwrap().is_some());
            let seen = shipped.load(Ordering::SeqCst);
            primary.join().unwrap();
            let accepted = receiver.join().unwrap();
            assert!(!accepted || seen, "the receiver accepted output whose input the standby has not");
            assert!(slot.deposed(0));
        });
    }

    // A failed persist grants nothing and leaves the slot to its primary.
    #[test]
    fn loom_a_takeover_whose_grant_is_not_durable_changes_nothing() {
        loom::model(|| {
            let slot = Slot::new(0u8, 3);
            assert_eq!(slot.take_over(3, 1, |_| Err("disk")), Err("disk"));
            assert_eq!((slot.grant(), slot.addr()), (3, 0));
        });
    }
}
