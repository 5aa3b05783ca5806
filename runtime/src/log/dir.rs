//! The data directory around the LMDB files: created private (0700) and made durable (its
//! parent fsynced), locked for the life of the process so that two `weir` processes never
//! share it, checked before LMDB maps `data.mdb` (a truncated file would otherwise be
//! answered with SIGBUS at the first read past its end), and emptied for `--fresh`.
//!
//! LMDB has a lock file of its own, but it serialises writers rather than excluding a second
//! process: two runs on one directory would both write, and lose output. The lock here is
//! an `flock` on `weir.lock`, released by the kernel when the process dies (also by
//! `kill -9`), so a crash never leaves a stale lock behind.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::LogError;

/// The lock file's name inside the data directory.
pub const LOCK_FILE: &str = "weir.lock";
/// LMDB's data file.
pub const DATA_FILE: &str = "data.mdb";
/// LMDB's own lock (reader table) file.
const LMDB_LOCK_FILE: &str = "lock.mdb";

/// An exclusive claim on a data directory, held until dropped (or the process ends).
#[derive(Debug)]
pub struct DirLock {
    // Kept open: the flock lives as long as this descriptor.
    _file: File,
}

fn open_error(dir: &Path, e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> LogError {
    LogError::Open { path: dir.to_owned(), reason: e.into() }
}

/// Create `dir` (and missing parents) with mode 0700 and make the new entries durable.
pub fn create_private(dir: &Path) -> Result<(), LogError> {
    if dir.is_dir() {
        return Ok(());
    }
    // The first missing ancestor is the entry a power cut could lose: fsync its parent.
    let mut first_missing = dir;
    while let Some(parent) = first_missing.parent() {
        if parent.as_os_str().is_empty() || parent.exists() {
            break;
        }
        first_missing = parent;
    }
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|e| open_error(dir, e))?;
    let mut d = dir;
    loop {
        if let Some(parent) = d.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_dir(parent).map_err(|e| open_error(dir, e))?;
        }
        if d == first_missing {
            break;
        }
        match d.parent() {
            Some(p) => d = p,
            None => break,
        }
    }
    Ok(())
}

/// fsync a directory, so that the entries created in it survive a power cut.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Take the data directory's lock, or say which process holds it.
pub fn lock(dir: &Path) -> Result<DirLock, LogError> {
    let path = dir.join(LOCK_FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(|e| open_error(dir, e))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let pid = holder.trim().parse::<u32>().ok();
            return Err(LogError::Locked { path: dir.to_owned(), pid });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(open_error(dir, e)),
    }
    // Ours now: say who holds it, for the next process that tries.
    let pid = std::process::id().to_string();
    file.set_len(0)
        .and_then(|()| file.seek(SeekFrom::Start(0)))
        .and_then(|_| file.write_all(pid.as_bytes()))
        .map_err(|e| open_error(dir, e))?;
    Ok(DirLock { _file: file })
}

/// Remove the LMDB files (the caller holds the lock), for `weir run --fresh`.
pub fn wipe(dir: &Path) -> Result<(), LogError> {
    for name in [DATA_FILE, LMDB_LOCK_FILE] {
        match std::fs::remove_file(dir.join(name)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(open_error(dir, e)),
        }
    }
    sync_dir(dir).map_err(|e| open_error(dir, e))
}

/// What `check_data_file` found wrong, for the error line.
fn damaged(path: &Path, what: String) -> LogError {
    LogError::Damaged { path: path.to_owned(), what }
}

/// The facts of one LMDB meta page that tell how long the file must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Meta {
    page_size: u64,
    txnid: u64,
    /// Root pages of the free-page and main databases (`u64::MAX` for an empty tree).
    roots: [u64; 2],
}

// Offsets in an LMDB meta page (liblmdb `MDB_page` and `MDB_meta`, 64-bit): a 16-byte page
// header, then magic u32, version u32, address u64, map size u64, two `MDB_db` of 48 bytes
// (the first's `md_pad` is the page size; `md_root` is its last field), last page u64,
// txnid u64.
const MAGIC: u32 = 0xBEEF_C0DE;
const DATA_VERSION: u32 = 1;
const META_START: usize = 16;
const DB_SIZE: usize = 48;
const DBS_START: usize = META_START + 24;
const TXNID_AT: usize = DBS_START + 2 * DB_SIZE + 8;
const META_LEN: usize = TXNID_AT + 8;
const NO_PAGE: u64 = u64::MAX;

fn meta(page: &[u8]) -> Option<Meta> {
    let u32_at = |at: usize| page.get(at..at + 4).map(|b| u32::from_ne_bytes(b.try_into().expect("4 bytes")));
    let u64_at = |at: usize| page.get(at..at + 8).map(|b| u64::from_ne_bytes(b.try_into().expect("8 bytes")));
    if u32_at(META_START)? != MAGIC || u32_at(META_START + 4)? != DATA_VERSION {
        return None;
    }
    let root = |db: usize| u64_at(DBS_START + db * DB_SIZE + DB_SIZE - 8);
    Some(Meta {
        page_size: u64::from(u32_at(DBS_START)?),
        txnid: u64_at(TXNID_AT)?,
        roots: [root(0)?, root(1)?],
    })
}

/// Check `dir/data.mdb`, if it exists, before LMDB maps it: both meta pages readable, the
/// newer one valid, and the file long enough to hold the root pages it names. LMDB reads
/// pages through a memory map, so a page past the end of a truncated file is a SIGBUS, not
/// an error; this turns the common case (a file cut short) into one line. (LMDB may leave
/// freed pages at the very end unwritten, so the file's length is compared with the pages
/// that must exist, not with the last page number.)
pub fn check_data_file(dir: &Path) -> Result<(), LogError> {
    let path: PathBuf = dir.join(DATA_FILE);
    let mut file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(open_error(dir, e)),
    };
    let len = file.metadata().map_err(|e| open_error(dir, e))?.len();
    if len == 0 {
        // LMDB initialises an empty file itself (a crash right after creating it).
        return Ok(());
    }
    let mut first = vec![0u8; META_LEN];
    file.read_exact(&mut first)
        .map_err(|_| damaged(&path, format!("is {len} bytes, too short for an LMDB file")))?;
    let meta0 = meta(&first);
    let page_size = meta0.map_or(4096, |m| m.page_size);
    if !(512..=65536).contains(&page_size) || !page_size.is_power_of_two() {
        return Err(damaged(&path, format!("has an impossible page size ({page_size})")));
    }
    let mut second = vec![0u8; META_LEN];
    let meta1 = file
        .seek(SeekFrom::Start(page_size))
        .and_then(|_| file.read_exact(&mut second))
        .ok()
        .and_then(|()| meta(&second));
    let newest = match (meta0, meta1) {
        (Some(a), Some(b)) => {
            if a.page_size != b.page_size {
                return Err(damaged(&path, "has meta pages that disagree on the page size".into()));
            }
            if a.txnid >= b.txnid { a } else { b }
        }
        (Some(m), None) | (None, Some(m)) => {
            if len < 2 * page_size {
                return Err(damaged(
                    &path,
                    format!("is truncated ({len} bytes, not even its two meta pages)"),
                ));
            }
            m
        }
        (None, None) => return Err(damaged(&path, "is not an LMDB file (no valid meta page)".into())),
    };
    let pages = len / newest.page_size;
    for root in newest.roots {
        if root != NO_PAGE && root >= pages {
            return Err(damaged(
                &path,
                format!(
                    "is truncated ({len} bytes, but its newest meta page needs page {root}, at least {} bytes)",
                    (root + 1) * newest.page_size
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let _held = lock(dir.path()).unwrap();
        match lock(dir.path()) {
            Err(LogError::Locked { pid, .. }) => assert_eq!(pid, Some(std::process::id())),
            other => panic!("expected Locked, got {other:?}"),
        }
        drop(_held);
        lock(dir.path()).unwrap();
    }

    #[test]
    fn created_directories_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("a/b");
        create_private(&data).unwrap();
        assert_eq!(std::fs::metadata(&data).unwrap().permissions().mode() & 0o777, 0o700);
        assert_eq!(std::fs::metadata(dir.path().join("a")).unwrap().permissions().mode() & 0o777, 0o700);
    }

    #[test]
    fn meta_page_offsets_match_a_real_lmdb_file() {
        let dir = tempfile::tempdir().unwrap();
        let log = super::super::Log::open(dir.path(), 16 << 20).unwrap();
        log.write_now(&[super::super::WriteOp::Completion(crate::protocol::CheckpointId(3))]).unwrap();
        drop(log);
        let bytes = std::fs::read(dir.path().join(DATA_FILE)).unwrap();
        let m = meta(&bytes).expect("meta page 0 parses");
        assert!(m.page_size.is_power_of_two() && m.page_size >= 512);
        let m1 = meta(&bytes[m.page_size as usize..]).expect("meta page 1 parses");
        let newest = if m.txnid >= m1.txnid { m } else { m1 };
        assert!(newest.txnid >= 1, "{newest:?}");
        // The main database holds our named databases: its root is a real page.
        assert!(newest.roots[1] != NO_PAGE && newest.roots[1] < bytes.len() as u64 / m.page_size);
        check_data_file(dir.path()).unwrap();
    }

    #[test]
    fn a_truncated_data_file_is_refused_before_it_is_mapped() {
        let dir = tempfile::tempdir().unwrap();
        let log = super::super::Log::open(dir.path(), 16 << 20).unwrap();
        for c in 1..50u64 {
            log.write_now(&[super::super::WriteOp::Snapshot {
                participant: 0,
                checkpoint: crate::protocol::CheckpointId(c),
                record: super::super::SnapshotRecord { state: vec![c as u8; 5000], ..Default::default() },
            }])
            .unwrap();
        }
        drop(log);
        let path = dir.path().join(DATA_FILE);
        let len = std::fs::metadata(&path).unwrap().len();
        // Cut inside the meta pages, and right after them: refused for certain. (A cut further
        // on is refused when it removes a root page; past that, the binary's SIGBUS handler
        // turns the first read beyond the end into one line.)
        assert!(len > 3 * 4096);
        for keep in [100, 4096 + 100, 2 * 4096] {
            let copy = tempfile::tempdir().unwrap();
            let bytes = std::fs::read(&path).unwrap();
            std::fs::write(copy.path().join(DATA_FILE), &bytes[..keep as usize]).unwrap();
            let err = check_data_file(copy.path()).unwrap_err().to_string();
            assert!(
                err.contains("data.mdb") && (err.contains("truncated") || err.contains("too short")),
                "{err}"
            );
        }
    }
}
