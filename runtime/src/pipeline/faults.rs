//! Fault injection for tests and chaos drills: `weir run CONFIG --inject KIND:NODE[/S]:N`
//! (repeatable) fires once in subtask S (default 0) of node NODE:
//!
//! - `panic:NODE:K`: a panic when the subtask has processed K records in the current attempt;
//! - `snapshot:NODE:N`: a panic while it takes its N-th snapshot (a crash during a snapshot);
//! - `commit:NODE:N`: a sink panics at its N-th commit, after the output is pre-committed
//!   (staged durably) and before it is appended (a crash between pre-commit and commit);
//! - `write-error:NODE:N`: its N-th log write fails as if LMDB had returned an error;
//! - `credit:NODE:N`: a panic as it handles its N-th flow-control credit: a bug in the
//!   runtime's own message handling rather than in operator code;
//! - `hang:NODE:K`: when the subtask has processed K records, its thread blocks for
//!   [`HANG`] (an operator stuck in a call), then goes on: with a standby, the progress
//!   timeout has it taken over meanwhile, and the woken primary must have no effect.
//!
//! Every kind fires in sources, transforms and sinks except `commit`, which fires only in
//! sinks (the only subtasks that commit), and `credit`, which fires only where credits
//! arrive (sources and transforms: a sink has no outputs, so it receives none);
//! [`Injection::check_node`] refuses them elsewhere. A source's log writes are its
//! snapshots, so there `snapshot` and `write-error` count the same events. The run report
//! says which faults fired: one that did not tested nothing.
//!
//! A subtask without an injection checks an empty list, which costs nothing measurable.

use std::fmt;

use crate::pipeline::spec::NodeKind;
use crate::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Where a fault fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// A panic after K records.
    Panic,
    /// A panic inside the N-th snapshot.
    Snapshot,
    /// A panic between pre-commit and the N-th commit (sinks).
    Commit,
    /// The N-th log write fails.
    WriteError,
    /// A panic in the handler of the N-th credit.
    Credit,
    /// The thread blocks for [`HANG`] after K records.
    Hang,
}

/// How long a `hang` fault blocks its subtask's thread.
pub const HANG: std::time::Duration = std::time::Duration::from_secs(3);

impl FaultKind {
    const ALL: [(FaultKind, &'static str); 6] = [
        (FaultKind::Panic, "panic"),
        (FaultKind::Snapshot, "snapshot"),
        (FaultKind::Commit, "commit"),
        (FaultKind::WriteError, "write-error"),
        (FaultKind::Credit, "credit"),
        (FaultKind::Hang, "hang"),
    ];

    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        FaultKind::ALL.iter().find(|(k, _)| *k == self).map_or("?", |(_, n)| n)
    }
}

/// One injected fault.
#[derive(Debug)]
pub struct Injection {
    /// Where it fires.
    pub kind: FaultKind,
    /// The node.
    pub node: String,
    /// The subtask.
    pub subtask: usize,
    /// Fire at this count: records processed (sources: read), or the N-th snapshot, commit
    /// or write.
    pub after_records: u64,
    /// As given on the command line, for messages and the report.
    pub text: String,
    fired: AtomicBool,
    /// Events of its kind seen so far, for the kinds that count them here (`credit`).
    seen: AtomicU64,
}

impl Injection {
    /// Parse `KIND:NODE:N` or `KIND:NODE/S:N`.
    pub fn parse(spec: &str) -> Result<Injection, String> {
        let bad = || {
            format!(
                "invalid fault \"{spec}\": expected KIND:NODE:N or KIND:NODE/SUBTASK:N, KIND one of {}",
                FaultKind::ALL.map(|(_, name)| name).join(", ")
            )
        };
        let (kind, rest) = spec.split_once(':').ok_or_else(bad)?;
        let kind = FaultKind::ALL.iter().find(|(_, n)| *n == kind).map(|(k, _)| *k).ok_or_else(bad)?;
        let (target, count) = rest.rsplit_once(':').ok_or_else(bad)?;
        let after_records = count.parse().map_err(|_| bad())?;
        let (node, subtask) = match target.split_once('/') {
            Some((node, s)) => (node, s.parse().map_err(|_| bad())?),
            None => (target, 0),
        };
        if node.is_empty() {
            return Err(bad());
        }
        Ok(Injection {
            kind,
            node: node.to_owned(),
            subtask,
            after_records,
            text: spec.to_owned(),
            fired: AtomicBool::new(false),
            seen: AtomicU64::new(0),
        })
    }

    /// Whether this fault can fire in a node of `kind`: an error naming both if it cannot,
    /// since a drill whose fault never fires tests nothing.
    pub fn check_node(&self, kind: &NodeKind) -> Result<(), String> {
        let (sink, what) = match kind {
            NodeKind::Source(_) => (false, "a source"),
            NodeKind::Transform(_) => (false, "a transform"),
            NodeKind::Sink(_) => (true, "a sink"),
        };
        match self.kind {
            FaultKind::Commit if !sink => {
                Err(format!("commit faults fire only in sinks; \"{}\" is {what}", self.node))
            }
            FaultKind::Credit if sink => Err(format!(
                "credit faults fire only in sources and transforms (a sink receives no credits); \"{}\" is {what}",
                self.node
            )),
            _ => Ok(()),
        }
    }

    /// Whether this fault fires now, `processed` records into the attempt. True at most once.
    pub fn fire(&self, processed: u64) -> bool {
        processed >= self.after_records && !self.fired.swap(true, Ordering::Relaxed)
    }

    /// Count one more event of its kind: whether it fires now. True at most once.
    pub fn tick(&self) -> bool {
        self.fire(self.seen.fetch_add(1, Ordering::Relaxed) + 1)
    }

    /// Whether it fired.
    pub fn fired(&self) -> bool {
        self.fired.load(Ordering::Relaxed)
    }
}

impl fmt::Display for Injection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}/{}:{}", self.kind.name(), self.node, self.subtask, self.after_records)
    }
}

impl Injection {
    /// `--inject` values, each parsed and checked against `spec` (the node exists, has the
    /// subtask, and can have that fault); every error names the value.
    pub fn parse_all(
        spec: &crate::pipeline::spec::PipelineSpec,
        inject: &[String],
    ) -> Result<Vec<std::sync::Arc<Injection>>, String> {
        inject
            .iter()
            .map(|text| {
                let fault = Injection::parse(text).map_err(|e| format!("--inject: {e}"))?;
                let node =
                    spec.nodes.iter().find(|n| n.name == fault.node).ok_or_else(|| {
                        format!("--inject {text}: no node \"{}\" in the pipeline", fault.node)
                    })?;
                if fault.subtask >= node.parallelism {
                    return Err(format!(
                        "--inject {text}: node \"{}\" has {} subtask(s), numbered from 0",
                        fault.node, node.parallelism
                    ));
                }
                fault.check_node(&node.kind).map_err(|e| format!("--inject {text}: {e}"))?;
                Ok(std::sync::Arc::new(fault))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_fires_once() {
        let i = Injection::parse("panic:windows:1000").unwrap();
        assert_eq!((i.node.as_str(), i.subtask, i.after_records), ("windows", 0, 1000));
        assert!(!i.fire(999));
        assert!(i.fire(1000));
        assert!(!i.fire(5000));
        assert_eq!(Injection::parse("panic:a/2:7").unwrap().subtask, 2);
        assert_eq!(
            Injection::parse("crash:a:1").unwrap_err(),
            "invalid fault \"crash:a:1\": expected KIND:NODE:N or KIND:NODE/SUBTASK:N, KIND one of panic, snapshot, commit, write-error, credit, hang"
        );
        assert_eq!(Injection::parse("write-error:sink/1:2").unwrap().kind, FaultKind::WriteError);
        assert_eq!(Injection::parse("commit:out:3").unwrap().to_string(), "commit:out/0:3");
        assert!(Injection::parse("panic:a:x").is_err());
        assert!(Injection::parse("panic::3").is_err());
    }

    #[test]
    fn fired_is_remembered_and_the_text_kept() {
        let i = Injection::parse("snapshot:a/1:2").unwrap();
        assert_eq!(i.text, "snapshot:a/1:2");
        assert!(!i.fired());
        assert!(!i.fire(1));
        assert!(!i.fired());
        assert!(i.fire(2));
        assert!(i.fired());
    }

    #[test]
    fn commit_faults_are_refused_outside_sinks() {
        use crate::pipeline::spec::{FileFormat, OutputFormat, SinkSpec, TransformSpec};
        let format = OutputFormat { encoding: FileFormat::Csv, float_precision: None };
        let sink = NodeKind::Sink(SinkSpec::Stdout { format });
        let transform = NodeKind::Transform(TransformSpec::Filter { condition: "true".into() });
        let commit = Injection::parse("commit:windows:1").unwrap();
        assert_eq!(
            commit.check_node(&transform).unwrap_err(),
            "commit faults fire only in sinks; \"windows\" is a transform"
        );
        assert_eq!(commit.check_node(&sink), Ok(()));
        for kind in ["panic", "snapshot", "write-error"] {
            let fault = Injection::parse(&format!("{kind}:windows:1")).unwrap();
            assert_eq!(fault.check_node(&transform), Ok(()), "{kind}");
            assert_eq!(fault.check_node(&sink), Ok(()), "{kind}");
        }
        let credit = Injection::parse("credit:out:1").unwrap();
        assert_eq!(
            credit.check_node(&sink).unwrap_err(),
            "credit faults fire only in sources and transforms (a sink receives no credits); \"out\" is a sink"
        );
        assert_eq!(credit.check_node(&transform), Ok(()));
    }

    #[test]
    fn a_credit_fault_counts_its_own_events_and_fires_once() {
        let i = Injection::parse("credit:windows:3").unwrap();
        assert_eq!(i.kind, FaultKind::Credit);
        assert_eq!([i.tick(), i.tick(), i.tick(), i.tick()], [false, false, true, false]);
        assert!(i.fired());
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use crate::sync::{Arc, thread};

    /// Three subtask threads past the threshold ask at once: the fault fires exactly once.
    #[test]
    fn loom_injection_fires_once_across_threads() {
        loom::model(|| {
            let fault = Arc::new(Injection::parse("panic:a:5").unwrap());
            let threads: Vec<_> = [5, 6, 7]
                .into_iter()
                .map(|processed| {
                    let fault = fault.clone();
                    thread::spawn(move || fault.fire(processed))
                })
                .collect();
            let fired = threads.into_iter().map(|t| t.join().unwrap()).filter(|&f| f).count();
            assert_eq!(fired, 1);
            assert!(!fault.fire(8));
        });
    }
}
