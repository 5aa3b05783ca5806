//! Sources and sinks: how records enter and leave a pipeline.
//!
//! A source is a [`SourceReader`]: it produces batches from a position it can report and
//! restore, so a restored pipeline re-reads exactly what followed its checkpoint. A sink
//! encodes batches into lines ([`encode`]) that are staged at a barrier and appended to their
//! destination only when the checkpoint completes (the two-phase commit lives in the sink
//! actor and the protocol core).
//!
//! A source node with `parallelism = n` has `n` readers of the same input, each reading its
//! [`Share`]: the generator by sensor (so each sensor's readings stay in one subtask, in
//! order), the file source by record number. Each has its own position.

pub mod encode;
pub mod file_source;
pub mod generator;
pub mod mqtt;
pub mod mqtt_sink;

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
    /// Step past the next `n` records without building them (a re-read that sends nothing
    /// of them); how many there were. By default they are read and dropped.
    fn skip(&mut self, n: usize) -> Result<usize, SourceError> {
        Ok(self.next_batch(n)?.map_or(0, |b| b.len()))
    }
    /// Whether input is there to read now. An unbounded source (MQTT) says no while it
    /// waits for messages; the source actor then asks again shortly, never blocking.
    fn ready(&self) -> bool {
        true
    }
    /// A checkpoint whose snapshot of this source was at `position` completed: what
    /// precedes it will never be read again (a write-ahead log may let it go).
    fn release(&mut self, position: &[u8]) {
        let _ = position;
    }
    /// Have `waker` called when [`SourceReader::ready`] may have become true.
    fn set_waker(&mut self, waker: mqtt::Waker) {
        let _ = waker;
    }
}

/// The part of a source's input one of its subtasks reads: subtask `index` of `count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Share {
    /// This subtask.
    pub index: usize,
    /// Subtasks of the source.
    pub count: usize,
}

impl Share {
    /// The whole input (a source with `parallelism = 1`).
    pub const WHOLE: Share = Share { index: 0, count: 1 };

    /// Whether item `n` (a sensor, a record number) is in this share.
    pub fn owns(self, n: u64) -> bool {
        n % self.count as u64 == self.index as u64
    }
}
