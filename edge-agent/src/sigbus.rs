//! The last word on a damaged log file. LMDB reads `data.mdb` through a memory map, so a
//! page that the file does not hold (a file cut short behind the check at open, a damaged
//! page that points past the end) is a SIGBUS, which would kill `weir` with exit 135 and
//! nothing on stderr. This handler prints one line naming the data directory and exits 1.
//! It only writes a message prepared beforehand and exits: both are async-signal-safe.

use std::path::Path;
use std::sync::OnceLock;

static MESSAGE: OnceLock<Vec<u8>> = OnceLock::new();

extern "C" fn on_sigbus(_: libc::c_int) {
    let message = MESSAGE.get().map_or(&b"weir: SIGBUS\n"[..], Vec::as_slice);
    // SAFETY: write(2) and _exit(2) are async-signal-safe; the buffer is a 'static slice
    // that was fully written before the handler was installed.
    #[allow(unsafe_code)]
    unsafe {
        libc::write(2, message.as_ptr().cast(), message.len());
        libc::_exit(1);
    }
}

/// From now on a SIGBUS prints one line saying that the log in `data_dir` is damaged, and
/// exits 1.
pub(crate) fn explain_as_damaged_log(data_dir: &Path) {
    let text = format!(
        "weir: log: {} could not be read (SIGBUS: the file is shorter than its own pages say, or its disk failed); the data directory is damaged (move it away, or start afresh with --fresh)\n",
        data_dir.join("data.mdb").display()
    );
    if MESSAGE.set(text.into_bytes()).is_err() {
        return;
    }
    // SAFETY: installs a handler (above) that only calls async-signal-safe functions; the
    // sigaction struct is zeroed and then filled in as sigaction(2) documents.
    #[allow(unsafe_code)]
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigbus as *const () as libc::sighandler_t;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut());
    }
}
