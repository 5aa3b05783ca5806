//! What `weir validate` and `weir run` check on the machine before anything runs, through the
//! real binary: input files, the data directory (from the config, `--data-dir` or
//! `WEIR_DATA_DIR`), the log map against the address space, and the file sink's output file
//! (symbolic links refused unless allowed, the mode it is created with).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A generator of `records` readings into a file sink at `out/o.csv`, with `top` before the
/// tables and `sink` at the end of the sink's table.
fn generator_config(dir: &Path, top: &str, sink: &str) -> PathBuf {
    let text = format!(
        "{top}\n[sources.readings]\ntype = \"generator\"\nshape = \"sensors\"\nrecords = 50\n\n\
         [sinks.out]\ntype = \"file\"\ninputs = [\"readings\"]\npath = \"out/o.csv\"\nformat = \"csv\"\n{sink}"
    );
    let path = dir.join("pipeline.toml");
    std::fs::write(&path, text).expect("the config is written");
    path
}

/// A file source reading `in.csv` next to the config.
fn file_source_config(dir: &Path) -> PathBuf {
    let text = "data_dir = \"data\"\n[sources.lines]\ntype = \"file\"\npath = \"in.csv\"\nformat = \"csv\"\n\
                schema = { sensor = \"string\", ts = \"int\", value = \"float\" }\n\
                [sinks.out]\ntype = \"stdout\"\ninputs = [\"lines\"]\n";
    let path = dir.join("pipeline.toml");
    std::fs::write(&path, text).expect("the config is written");
    path
}

/// `weir ARGS`, through `sh -c "{shell}; exec weir ARGS"` (for `ulimit` and `umask`).
fn weir_in(shell: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg(format!("{shell} && exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_weir"))
        .args(args);
    command.env_remove("WEIR_DATA_DIR").envs(env.iter().copied());
    command.output().expect("weir runs")
}

fn weir(args: &[&str]) -> Output {
    weir_in("true", args, &[])
}

fn assert_rejected(output: &Output, message: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr: {stderr}");
    assert_eq!(stderr, format!("weir: {message}\n"));
}

fn assert_ok(output: &Output) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "stderr: {stderr}");
}

fn s(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 path")
}

#[test]
fn a_missing_input_file_is_one_line_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let config = file_source_config(dir.path());
    let message = format!(
        "config: sources.lines.path: cannot read {}/in.csv: No such file or directory (line 4)",
        dir.path().display()
    );
    assert_rejected(&weir(&["validate", s(&config)]), &message);
    assert_rejected(&weir(&["run", s(&config)]), &message);
    assert!(!dir.path().join("data").exists(), "run opened its log before refusing");

    std::fs::create_dir(dir.path().join("in.csv")).unwrap();
    assert_rejected(
        &weir(&["validate", s(&config)]),
        &format!(
            "config: sources.lines.path: {}/in.csv is a directory, not a file (line 4)",
            dir.path().display()
        ),
    );
    std::fs::remove_dir(dir.path().join("in.csv")).unwrap();
    std::fs::write(dir.path().join("in.csv"), "a,1,2.0\n").unwrap();
    assert_ok(&weir(&["validate", s(&config)]));
}

#[test]
fn the_data_dir_must_be_or_become_a_writable_directory() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    std::fs::write(&file, "").unwrap();
    let f = file.display();

    // From the config; it need not exist yet, and validate does not create it.
    let config = generator_config(dir.path(), "data_dir = \"state/log\"", "");
    assert_ok(&weir(&["validate", s(&config)]));
    assert!(!dir.path().join("state").exists(), "validate created the data dir");
    let config = generator_config(dir.path(), "data_dir = \"file/log\"", "");
    let message = format!("config: data_dir: cannot create {f}/log: {f} is not a directory (line 1)");
    assert_rejected(&weir(&["validate", s(&config)]), &message);
    assert_rejected(&weir(&["run", s(&config)]), &message);
    let config = generator_config(dir.path(), "data_dir = \"file\"", "");
    assert_rejected(
        &weir(&["validate", s(&config)]),
        &format!("config: data_dir: {f} is not a directory (line 1)"),
    );

    // From --data-dir or WEIR_DATA_DIR, which replace a good data_dir in the config.
    let config = generator_config(dir.path(), "data_dir = \"data\"", "");
    let message = format!("--data-dir: cannot create {f}/x: {f} is not a directory");
    assert_rejected(&weir(&["validate", s(&config), "--data-dir", &format!("{f}/x")]), &message);
    assert_rejected(&weir(&["run", s(&config), "--data-dir", &format!("{f}/x")]), &message);
    assert_rejected(
        &weir_in("true", &["validate", s(&config)], &[("WEIR_DATA_DIR", &format!("{f}/x"))]),
        &message,
    );

    // Not set anywhere: `data` next to the config.
    let config = generator_config(dir.path(), "", "");
    std::fs::write(dir.path().join("data"), "").unwrap();
    assert_rejected(
        &weir(&["validate", s(&config)]),
        &format!("config: data_dir (default): {}/data is not a directory", dir.path().display()),
    );
}

#[test]
fn a_log_map_beyond_the_address_space_limit_is_refused_with_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let config = generator_config(dir.path(), "map_size_mb = 100000", "");
    // 100,000 MiB of address space is there on a 64-bit machine without a limit ...
    assert_ok(&weir(&["validate", s(&config)]));
    // ... but not under `ulimit -v` of 4,000,000 KiB (3906 MiB), where `run` used to stop with
    // "Cannot allocate memory" when it opened its log.
    let message = "config: map_size_mb: a log map of 100000 MiB does not fit in the address space this \
                   process may use (3906 MiB, ulimit -v); lower map_size_mb or raise the limit (line 1)";
    assert_rejected(&weir_in("ulimit -v 4000000", &["validate", s(&config)], &[]), message);
    assert_rejected(&weir_in("ulimit -v 4000000", &["run", s(&config)], &[]), message);
    assert!(!dir.path().join("data").exists(), "run opened its log before refusing");

    // More than any machine has (2^40 MiB = 1 EiB).
    let config = generator_config(dir.path(), "map_size_mb = 1099511627776", "");
    assert_rejected(
        &weir(&["validate", s(&config)]),
        "config: map_size_mb: a log map of 1099511627776 MiB does not fit in this machine's free address space; \
         lower map_size_mb (line 1)",
    );
}

#[test]
fn a_symlinked_output_is_refused_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("elsewhere.csv");
    std::fs::write(&target, "").unwrap();
    std::fs::create_dir(dir.path().join("out")).unwrap();
    let link = dir.path().join("out/o.csv");
    std::os::unix::fs::symlink(&target, &link).unwrap();

    let config = generator_config(dir.path(), "", "");
    let message = format!(
        "config: sinks.out.path: {} is a symbolic link; set allow_symlink = true to write through it (line 10)",
        link.display()
    );
    assert_rejected(&weir(&["validate", s(&config)]), &message);
    assert_rejected(&weir(&["run", s(&config)]), &message);
    assert_eq!(std::fs::read(&target).unwrap(), b"", "the link's target was written");

    let config = generator_config(dir.path(), "", "allow_symlink = true\n");
    assert_ok(&weir(&["run", s(&config)]));
    assert_eq!(std::fs::read_to_string(&target).unwrap().lines().count(), 50);
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
}

#[test]
fn the_output_file_is_created_with_its_mode_whatever_the_umask() {
    let mode = |dir: &Path| std::fs::metadata(dir.join("out/o.csv")).unwrap().permissions().mode() & 0o7777;

    let dir = tempfile::tempdir().unwrap();
    let config = generator_config(dir.path(), "", "");
    assert_ok(&weir_in("umask 002", &["run", s(&config)], &[]));
    assert_eq!(mode(dir.path()), 0o644);

    let dir = tempfile::tempdir().unwrap();
    let config = generator_config(dir.path(), "", "mode = \"0640\"\n");
    assert_ok(&weir_in("umask 077", &["run", s(&config)], &[]));
    assert_eq!(mode(dir.path()), 0o640);
    assert_eq!(std::fs::read_to_string(dir.path().join("out/o.csv")).unwrap().lines().count(), 50);

    // An existing file keeps its mode.
    std::fs::set_permissions(dir.path().join("out/o.csv"), std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::remove_dir_all(dir.path().join("data")).unwrap();
    assert_ok(&weir(&["run", s(&config)]));
    assert_eq!(mode(dir.path()), 0o600);
}
