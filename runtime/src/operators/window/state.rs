//! A window operator's state, everything a snapshot holds, in working form: each input's
//! event-time progress (from which the watermark is derived), the record counters, the key
//! table, the window slots and the windows by end.
//!
//! Above the key table and the slots; the layers that assign records, fire windows and
//! snapshot work on it.

use serde::{Deserialize, Serialize};

use super::keys::Keys;
use super::slots::{Pending, Slots};

/// Everything a snapshot holds, in working form.
#[derive(Debug)]
pub(super) struct State {
    pub(super) inputs: Vec<InputWatermark>,
    pub(super) late: u64,
    /// Arrival number of the next record that is not late.
    pub(super) next_arrival: u64,
    pub(super) keys: Keys,
    pub(super) slots: Slots,
    pub(super) pending: Pending,
}

impl State {
    /// The state of a fresh operator with `inputs` input channels.
    pub(super) fn new(inputs: usize) -> State {
        State {
            inputs: vec![InputWatermark { max_ts: i64::MIN, ended: false }; inputs],
            late: 0,
            next_arrival: 0,
            keys: Keys::default(),
            slots: Slots::default(),
            pending: Pending::default(),
        }
    }
}

/// One input channel's event-time progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct InputWatermark {
    /// Largest event time seen (`i64::MIN` before any).
    pub(super) max_ts: i64,
    pub(super) ended: bool,
}

/// The watermark of `inputs`: the smallest over those that have not ended.
pub(super) fn watermark_of(inputs: &[InputWatermark], max_out_of_order_ms: i64) -> i64 {
    inputs
        .iter()
        .filter(|i| !i.ended)
        .map(|i| i.max_ts.saturating_sub(max_out_of_order_ms))
        .min()
        .unwrap_or(i64::MAX)
}
