//! The data directory under abuse: two processes on one directory, flipped bits and cut
//! files in a real `data.mdb`, a config changed under existing state, a full disk. Each case
//! ends in one of two ways only: one `weir: ` line and a non-zero exit, or exit 0 with exactly
//! the reference output. Exit 0 with a wrong output fails the test.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use weir_tests::*;

const RECORDS: u64 = 200_000;

fn weir(args: &[&str]) -> Output {
    Command::new(weir_bin()).args(args).output().expect("weir runs")
}

fn run(config: &Path) -> Output {
    weir(&["run", config.to_str().unwrap()])
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Wait (bounded) until `cond` holds.
fn wait_for(what: &str, deadline: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A rate-limited run killed with `kill -9` once it has committed some output: the data
/// directory and output of a run interrupted mid-way. Returns the config (without the rate
/// limit, a setting that is safe to change, so that reruns are quick).
fn interrupted_run(dir: &Path) -> PathBuf {
    let slow = sensor_window_config(dir, RECORDS, 50, Some(100_000));
    let mut child = Command::new(weir_bin()).arg("run").arg(&slow).stderr(Stdio::null()).spawn().unwrap();
    let out = dir.join("out/windows.csv");
    wait_for("committed output", Duration::from_secs(20), || {
        std::fs::metadata(&out).is_ok_and(|m| m.len() > 0)
    });
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(sorted_lines(&out).len() < reference_lines(RECORDS).len(), "the run finished before the kill");
    sensor_window_config(dir, RECORDS, 50, None)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &to.join(entry.file_name()));
        } else {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

/// The one thing that may never happen: exit 0 with a wrong output. A refusal must be one
/// line. Returns whether the run refused.
fn refused_or_exact(out: &Output, dir: &Path, reference: &[String], case: &str) -> bool {
    let err = stderr(out);
    if out.status.success() {
        assert_eq!(
            sorted_lines(&dir.join("out/windows.csv")),
            reference,
            "{case}: exit 0 with a wrong output"
        );
        false
    } else {
        assert_eq!(out.status.code(), Some(1), "{case}: {err}");
        assert_eq!(err.lines().count(), 1, "{case}: not one line: {err}");
        assert!(err.starts_with("weir: "), "{case}: {err}");
        true
    }
}

#[test]
fn a_second_process_on_the_same_data_dir_is_refused_naming_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let config = sensor_window_config(dir.path(), RECORDS, 100, Some(50_000));
    let mut first = Command::new(weir_bin()).arg("run").arg(&config).stderr(Stdio::null()).spawn().unwrap();
    let lock = dir.path().join("data/weir.lock");
    let pid = first.id().to_string();
    wait_for("the first run's lock", Duration::from_secs(20), || {
        std::fs::read_to_string(&lock).is_ok_and(|s| s == pid)
    });
    let second = run(&config);
    let running = first.try_wait().unwrap().is_none();
    first.kill().unwrap();
    first.wait().unwrap();
    assert!(running, "the first run ended before the second started: the check was vacuous");
    assert_eq!(second.status.code(), Some(2), "{}", stderr(&second));
    assert_eq!(
        stderr(&second),
        format!(
            "weir: run failed: log: {} is in use by another weir process (pid {pid}); stop it first, or use another --data-dir\n",
            dir.path().join("data").display()
        )
    );
    // The lock died with the first process (kill -9): a rerun finishes exactly.
    let out = run(&config);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(sorted_lines(&dir.path().join("out/windows.csv")), reference_lines(RECORDS));
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir.path().join("data")), 0o700);
    assert_eq!(mode(&dir.path().join("data/data.mdb")), 0o600);
}

/// A small deterministic generator (xorshift), seeded per test.
fn next(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

#[test]
fn a_flipped_bit_in_a_real_data_mdb_is_refused_or_harmless_never_a_wrong_output() {
    let template = tempfile::tempdir().unwrap();
    let config = interrupted_run(template.path());
    let reference = reference_lines(RECORDS);
    let data = std::fs::read(template.path().join("data/data.mdb")).unwrap();
    // Bits in bytes that hold something: flips in zeroed free space change nothing.
    let used: Vec<usize> = (0..data.len()).filter(|&i| data[i] != 0).collect();
    let mut seed = 0x5eed_u64;
    let (mut refused, mut exact) = (0, 0);
    for round in 0..40 {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(template.path(), dir.path());
        let at = used[(next(&mut seed) % used.len() as u64) as usize];
        let bit = next(&mut seed) % 8;
        let mut bytes = data.clone();
        bytes[at] ^= 1 << bit;
        std::fs::write(dir.path().join("data/data.mdb"), bytes).unwrap();
        let out = run(&dir.path().join(config.file_name().unwrap()));
        let case = format!("round {round}: bit {bit} of byte {at}");
        if refused_or_exact(&out, dir.path(), &reference, &case) {
            refused += 1;
        } else {
            exact += 1;
        }
    }
    eprintln!("40 flipped bits: {refused} refused, {exact} exact");
    assert!(refused > 0, "no flip was noticed: the flips missed every record, the test is vacuous");
}

#[test]
fn a_truncated_data_mdb_is_one_line_never_a_sigbus() {
    let template = tempfile::tempdir().unwrap();
    let config = interrupted_run(template.path());
    let reference = reference_lines(RECORDS);
    let data = std::fs::read(template.path().join("data/data.mdb")).unwrap();
    let mut refused = 0;
    for cut in [data.len() / 4, data.len() / 2, data.len() * 3 / 4, 4096 + 7, 100] {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(template.path(), dir.path());
        std::fs::write(dir.path().join("data/data.mdb"), &data[..cut]).unwrap();
        let out = run(&dir.path().join(config.file_name().unwrap()));
        if refused_or_exact(&out, dir.path(), &reference, &format!("cut at {cut} of {}", data.len())) {
            let err = stderr(&out);
            assert!(err.contains("data.mdb") && err.contains("the data directory is damaged"), "{err}");
            refused += 1;
        }
    }
    assert!(refused >= 3, "only {refused} of 5 cuts were noticed");
}

#[test]
fn a_changed_config_on_an_existing_data_dir_names_the_setting_and_fresh_starts_over() {
    let dir = tempfile::tempdir().unwrap();
    let config = interrupted_run(dir.path());
    let text = std::fs::read_to_string(&config).unwrap();
    let out_file = dir.path().join("out/windows.csv");
    let before = std::fs::read(&out_file).unwrap();
    for (from, to, setting) in [
        ("size_ms = 1000", "size_ms = 2000", "transforms.windows.size_ms was 1000, is now 2000"),
        (
            &format!("records = {RECORDS}"),
            "records = 20000",
            "sources.readings.records was 200000, is now 20000",
        ),
        ("format = \"csv\"", "format = \"json\"", "sinks.out.format was \"csv\", is now \"json\""),
    ] {
        let changed = dir.path().join("changed.toml");
        assert!(text.contains(from));
        std::fs::write(&changed, text.replace(from, to)).unwrap();
        let out = run(&changed);
        assert_eq!(out.status.code(), Some(2), "{from} -> {to}: {}", stderr(&out));
        assert_eq!(
            stderr(&out),
            format!(
                "weir: run failed: log: {} holds the state of a different pipeline: {setting}; run with --fresh to start afresh (the output is written again from the start) or use another --data-dir\n",
                dir.path().join("data").display()
            )
        );
        assert_eq!(std::fs::read(&out_file).unwrap(), before, "{from} -> {to}: the output was touched");
    }
    // A safe change (the rate limit and the checkpoint interval) resumes exactly.
    std::fs::write(dir.path().join("safe.toml"), text.replace("interval_ms = 50", "interval_ms = 70"))
        .unwrap();
    let out = run(&dir.path().join("safe.toml"));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(sorted_lines(&out_file), reference_lines(RECORDS));
    // --fresh starts afresh with the new settings: the output is the 20,000-reading job's.
    std::fs::write(
        dir.path().join("fewer.toml"),
        text.replace(&format!("records = {RECORDS}"), "records = 20000"),
    )
    .unwrap();
    let out = weir(&["run", "--fresh", dir.path().join("fewer.toml").to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(sorted_lines(&out_file), reference_lines(20_000));
}

/// Mount a small tmpfs at `at`; false if this process may not mount.
fn mount_tmpfs(at: &Path, size: &str) -> bool {
    std::fs::create_dir_all(at).unwrap();
    Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs", at.to_str().unwrap()])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

struct Unmount(PathBuf);
impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_under_the_data_dir_is_one_line_at_once_and_a_rerun_after_freeing_space_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk");
    if !mount_tmpfs(&disk, "1m") {
        // Mounting needs root (CI runs as root). Elsewhere the case cannot be built here.
        assert!(!is_root(), "running as root, but mounting a tmpfs failed");
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let _unmount = Unmount(disk.clone());
    // Leave less room than the log needs.
    std::fs::write(disk.join("ballast"), vec![0u8; 900 << 10]).unwrap();
    let config = sensor_window_config(dir.path(), RECORDS, 50, None);
    let text =
        std::fs::read_to_string(&config).unwrap().replace("data_dir = \"data\"", "data_dir = \"disk/data\"");
    std::fs::write(&config, text).unwrap();
    let started = Instant::now();
    let out = run(&config);
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with(&format!(
            "weir: run failed: log: the disk holding {} is full",
            disk.join("data").display()
        )),
        "{err}"
    );
    // Not retried as an operator failure (which took 5 to 12 s before it gave up).
    eprintln!("a full disk stopped the run after {} ms", took.as_millis());
    std::fs::remove_file(disk.join("ballast")).unwrap();
    let out = run(&config);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(sorted_lines(&dir.path().join("out/windows.csv")), reference_lines(RECORDS));
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

#[test]
fn an_operator_error_is_one_line_naming_the_node_once() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("hot.toml");
    std::fs::write(
        &config,
        r#"data_dir = "data"
[sources.readings]
type = "generator"
shape = "sensors"
records = 2000
[transforms.hot]
type = "map"
inputs = ["readings"]
compute = { bad = "ts % (ts - ts)" }
[sinks.out]
type = "file"
inputs = ["hot"]
path = "out/x.csv"
format = "csv"
"#,
    )
    .unwrap();
    let out = run(&config);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr(&out), "weir: run failed: hot: compute.bad: modulo by zero in \"ts % (ts - ts)\"\n");
}

#[test]
fn a_data_mdb_that_is_not_lmdb_is_one_line_without_repeated_causes() {
    let dir = tempfile::tempdir().unwrap();
    let config = sensor_window_config(dir.path(), 2_000, 50, None);
    std::fs::create_dir_all(dir.path().join("data")).unwrap();
    std::fs::write(dir.path().join("data/data.mdb"), vec![b'x'; 3 * 4096]).unwrap();
    let out = run(&config);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr(&out),
        format!(
            "weir: run failed: log: {} is not an LMDB file (no valid meta page); the data directory is damaged (move it away, or start afresh with --fresh)\n",
            dir.path().join("data/data.mdb").display()
        )
    );
}
