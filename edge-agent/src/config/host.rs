//! Checks of a parsed config against this machine, made before anything runs so that `weir
//! validate` catches what would otherwise stop `weir run` later, or midway, with a less helpful
//! message: input files exist and are readable, the data directory is (or can be created as)
//! a writable directory, the log's memory map fits in the address space this process may use,
//! and output files are not symbolic links unless a sink allows them. Nothing is created or
//! written: a check that passes may still fail at run time if the machine changes in between.

use std::io;
use std::path::Path;

use rustix::fs::Access;
use weir_runtime::pipeline::spec::{NodeKind, PipelineSpec, SinkSpec, SourceSpec};

use super::{ConfigError, DataDirFrom, Sites, io_reason};

/// The first problem found, in the order a reader meets the settings: `data_dir`,
/// `map_size_mb`, then each node's `path`.
pub(super) fn check(spec: &PipelineSpec, sites: &Sites) -> Result<(), ConfigError> {
    data_dir(&spec.data_dir).map_err(|message| match sites.data_dir {
        DataDirFrom::Config(line) => ConfigError::at("data_dir", message, line),
        DataDirFrom::Default => ConfigError::Pipeline { message: format!("data_dir (default): {message}") },
        DataDirFrom::Flag => ConfigError::Flag { flag: "--data-dir", message },
    })?;
    map_size(spec.map_size).map_err(|message| match sites.map_size_mb {
        Some(line) => ConfigError::at("map_size_mb", message, line),
        None => ConfigError::Pipeline { message: format!("map_size_mb (default): {message}") },
    })?;
    for node in &spec.nodes {
        let problem = match &node.kind {
            NodeKind::Source(SourceSpec::File(file)) => input_file(&file.path),
            NodeKind::Sink(SinkSpec::File { path, allow_symlink: false, .. }) => output_file(path),
            _ => Ok(()),
        };
        if let Err(message) = problem {
            let (path, line) = sites
                .paths
                .iter()
                .find(|(name, _, _)| *name == node.name)
                .map(|(_, path, line)| (path.as_str(), *line))
                .expect("every file node's path has a site");
            return Err(ConfigError::at(path, message, line));
        }
    }
    Ok(())
}

/// A file source's input: a readable file (or anything readable but a directory, such as a
/// named pipe, which is why readability is asked rather than tried by opening).
fn input_file(path: &Path) -> Result<(), String> {
    let cannot = |e: io::Error| format!("cannot read {}: {}", path.display(), io_reason(&e));
    let metadata = std::fs::metadata(path).map_err(cannot)?;
    if metadata.is_dir() {
        return Err(format!("{} is a directory, not a file", path.display()));
    }
    rustix::fs::access(path, Access::READ_OK).map_err(|e| cannot(e.into()))
}

/// A file sink's output, when it may not be a symbolic link: the sink opens it with
/// `O_NOFOLLOW`, which would refuse it at run time.
fn output_file(path: &Path) -> Result<(), String> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => Err(format!(
            "{} is a symbolic link; set allow_symlink = true to write through it",
            path.display()
        )),
        _ => Ok(()),
    }
}

/// The data directory exists as a directory this process may write, or its nearest existing
/// ancestor is one, so that the log can create it.
fn data_dir(dir: &Path) -> Result<(), String> {
    let mut existing = dir;
    let metadata = loop {
        match std::fs::metadata(existing) {
            Ok(metadata) => break metadata,
            // Not a directory: some ancestor is a file, which the walk up will name.
            Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::NotADirectory) => {
                if e.kind() == io::ErrorKind::NotFound && std::fs::symlink_metadata(existing).is_ok() {
                    return Err(format!("{} is a symbolic link to nothing", existing.display()));
                }
                match existing.parent() {
                    Some(parent) => existing = parent,
                    None => return Err(format!("cannot read {}: {}", dir.display(), io_reason(&e))),
                }
            }
            Err(e) => return Err(format!("cannot read {}: {}", existing.display(), io_reason(&e))),
        }
    };
    let created = if existing == dir { String::new() } else { format!("cannot create {}: ", dir.display()) };
    if !metadata.is_dir() {
        return Err(format!("{created}{} is not a directory", existing.display()));
    }
    // Creating an entry in a directory takes write and search permission on it.
    rustix::fs::access(existing, Access::WRITE_OK | Access::EXEC_OK)
        .map_err(|e| format!("{created}{} is not writable: {}", existing.display(), io_reason(&e.into())))
}

/// The log maps its whole file at `bytes` when it opens (LMDB's `mmap` of the map size, shared
/// and read-only). That costs no memory and no disk up front, but needs a free range of address
/// space that large within this process's limit (`ulimit -v`, `RLIMIT_AS`); past either the
/// map fails with "Cannot allocate memory". So reserve such a range, inaccessible, and let it
/// go: exactly the resource the log will need, without touching memory or files.
fn map_size(bytes: usize) -> Result<(), String> {
    if reserve_address_space(bytes).is_ok() {
        return Ok(());
    }
    let mb = bytes >> 20;
    Err(match rustix::process::getrlimit(rustix::process::Resource::As).current {
        Some(limit) => format!(
            "a log map of {mb} MiB does not fit in the address space this process may use ({} MiB, \
             ulimit -v); lower map_size_mb or raise the limit",
            limit >> 20
        ),
        None => format!(
            "a log map of {mb} MiB does not fit in this machine's free address space; lower map_size_mb"
        ),
    })
}

/// Maps `bytes` of inaccessible, unbacked address space and unmaps it again.
#[allow(unsafe_code)] // mmap and munmap of a private range that nothing else refers to
fn reserve_address_space(bytes: usize) -> rustix::io::Result<()> {
    use rustix::mm::{MapFlags, ProtFlags};
    // SAFETY: a new anonymous mapping at an address the kernel chooses cannot overlap any
    // existing memory; it is inaccessible (no pointer into it is ever made) and unmapped with
    // the exact address and length the kernel returned.
    unsafe {
        let range = rustix::mm::mmap_anonymous(
            std::ptr::null_mut(),
            bytes,
            ProtFlags::empty(),
            MapFlags::PRIVATE | MapFlags::NORESERVE,
        )?;
        rustix::mm::munmap(range, bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_dir_may_be_missing_below_a_writable_directory() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(data_dir(dir.path()), Ok(()));
        assert_eq!(data_dir(&dir.path().join("a/b/c")), Ok(()));
        let file = dir.path().join("f");
        std::fs::write(&file, "").unwrap();
        assert_eq!(data_dir(&file), Err(format!("{} is not a directory", file.display())));
        assert_eq!(
            data_dir(&file.join("data")),
            Err(format!(
                "cannot create {}: {} is not a directory",
                file.join("data").display(),
                file.display()
            ))
        );
    }

    #[test]
    fn an_address_range_beyond_any_machine_is_refused() {
        assert_eq!(map_size(16 << 20), Ok(()));
        // Half of all addresses: more than any machine gives a process.
        let message = map_size(usize::MAX / 2 + 1).unwrap_err();
        assert!(message.starts_with("a log map of ") && message.contains(" MiB does not fit"), "{message}");
    }

    #[test]
    fn inputs_must_be_readable_files() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("in.csv");
        assert_eq!(
            input_file(&missing),
            Err(format!("cannot read {}: No such file or directory", missing.display()))
        );
        assert_eq!(
            input_file(dir.path()),
            Err(format!("{} is a directory, not a file", dir.path().display()))
        );
        std::fs::write(&missing, "").unwrap();
        assert_eq!(input_file(&missing), Ok(()));
    }
}
