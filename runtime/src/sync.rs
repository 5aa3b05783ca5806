//! The std/loom switch for every structure shared between threads (tokio's `crate::loom`
//! pattern): code imports `Arc`, `Mutex` and atomics from here, which is `std` normally and
//! `loom` under `--cfg loom`, so loom tests can explore their interleavings.

#[cfg(not(loom))]
pub use std::sync::{Arc, Mutex, atomic};

#[cfg(loom)]
pub use loom::sync::{Arc, Mutex, atomic};
