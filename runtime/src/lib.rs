//! # weir-runtime
//!
//! The runtime behind the `weir` agent: actors, the LMDB log, operators, connectors and the
//! pipeline runner, built around [`protocol`] (the `weir-protocol` crate in
//! `runtime/protocol/`), the sans-IO core of Weir's checkpoint protocol that
//! `weir-protocol-model` checks exhaustively with stateright. The actors carry out the
//! actions the core returns.

// Unsafe code is denied workspace-wide; the one exception is opening the LMDB environment
// (`log::Log::open`), and the protocol core forbids it outright.

#[cfg(feature = "io")]
pub mod actors;
pub mod batch;
pub mod codec;
#[cfg(feature = "io")]
pub mod connectors;
#[cfg(feature = "io")]
pub mod log;
pub mod operators;
pub mod pipeline;
pub use weir_protocol as protocol;
pub mod sync;
