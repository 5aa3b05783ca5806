//! The std/loom switch for every structure shared between threads (tokio's `crate::loom`
//! pattern): code imports its locks, condition variables, atomics and threads from here,
//! which are `std` normally and `loom` under `--cfg loom`, so loom tests can explore their
//! interleavings. The loom tests are the `loom_*` tests of the modules that own the shared
//! structures; `.ci/run` runs them with
//! `RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom LOOM_MAX_PREEMPTIONS=3 cargo test -p weir-runtime --lib --profile loom loom_`.
//!
//! `Arc` is `std`'s in both builds: it only shares a structure (whose own synchronization
//! goes through the types below, which loom does see), and the actor contexts, the
//! progress callback and the injected faults hold `std` `Arc`s that loom's `Arc` could not
//! replace (it has no unsized coercion and no `Display`).

pub use std::sync::Arc;

#[cfg(not(loom))]
pub use std::sync::{Condvar, Mutex, MutexGuard, atomic};
#[cfg(not(loom))]
pub use std::thread;

#[cfg(loom)]
pub use loom::sync::{Condvar, Mutex, MutexGuard, atomic};
#[cfg(loom)]
pub use loom::thread;

/// Lock `mutex`, also when a thread panicked while holding it: for structures whose every
/// critical section leaves them consistent (nothing in it can panic half-way).
pub fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
