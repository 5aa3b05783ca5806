//! `weir witness` and `weir cert`, as the binary runs them.

use std::path::Path;

use anyhow::Context as _;

use crate::config;
use crate::peer::link::{Identity, Tcp};
use crate::peer::store::RegisterStore;
use crate::peer::{tls, witness};

/// `weir cert NAME --out DIR`: the line to print.
pub fn cert(name: &str, out: &Path) -> Result<String, String> {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err(format!("cert: {name:?} is not an agent name: use letters, digits, '-' and '_'"));
    }
    let (cert, key) = tls::write_pair(name, out).map_err(|e| format!("cert: {e}"))?;
    Ok(format!("wrote {} and {} (keep the key on {name}'s box only)", cert.display(), key.display()))
}

/// `weir witness --config-dir DIR`: serves until killed (SIGTERM stops it at once: every
/// answer it gave is already durable).
pub fn run(dir: &Path) -> anyhow::Result<()> {
    let node = config::node::load(dir)?
        .with_context(|| format!("--config-dir {}: no {} in it", dir.display(), config::node::FILE))?;
    let me = Identity::load(&node).with_context(|| format!("{}", dir.join(config::node::FILE).display()))?;
    let store = RegisterStore::open(&node.data_dir)?;
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the runtime")?;
    runtime.block_on(witness::serve(Tcp, &node, me, store, false))
}
