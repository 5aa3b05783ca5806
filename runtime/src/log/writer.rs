//! The log's single writer thread (DESIGN.md §6: one LMDB writer at a time, so appends are
//! batched): subtasks queue writes with a completion callback; the thread applies everything
//! queued in one transaction, commits, and only then calls the callbacks.

use std::sync::mpsc;

use super::{Done, Log, LogError, WriteOp};

/// The single writer: a thread that applies queued writes in batches and reports each batch
/// durable only after its transaction committed.
#[derive(Clone)]
pub struct Writer {
    queue: mpsc::Sender<(Vec<WriteOp>, Done)>,
}

impl Writer {
    /// Start the writer thread for `log`.
    pub fn start(log: Log) -> Writer {
        let (queue, rx) = mpsc::channel::<(Vec<WriteOp>, Done)>();
        std::thread::Builder::new()
            .name("weir-log-writer".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    while let Ok(more) = rx.try_recv() {
                        batch.push(more);
                        if batch.len() >= 256 {
                            break;
                        }
                    }
                    let result =
                        log.transaction(batch.iter().flat_map(|(ops, _)| ops)).map_err(std::sync::Arc::new);
                    for (_, done) in batch {
                        done(result.clone());
                    }
                }
            })
            .expect("spawning the log writer thread");
        Writer { queue }
    }

    /// Wait until every write queued before this call has been applied (or failed).
    pub fn flush(&self) {
        let (tx, rx) = mpsc::channel();
        self.submit(
            Vec::new(),
            Box::new(move |_| {
                let _ = tx.send(());
            }),
        );
        let _ = rx.recv();
    }

    /// Queue `ops`; `done` is called once they are durable, or with the error that stopped them.
    pub fn submit(&self, ops: Vec<WriteOp>, done: Done) {
        if let Err(mpsc::SendError((_, done))) = self.queue.send((ops, done)) {
            done(Err(std::sync::Arc::new(LogError::WriterGone)));
        }
    }
}
