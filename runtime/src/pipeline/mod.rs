//! Pipelines: the validated description ([`spec`]) and, with the `io` feature, its topology
//! ([`plan`]) and how one is built into actors and run.

pub mod faults;
pub mod fingerprint;
pub mod spec;

#[cfg(feature = "io")]
pub mod keyop;

#[cfg(feature = "io")]
pub mod live;

#[cfg(feature = "io")]
pub mod plan;

#[cfg(feature = "io")]
pub mod run;

#[cfg(feature = "io")]
pub mod supervise;
