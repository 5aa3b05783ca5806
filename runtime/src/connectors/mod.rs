//! Sources and sinks: how records enter and leave a pipeline.
//!
//! A source is a [`SourceReader`]: it produces batches from a position it can report and
//! restore, so a restored pipeline re-reads exactly what followed its checkpoint. A sink
//! encodes batches into lines ([`encode`]) that are staged at a barrier and appended to their
//! destination only when the checkpoint completes (the two-phase commit lives in the sink
//! actor and the protocol core).

pub mod encode;
pub mod file_source;
pub mod generator;

use crate::batch::{Batch, SchemaRef};

/// A failure reading a source, naming the source and the place.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
#[error("{0}")]
pub struct SourceError(pub String);

/// A replayable source of batches.
pub trait SourceReader: Send {
    /// The schema of every batch.
    fn schema(&self) -> SchemaRef;
    /// The next batch of at most `max` records, or `None` at the end of the input.
    fn next_batch(&mut self, max: usize) -> Result<Option<Batch>, SourceError>;
    /// The read position, encoded, for a snapshot.
    fn position(&self) -> Vec<u8>;
    /// Continue from a position returned by `position` (possibly in an earlier run).
    fn seek(&mut self, position: &[u8]) -> Result<(), SourceError>;
}
