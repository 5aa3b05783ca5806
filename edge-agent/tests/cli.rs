//! The command line as a user meets it: a mistake in the flags or the subcommand is one line
//! `weir: ...` on stderr with exit code 2, `--help` and `--version` print as usual with exit 0,
//! and no failure line carries a raw control character.

use std::process::{Command, Output};

fn weir(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_weir"))
        .args(args)
        .env_remove("WEIR_DATA_DIR")
        .output()
        .expect("weir runs")
}

/// Asserts exit code 2, nothing on stdout, and that stderr is exactly the one line `weir: {message}`.
fn assert_one_line(output: &Output, message: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr: {stderr}");
    assert_eq!(output.stdout, b"");
    assert_eq!(stderr, format!("weir: {message}\n"));
}

#[test]
fn an_unknown_flag_is_one_line_with_the_usage() {
    assert_one_line(
        &weir(&["run", "pipeline.toml", "--injekt", "panic:a:1"]),
        "unexpected argument '--injekt' found; tip: a similar argument exists: '--inject'; \
         usage: weir run --inject <FAULT> <CONFIG>",
    );
    assert_one_line(
        &weir(&["--frobnicate"]),
        "unexpected argument '--frobnicate' found; usage: weir <COMMAND>",
    );
}

#[test]
fn a_missing_argument_is_one_line() {
    assert_one_line(
        &weir(&["validate"]),
        "the following required arguments were not provided: <CONFIG>; usage: weir validate <CONFIG>",
    );
    assert_one_line(
        &weir(&["run", "pipeline.toml", "--data-dir"]),
        "a value is required for '--data-dir <DATA_DIR>' but none was supplied",
    );
    assert_one_line(
        &weir(&[]),
        "missing subcommand: expected run, validate, agent, cert, witness, promote, status or top; see weir --help",
    );
}

#[test]
fn a_bad_subcommand_is_one_line() {
    assert_one_line(
        &weir(&["valdate", "pipeline.toml"]),
        "unrecognized subcommand 'valdate'; tip: a similar subcommand exists: 'validate'; usage: weir <COMMAND>",
    );
}

#[test]
fn help_and_version_print_as_usual() {
    for args in [&["--help"][..], &["validate", "--help"], &["--version"]] {
        let output = weir(args);
        assert_eq!(output.status.code(), Some(0), "{args:?}");
        assert_eq!(output.stderr, b"", "{args:?}");
        assert!(String::from_utf8_lossy(&output.stdout).lines().count() >= 1, "{args:?}");
    }
    let help = String::from_utf8(weir(&["validate", "--help"]).stdout).unwrap();
    assert!(help.contains("Usage: weir validate [OPTIONS] <CONFIG>"), "{help}");
    assert!(help.contains("--data-dir <DATA_DIR>"), "{help}");
    assert_eq!(
        String::from_utf8(weir(&["--version"]).stdout).unwrap(),
        format!("weir {}\n", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn control_characters_in_a_failure_are_escaped() {
    // A config path holding a line break, a carriage return and a terminal escape.
    let dir = tempfile::tempdir().expect("a temporary folder");
    let path = dir.path().join("a\nb\rc\u{1b}[31md.toml");
    let output = weir(&["validate", path.to_str().unwrap()]);
    assert_one_line(
        &output,
        &format!(
            "config: cannot read {}/a\\nb\\rc\\x1b[31md.toml: No such file or directory",
            dir.path().display()
        ),
    );
    // (clap itself drops terminal escapes from the arguments it quotes.)
    assert_one_line(
        &weir(&["run", "--x\ry\nz\tw"]),
        "unexpected argument '--x\\ry\\nz\\tw' found; tip: to pass '--x\\ry\\nz\\tw' as a value, use \
         '-- --x\\ry\\nz\\tw'; usage: weir run [OPTIONS] <CONFIG>",
    );
}
