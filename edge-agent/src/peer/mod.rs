//! Agents talking to agents (SPEC §12): links with mutual TLS and pinned certificates
//! ([`tls`], [`link`]), framed messages ([`wire`]), the durable register acceptors
//! ([`store`]) and the witness, an agent that is an acceptor and nothing else ([`witness`]).
//!
//! Built so far: links, the witness and `weir cert`. Not yet: the data agents' side (a
//! pipeline's owner driving [`weir_runtime::protocol::lease::Member`] over these links, and
//! checkpoint shipping on bulk links).

pub mod link;
pub mod replicated;
pub mod service;
pub mod store;
pub mod tls;
pub mod wire;
pub mod witness;
