//! Fault injection for tests and chaos drills: `weir run CONFIG --inject panic:NODE:K`
//! (repeatable) panics once inside subtask 0 of node NODE when that subtask has processed K
//! records in the current attempt (`panic:NODE/S:K` for subtask S). A subtask without an
//! injection checks an empty list per batch, which costs nothing measurable.

use std::fmt;

use crate::sync::atomic::{AtomicBool, Ordering};

/// One injected fault.
#[derive(Debug)]
pub struct Injection {
    /// The node.
    pub node: String,
    /// The subtask.
    pub subtask: usize,
    /// Fire once the subtask has processed (sources: read) this many records.
    pub after_records: u64,
    fired: AtomicBool,
}

impl Injection {
    /// Parse `panic:NODE:K` or `panic:NODE/S:K`.
    pub fn parse(spec: &str) -> Result<Injection, String> {
        let bad = || format!("invalid fault \"{spec}\": expected panic:NODE:K or panic:NODE/SUBTASK:K");
        let rest = spec.strip_prefix("panic:").ok_or_else(bad)?;
        let (target, count) = rest.rsplit_once(':').ok_or_else(bad)?;
        let after_records = count.parse().map_err(|_| bad())?;
        let (node, subtask) = match target.split_once('/') {
            Some((node, s)) => (node, s.parse().map_err(|_| bad())?),
            None => (target, 0),
        };
        if node.is_empty() {
            return Err(bad());
        }
        Ok(Injection { node: node.to_owned(), subtask, after_records, fired: AtomicBool::new(false) })
    }

    /// Whether this fault fires now, `processed` records into the attempt. True at most once.
    pub fn fire(&self, processed: u64) -> bool {
        processed >= self.after_records && !self.fired.swap(true, Ordering::Relaxed)
    }
}

impl fmt::Display for Injection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "panic:{}/{}:{}", self.node, self.subtask, self.after_records)
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
            "invalid fault \"crash:a:1\": expected panic:NODE:K or panic:NODE/SUBTASK:K"
        );
        assert!(Injection::parse("panic:a:x").is_err());
        assert!(Injection::parse("panic::3").is_err());
    }
}
