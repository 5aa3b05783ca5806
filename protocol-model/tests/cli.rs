//! `weir-model` as a user runs it: verdicts, exit codes and traces.

use std::process::{Command, Output};

fn weir_model(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_weir-model")).args(args).output().expect("weir-model runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn check_exits_zero_and_lists_every_property_when_all_hold() {
    // A scope small enough for a quick run (9 thousand states, under a second); the larger
    // scopes are checked in checkpoint.rs.
    let out = weir_model(&[
        "check",
        "checkpoint",
        "--batches",
        "1",
        "--ticks",
        "1",
        "--timeouts",
        "0",
        "--crashes",
        "1",
    ]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    for line in ["states explored: ", "unique states: ", "seconds: ", "exploration: whole state space"] {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
    let scope = weir_protocol_model::checkpoint::Scope {
        batches_per_source: 1,
        ticks: 1,
        timeouts: 0,
        crashes: 1,
        ..Default::default()
    };
    for property in weir_protocol_model::props::properties_for(&scope) {
        let verdict =
            if property.expectation == stateright::Expectation::Sometimes { "witnessed" } else { "holds" };
        assert!(
            text.lines().any(|l| l.trim_start().starts_with(verdict) && l.ends_with(property.name)),
            "no \"{verdict}\" line for {} in:\n{text}",
            property.name
        );
    }
}

#[test]
fn check_with_a_mutant_exits_non_zero_with_a_numbered_trace_naming_the_property() {
    let out = weir_model(&["check", "checkpoint", "--mutant", "no-alignment"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("VIOLATED         S1 local alignment"), "{text}");
    assert!(text.contains("counterexample for \"S1 local alignment\":"), "{text}");
    assert!(text.contains("  1. ") && text.contains("task: Snapshot"), "{text}");
}

#[test]
fn unknown_mutant_is_a_one_line_error_with_exit_code_2() {
    let out = weir_model(&["check", "checkpoint", "--mutant", "no-such-thing"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("weir-model: unknown mutant \"no-such-thing\" (known: no-alignment,"), "{err}");
}
