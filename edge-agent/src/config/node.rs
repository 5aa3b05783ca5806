//! `node.toml`: the agent's own settings, beside the pipelines in its config folder.
//!
//! ```toml
//! name = "a"                       # this agent, as its peers name it
//! listen = "127.0.0.1:7401"        # where peers connect to it
//! http = "127.0.0.1:9465"          # `weir agent`'s HTTP endpoint unless --http says otherwise
//! cert = "certs/a.crt"             # its certificate and key (`weir cert a`)
//! key = "certs/a.key"
//! data_dir = "data"                # the agent's own state: its register acceptor
//!
//! [peers.b]
//! address = "127.0.0.1:7402"
//! cert = "certs/b.crt"             # the only certificate accepted from b
//! role = "data"                    # "data" (replicates pipelines) or "witness" (votes only)
//! ```
//!
//! The agent and its peers are the *voters* of every replicated pipeline's ownership register
//! (SPEC §12.1); each is numbered by its place among the voters' names in sorted order, so
//! every agent that lists the same voters numbers them the same way (the link handshake
//! checks that the lists agree). A pipeline cannot be named `node`: the file is reserved.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::doc::{Doc, Table};
use super::{ConfigError, interpolate, nodes};

/// The reserved file name in a config folder.
pub const FILE: &str = "node.toml";

const NODE_KEYS: &[&str] = &["name", "listen", "http", "cert", "key", "data_dir", "peers"];
const PEER_KEYS: &[&str] = &["address", "cert", "role"];

/// An agent's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeConfig {
    /// Its name.
    pub name: String,
    /// Where it accepts peer links.
    pub listen: SocketAddr,
    /// Where `weir agent` serves its HTTP endpoint, unless `--http` says otherwise.
    pub http: Option<SocketAddr>,
    /// Its certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// Where it keeps its own state (the ownership register's acceptor), apart from any
    /// pipeline's data directory.
    pub data_dir: PathBuf,
    /// The other agents, in file order.
    pub peers: Vec<Peer>,
}

/// Another agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    /// Its name (the table's key).
    pub name: String,
    /// Where to reach it: `host:port`.
    pub address: String,
    /// The one certificate (PEM) it may present.
    pub cert: PathBuf,
    /// What it does.
    pub role: Role,
}

/// A peer's part in replication.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Holds replicas and may own pipelines.
    Data,
    /// Votes on ownership only (`weir witness`): no data.
    Witness,
}

impl NodeConfig {
    /// Every voter's name, sorted: a voter's number is its place here.
    pub fn voters(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.peers.iter().map(|p| p.name.as_str()).collect();
        names.push(&self.name);
        names.sort_unstable();
        names
    }

    /// This agent's number among the voters.
    pub fn id(&self) -> u8 {
        self.number(&self.name).expect("the node is a voter")
    }

    /// A voter's number, by name.
    pub fn number(&self, name: &str) -> Option<u8> {
        self.voters().iter().position(|v| *v == name).map(|i| i as u8)
    }

    /// The peers that hold data.
    pub fn data_peers(&self) -> impl Iterator<Item = &Peer> {
        self.peers.iter().filter(|p| p.role == Role::Data)
    }

    /// Whether a peer is a witness.
    pub fn has_witness(&self) -> bool {
        self.peers.iter().any(|p| p.role == Role::Witness)
    }
}

/// Reads `node.toml` in `dir`, if there is one.
pub fn load(dir: &Path) -> Result<Option<NodeConfig>, ConfigError> {
    let path = dir.join(FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(ConfigError::Read { path, source }),
    };
    let dir = super::absolute(dir)?;
    let env = |name: &str| std::env::var_os(name).map(|value| value.to_string_lossy().into_owned());
    let node = parse(&text, &dir, &env).map_err(|error| ConfigError::in_file(&path, error))?;
    check_files(&node).map_err(|error| ConfigError::in_file(&path, error))?;
    Ok(Some(node))
}

/// Validates `node.toml`'s text, paths resolved against `base_dir`. Pure, as
/// [`super::parse`].
pub fn parse(
    text: &str,
    base_dir: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<NodeConfig, ConfigError> {
    let text = interpolate::interpolate(text, env)?;
    let doc = Doc::new(&text);
    let parsed = doc.parse(&text)?;
    let root = Table::root(&doc, parsed.get_ref());
    root.deny_unknown_keys(NODE_KEYS)?;
    let name_item = root.require("name")?;
    let name = agent_name(name_item.non_empty_str()?).map_err(|m| name_item.error(m))?;
    let listen_item = root.require("listen")?;
    let listen = listen_item.non_empty_str()?.parse::<SocketAddr>().map_err(|_| {
        listen_item.error(format!(
            "expected an address and port such as \"127.0.0.1:7401\", found {}",
            listen_item.found()
        ))
    })?;
    let http = match root.get("http") {
        Some(item) => Some(item.non_empty_str()?.parse::<SocketAddr>().map_err(|_| {
            item.error(format!(
                "expected an address and port such as \"127.0.0.1:9464\", found {}",
                item.found()
            ))
        })?),
        None => None,
    };
    let cert = nodes::resolve(base_dir, root.require("cert")?.non_empty_str()?);
    let key = nodes::resolve(base_dir, root.require("key")?.non_empty_str()?);
    let data_dir = nodes::resolve(
        base_dir,
        root.get("data_dir").map(|i| i.non_empty_str()).transpose()?.unwrap_or("data"),
    );
    let mut peers: Vec<Peer> = Vec::new();
    if let Some(item) = root.get("peers") {
        for entry in item.table()?.items() {
            let table = entry.table()?;
            table.deny_unknown_keys(PEER_KEYS)?;
            let peer_name =
                agent_name(entry.key()).map_err(|m| ConfigError::at(&entry.path(), m, entry.key_line()))?;
            if peer_name == name {
                let message = format!("{peer_name:?} is this agent's own name (name = {name:?})");
                return Err(ConfigError::at(&entry.path(), message, entry.key_line()));
            }
            let address_item = table.require("address")?;
            let address = address_item.non_empty_str()?;
            if !has_port(address) {
                return Err(address_item.error(format!(
                    "expected host:port such as \"10.0.0.2:7401\", found {}",
                    address_item.found()
                )));
            }
            if let Some(other) = peers.iter().find(|p| p.address == address) {
                let message = format!("{address:?} is also peers.{}'s address", other.name);
                return Err(address_item.error(message));
            }
            let role = match table.get("role") {
                Some(item) => item.choice(&[("data", Role::Data), ("witness", Role::Witness)])?,
                None => Role::Data,
            };
            peers.push(Peer {
                name: peer_name,
                address: address.to_owned(),
                cert: nodes::resolve(base_dir, table.require("cert")?.non_empty_str()?),
                role,
            });
        }
    }
    if peers.len() > 63 {
        return Err(ConfigError::Pipeline { message: "peers: at most 63 peers".to_owned() });
    }
    Ok(NodeConfig { name, listen, http, cert, key, data_dir, peers })
}

/// An agent's name: what certificates, log lines and `weir status` call it.
fn agent_name(name: &str) -> Result<String, String> {
    let ok = name.len() <= 63
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && !name.starts_with('-');
    if ok {
        Ok(name.to_owned())
    } else {
        Err(format!("{name:?} is not an agent name: use letters, digits, '-' and '_' (at most 63)"))
    }
}

fn has_port(address: &str) -> bool {
    address
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0))
}

/// The certificate and key files exist and are readable (their contents are checked when
/// the links are set up, which parses them).
fn check_files(node: &NodeConfig) -> Result<(), ConfigError> {
    let readable = |key: &str, path: &Path| match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err(ConfigError::Pipeline { message: format!("{key}: {} is not a file", path.display()) }),
        Err(e) => Err(ConfigError::Pipeline {
            message: format!(
                "{key}: cannot read {}: {} (make it with `weir cert`)",
                path.display(),
                super::io_reason(&e)
            ),
        }),
    };
    readable("cert", &node.cert)?;
    readable("key", &node.key)?;
    for peer in &node.peers {
        readable(&format!("peers.{}.cert", peer.name), &peer.cert)?;
    }
    Ok(())
}
