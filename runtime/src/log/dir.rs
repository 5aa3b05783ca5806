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
/// newer one valid, and every page reachable from it (the trees of the free-page list, of the
/// main database and of each named database, and their overflow pages) inside the file,
/// carrying its own page number and a plausible header. LMDB reads pages through a memory
/// map, so a page past the end of a truncated file is a SIGBUS, not an error, and a damaged
/// header can send it anywhere; this turns both into one line. (LMDB may leave freed pages
/// at the very end unwritten, so the file's length is compared with the pages that are
/// reachable, not with the last page number.)
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
    let mut walk = Walk {
        file: &file,
        page_size: newest.page_size,
        pages: len / newest.page_size,
        seen: Default::default(),
    };
    walk.trees(&newest.roots).map_err(|what| damaged(&path, what))
}

// Page header: page number u64, pad u16, flags u16, lower u16, upper u16 (an overflow page
// has its page count u32 where lower and upper are); then the node offsets, u16 each. A
// node: lo u16, hi u16, flags u16, key size u16, key, data (liblmdb `MDB_page`, `MDB_node`).
const HEADER_SIZE: usize = 16;
const P_BRANCH: u16 = 0x01;
const P_LEAF: u16 = 0x02;
const P_OVERFLOW: u16 = 0x04;
const P_LEAF2: u16 = 0x20;
const F_BIGDATA: u16 = 0x01;
const F_SUBDATA: u16 = 0x02;

/// A walk over the B-trees of an LMDB file, reading pages with `pread` (never mapped).
struct Walk<'f> {
    file: &'f File,
    page_size: u64,
    /// Whole pages the file holds.
    pages: u64,
    seen: std::collections::BTreeSet<u64>,
}

impl Walk<'_> {
    /// Page `pgno`, which must lie inside the file (and, `own`, carry its own number).
    fn read(&self, pgno: u64, own: bool) -> Result<Vec<u8>, String> {
        use std::os::unix::fs::FileExt;
        if pgno >= self.pages {
            return Err(format!(
                "is truncated or damaged: it needs page {pgno} but holds {} pages of {} bytes",
                self.pages, self.page_size
            ));
        }
        let mut page = vec![0u8; self.page_size as usize];
        self.file
            .read_exact_at(&mut page, pgno * self.page_size)
            .map_err(|e| format!("cannot be read: {e}"))?;
        let says = u64::from_ne_bytes(page[..8].try_into().expect("8 bytes"));
        if own && says != pgno {
            return Err(format!("has a damaged page {pgno} (its header says page {says})"));
        }
        Ok(page)
    }

    /// Visit every tree from `roots`, and the tree of every named database found on the way.
    fn trees(&mut self, roots: &[u64]) -> Result<(), String> {
        let mut stack: Vec<u64> = roots.iter().copied().filter(|&r| r != NO_PAGE).collect();
        while let Some(pgno) = stack.pop() {
            if self.seen.insert(pgno) {
                self.tree_page(pgno, &mut stack)?;
            }
        }
        Ok(())
    }

    /// Check one branch or leaf page; push the pages it points to.
    fn tree_page(&mut self, pgno: u64, stack: &mut Vec<u64>) -> Result<(), String> {
        let page = self.read(pgno, true)?;
        let bad = |what: &str| format!("has a damaged page {pgno} ({what})");
        let u16_at = |at: usize| u16::from_ne_bytes([page[at], page[at + 1]]);
        let flags = u16_at(10) & (P_BRANCH | P_LEAF | P_OVERFLOW | P_LEAF2);
        let (lower, upper) = (usize::from(u16_at(12)), usize::from(u16_at(14)));
        if lower < HEADER_SIZE || lower > upper || upper > page.len() || lower % 2 != 0 {
            return Err(bad("its bounds are impossible"));
        }
        if flags == P_LEAF | P_LEAF2 {
            return Ok(()); // fixed-size duplicates: nothing to follow (Weir creates none)
        }
        if flags != P_BRANCH && flags != P_LEAF {
            return Err(bad("not a tree page where one is expected"));
        }
        for i in 0..(lower - HEADER_SIZE) / 2 {
            let at = usize::from(u16_at(HEADER_SIZE + 2 * i));
            if at < upper || at + 8 > page.len() {
                return Err(bad("a node out of place"));
            }
            let (lo, hi, node_flags) = (u16_at(at), u16_at(at + 2), u16_at(at + 4));
            if flags == P_BRANCH {
                stack.push(u64::from(lo) | (u64::from(hi) << 16) | (u64::from(node_flags) << 32));
                continue;
            }
            let data_at = at + 8 + usize::from(u16_at(at + 6));
            let data_len = usize::from(lo) | (usize::from(hi) << 16);
            if node_flags & F_BIGDATA != 0 {
                let first = page.get(data_at..data_at + 8).ok_or_else(|| bad("a value out of place"))?;
                self.overflow(u64::from_ne_bytes(first.try_into().expect("8 bytes")), data_len)?;
            } else if data_at + data_len > page.len() {
                return Err(bad("a value out of place"));
            } else if node_flags & F_SUBDATA != 0 && data_len >= DB_SIZE {
                let root = &page[data_at + DB_SIZE - 8..data_at + DB_SIZE];
                let root = u64::from_ne_bytes(root.try_into().expect("8 bytes"));
                if root != NO_PAGE {
                    stack.push(root);
                }
            }
        }
        Ok(())
    }

    /// Check a run of overflow pages holding a value of `len` bytes.
    fn overflow(&self, first: u64, len: usize) -> Result<(), String> {
        let head = self.read(first, true)?;
        let count = u64::from(u32::from_ne_bytes(head[12..16].try_into().expect("4 bytes")));
        let needed = (HEADER_SIZE + len).div_ceil(self.page_size as usize) as u64;
        if u16::from_ne_bytes([head[10], head[11]]) & P_OVERFLOW == 0 || count < needed {
            return Err(format!("has a damaged overflow page {first}"));
        }
        // Only the first page of the run has a header; the last one must be in the file.
        self.read(first + count - 1, false).map(drop)
    }
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
        // Every cut that removes a page the trees reach is refused before mapping; a cut of
        // unused pages at the end only is harmless.
        assert!(len > 3 * 4096);
        let mut refused = 0;
        for keep in [100, 4096 + 100].into_iter().chain((2..len / 4096).map(|p| p * 4096)) {
            let copy = tempfile::tempdir().unwrap();
            let bytes = std::fs::read(&path).unwrap();
            std::fs::write(copy.path().join(DATA_FILE), &bytes[..keep as usize]).unwrap();
            match check_data_file(copy.path()) {
                Err(e) => {
                    let err = e.to_string();
                    assert!(
                        err.contains("data.mdb") && (err.contains("truncated") || err.contains("too short")),
                        "{err}"
                    );
                    refused += 1;
                }
                // Only unused pages were cut: LMDB reads every record without going past the end.
                Ok(()) => {
                    let log = super::super::Log::open(copy.path(), 16 << 20).unwrap();
                    for c in 1..50u64 {
                        log.read_snapshot(0, crate::protocol::CheckpointId(c)).unwrap();
                    }
                }
            }
        }
        assert!(refused as u64 >= len / 4096 / 2, "only {refused} cuts of {} pages refused", len / 4096);
    }
}
