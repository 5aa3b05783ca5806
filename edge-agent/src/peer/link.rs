//! A link between two agents: a connection from the [`Transport`], mutual TLS with pinned
//! certificates ([`super::tls`]), then a handshake ([`Hello`], [`Welcome`]) that checks the
//! protocol version, that the name the connecting agent gives is the one its certificate is
//! pinned under, and that both agents list the same voters (else they would number them
//! differently and the register's ballots would mean different agents).
//!
//! The transport is a trait so that the simulation runs the same links over turmoil's
//! simulated network; [`Tcp`] is the real one.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::{TlsAcceptor, TlsConnector, TlsStream};

use super::tls::Tls;
use super::wire::{self, Channel, FrameError, Hello, MAGIC, VERSION, Welcome};
use crate::config::node::{NodeConfig, Peer};

/// How long a connection may take to become a link (TCP, TLS and the handshake).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Byte streams between agents.
pub trait Transport: Clone + Send + Sync + 'static {
    /// A connection.
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// A bound listening socket.
    type Listener: Send + Sync + 'static;
    /// Connects to `address` (`host:port`).
    fn connect(&self, address: &str) -> impl Future<Output = io::Result<Self::Stream>> + Send;
    /// Listens on `address`.
    fn bind(&self, address: SocketAddr) -> impl Future<Output = io::Result<Self::Listener>> + Send;
    /// The next connection.
    fn accept(
        listener: &Self::Listener,
    ) -> impl Future<Output = io::Result<(Self::Stream, SocketAddr)>> + Send;
}

/// TCP, with `TCP_NODELAY` (register messages are small and latency is the lease's margin).
#[derive(Clone, Copy, Debug, Default)]
pub struct Tcp;

impl Transport for Tcp {
    type Stream = tokio::net::TcpStream;
    type Listener = tokio::net::TcpListener;

    async fn connect(&self, address: &str) -> io::Result<Self::Stream> {
        let stream = tokio::net::TcpStream::connect(address).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    async fn bind(&self, address: SocketAddr) -> io::Result<Self::Listener> {
        tokio::net::TcpListener::bind(address).await
    }

    async fn accept(listener: &Self::Listener) -> io::Result<(Self::Stream, SocketAddr)> {
        let (stream, from) = listener.accept().await?;
        stream.set_nodelay(true)?;
        Ok((stream, from))
    }
}

/// Why a link could not be made; one line, naming the peer or address.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The connection failed.
    #[error("{peer}: {error}")]
    Io { peer: String, error: io::Error },
    /// TLS failed: most often a certificate that is not the pinned one.
    #[error("{peer}: TLS: {error}")]
    Tls { peer: String, error: io::Error },
    /// A frame of the handshake was bad.
    #[error("{peer}: handshake: {error}")]
    Frame { peer: String, error: FrameError },
    /// The other agent refused the link (the connecting side's view).
    #[error("{peer} refused the link: {reason}")]
    Refused { peer: String, reason: String },
    /// This agent refused the link (the accepting side's view).
    #[error("refused a link from {peer}: {reason}")]
    Refusing { peer: String, reason: String },
    /// The handshake did not finish in time.
    #[error("{peer}: no handshake within {} s", HANDSHAKE_TIMEOUT.as_secs())]
    Timeout { peer: String },
}

/// A link ready for messages.
pub struct Link<S> {
    /// The agent at the other end.
    pub peer: String,
    /// What it is for.
    pub channel: Channel,
    /// The TLS stream.
    pub stream: TlsStream<S>,
}

/// What a link's handshake checks on this side.
#[derive(Clone, Debug)]
pub struct Identity {
    /// This agent's name.
    pub name: String,
    /// Every voter's name, sorted.
    pub voters: Vec<String>,
    /// Its TLS setup.
    pub tls: Tls,
}

impl Identity {
    /// From `node.toml`, loading the certificates.
    pub fn load(node: &NodeConfig) -> Result<Identity, super::tls::TlsError> {
        Ok(Identity {
            name: node.name.clone(),
            voters: node.voters().iter().map(|v| (*v).to_owned()).collect(),
            tls: Tls::load(node)?,
        })
    }
}

/// Connects to `peer` for `channel`.
pub async fn connect<T: Transport>(
    transport: &T,
    me: &Identity,
    peer: &Peer,
    channel: Channel,
) -> Result<Link<T::Stream>, LinkError> {
    let name = peer.name.clone();
    let steps = async {
        let io = |error| LinkError::Io { peer: name.clone(), error };
        let stream = transport.connect(&peer.address).await.map_err(io)?;
        let config = me.tls.client(&peer.name).map_err(|e| io(io::Error::other(e.to_string())))?;
        let stream = TlsConnector::from(config)
            .connect(Tls::server_name(), stream)
            .await
            .map_err(|error| LinkError::Tls { peer: name.clone(), error })?;
        let mut stream = TlsStream::Client(stream);
        let frame = |error| LinkError::Frame { peer: name.clone(), error };
        let hello = Hello {
            magic: MAGIC,
            version: VERSION,
            from: me.name.clone(),
            voters: me.voters.clone(),
            channel,
        };
        let mut buffer = Vec::new();
        wire::write_frame(&mut stream, &hello, &mut buffer).await.map_err(frame)?;
        match wire::read_frame(&mut stream, wire::MAX_CONTROL_FRAME, &mut buffer).await.map_err(frame)? {
            Welcome::Ok { name: theirs } if theirs == peer.name => Ok(Link { peer: theirs, channel, stream }),
            Welcome::Ok { name: theirs } => Err(LinkError::Refused {
                peer: name.clone(),
                reason: format!("it calls itself {theirs:?}, not {:?}", peer.name),
            }),
            Welcome::Refused { reason } => Err(LinkError::Refused { peer: name.clone(), reason }),
        }
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, steps)
        .await
        .unwrap_or(Err(LinkError::Timeout { peer: peer.name.clone() }))
}

/// Makes a link of a connection accepted from `from`.
pub async fn accept<S>(stream: S, from: SocketAddr, me: &Identity) -> Result<Link<S>, LinkError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let address = from.to_string();
    let steps = async {
        let stream = TlsAcceptor::from(me.tls.server())
            .accept(stream)
            .await
            .map_err(|error| LinkError::Tls { peer: address.clone(), error })?;
        let certified = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|certs| certs.first())
            .and_then(|cert| me.tls.pins.name_of(cert))
            .map(str::to_owned);
        let mut stream = TlsStream::Server(stream);
        let Some(certified) = certified else {
            return Err(LinkError::Refusing {
                peer: address.clone(),
                reason: "no pinned certificate".to_owned(),
            });
        };
        let frame = |error| LinkError::Frame { peer: certified.clone(), error };
        let mut buffer = Vec::new();
        let hello: Hello =
            wire::read_frame(&mut stream, wire::MAX_CONTROL_FRAME, &mut buffer).await.map_err(frame)?;
        let problem = if hello.magic != MAGIC {
            Some("not a weir agent".to_owned())
        } else if hello.version != VERSION {
            Some(format!(
                "peer protocol version {} (this agent speaks {VERSION}); run the same weir version on both",
                hello.version
            ))
        } else if hello.from != certified {
            Some(format!("it calls itself {:?} but presented {certified}'s certificate", hello.from))
        } else if hello.voters != me.voters {
            Some(format!(
                "its voters are {} but this agent's are {}; give every agent the same peers in node.toml",
                hello.voters.join(", "),
                me.voters.join(", ")
            ))
        } else {
            None
        };
        if let Some(reason) = problem {
            let refused = Welcome::Refused { reason: reason.clone() };
            let _ = wire::write_frame(&mut stream, &refused, &mut buffer).await;
            return Err(LinkError::Refusing { peer: format!("{certified} ({address})"), reason });
        }
        wire::write_frame(&mut stream, &Welcome::Ok { name: me.name.clone() }, &mut buffer)
            .await
            .map_err(frame)?;
        Ok(Link { peer: certified.clone(), channel: hello.channel, stream })
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, steps)
        .await
        .unwrap_or(Err(LinkError::Timeout { peer: address.clone() }))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use weir_runtime::protocol::lease;

    use super::*;
    use crate::config::node::Role;
    use crate::peer::store::RegisterStore;
    use crate::peer::tls::write_pair;
    use crate::peer::wire::{Control, Request};
    use crate::peer::witness;

    /// Agent `name`'s settings with `peers` (name, role), certificates from `certs`.
    fn node(name: &str, peers: &[(&str, Role)], certs: &Path, port: u16) -> NodeConfig {
        NodeConfig {
            name: name.to_owned(),
            listen: SocketAddr::from(([127, 0, 0, 1], port)),
            http: None,
            cert: certs.join(format!("{name}.crt")),
            key: certs.join(format!("{name}.key")),
            data_dir: certs.join(format!("{name}-data")),
            peers: peers
                .iter()
                .map(|&(peer, role)| Peer {
                    name: peer.to_owned(),
                    address: "127.0.0.1:0".to_owned(),
                    cert: certs.join(format!("{peer}.crt")),
                    role,
                })
                .collect(),
        }
    }

    struct Cluster {
        _dir: tempfile::TempDir,
        certs: std::path::PathBuf,
    }

    fn cluster() -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().to_owned();
        for name in ["a", "b", "w", "x"] {
            write_pair(name, &certs).unwrap();
        }
        Cluster { _dir: dir, certs }
    }

    /// Starts a witness for `w` on a free port; returns the address a peer should use.
    async fn witness_at(w: &NodeConfig) -> (String, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let me = Identity::load(w).unwrap();
        let store = RegisterStore::open(&w.data_dir).unwrap();
        let task = tokio::spawn(async move {
            loop {
                let (stream, from) = listener.accept().await.unwrap();
                let (me, store) = (me.clone(), store.clone());
                tokio::spawn(async move {
                    if let Ok(link) = accept(stream, from, &me).await {
                        let _ = witness::answer(link, |p, r| witness::from_store(&store, p, r, false)).await;
                    }
                });
            }
        });
        (address.to_string(), task)
    }

    fn peer_at(node: &NodeConfig, name: &str, address: &str) -> Peer {
        let mut peer = node.peers.iter().find(|p| p.name == name).unwrap().clone();
        peer.address = address.to_owned();
        peer
    }

    const ABW: [(&str, Role); 2] = [("b", Role::Data), ("w", Role::Witness)];

    #[tokio::test(flavor = "current_thread")]
    async fn a_witness_answers_durably_over_a_pinned_link() {
        let c = cluster();
        let w = node("w", &[("a", Role::Data), ("b", Role::Data)], &c.certs, 0);
        let a = node("a", &ABW, &c.certs, 0);
        let (address, task) = witness_at(&w).await;
        let me = Identity::load(&a).unwrap();
        let mut link = connect(&Tcp, &me, &peer_at(&a, "w", &address), Channel::Control).await.unwrap();
        assert_eq!(link.peer, "w");
        let ballot = lease::Ballot { round: 1, node: 0 };
        let request = Control::Register {
            pipeline: "p".into(),
            request: Request::from(lease::Request::Prepare(ballot)),
        };
        let mut buffer = Vec::new();
        wire::write_frame(&mut link.stream, &request, &mut buffer).await.unwrap();
        let reply: Control =
            wire::read_frame(&mut link.stream, wire::MAX_CONTROL_FRAME, &mut buffer).await.unwrap();
        let Control::Registered { pipeline, reply } = reply else { panic!("{reply:?}") };
        assert_eq!(pipeline, "p");
        assert_eq!(lease::Reply::from(reply), lease::Reply::Promise { ballot, accepted: None });
        task.abort();
        // The promise is in the file before the reply left: a copy of the file taken now,
        // opened as a witness restarted from it would, refuses a lower ballot.
        let copy = c.certs.join("copy");
        std::fs::create_dir_all(copy.join("register")).unwrap();
        std::fs::copy(w.data_dir.join("register/data.mdb"), copy.join("register/data.mdb")).unwrap();
        let store = RegisterStore::open(&copy).unwrap();
        assert_eq!(store.acceptor("p").unwrap().promised, ballot);
        let lower = lease::Request::Prepare(lease::Ballot { round: 0, node: 1 });
        assert!(matches!(store.handle("p", lower).unwrap(), lease::Reply::Nack { .. }));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_certificate_other_than_the_pinned_one_is_refused_both_ways() {
        let c = cluster();
        // w pins x's certificate for a: a's own certificate is refused by w.
        let mut w = node("w", &[("a", Role::Data), ("b", Role::Data)], &c.certs, 0);
        w.peers[0].cert = c.certs.join("x.crt");
        let a = node("a", &ABW, &c.certs, 0);
        let (address, task) = witness_at(&w).await;
        let err = connect(&Tcp, &Identity::load(&a).unwrap(), &peer_at(&a, "w", &address), Channel::Control)
            .await
            .err()
            .expect("refused");
        assert!(matches!(err, LinkError::Tls { .. } | LinkError::Frame { .. }), "{err}");
        task.abort();

        // a pins x's certificate for w: w's certificate is refused by a, naming the pin.
        let mut w = node("w", &[("a", Role::Data), ("b", Role::Data)], &c.certs, 0);
        w.data_dir = c.certs.join("w-data-2");
        let mut a = node("a", &ABW, &c.certs, 0);
        a.peers[1].cert = c.certs.join("x.crt");
        let (address, task) = witness_at(&w).await;
        let err = connect(&Tcp, &Identity::load(&a).unwrap(), &peer_at(&a, "w", &address), Channel::Control)
            .await
            .err()
            .expect("refused");
        let text = err.to_string();
        assert!(text.contains("a certificate other than the one node.toml pins for it"), "{text}");
        task.abort();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn agents_with_different_voters_are_refused() {
        let c = cluster();
        let w = node("w", &[("a", Role::Data), ("b", Role::Data)], &c.certs, 0);
        // a thinks the voters are a, b, w and x.
        let a = node("a", &[("b", Role::Data), ("w", Role::Witness), ("x", Role::Data)], &c.certs, 0);
        let (address, task) = witness_at(&w).await;
        let err = connect(&Tcp, &Identity::load(&a).unwrap(), &peer_at(&a, "w", &address), Channel::Control)
            .await
            .err()
            .expect("refused");
        let text = err.to_string();
        assert_eq!(
            text,
            "w refused the link: its voters are a, b, w, x but this agent's are a, b, w; give every agent the same peers in node.toml"
        );
        task.abort();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn another_protocol_version_is_refused() {
        let c = cluster();
        let w = node("w", &[("a", Role::Data), ("b", Role::Data)], &c.certs, 0);
        let a = node("a", &ABW, &c.certs, 0);
        let (address, task) = witness_at(&w).await;
        let me = Identity::load(&a).unwrap();
        let stream = Tcp.connect(&address).await.unwrap();
        let stream = TlsConnector::from(me.tls.client("w").unwrap())
            .connect(Tls::server_name(), stream)
            .await
            .unwrap();
        let mut stream = TlsStream::Client(stream);
        let hello = Hello {
            magic: MAGIC,
            version: VERSION + 1,
            from: "a".into(),
            voters: me.voters.clone(),
            channel: Channel::Control,
        };
        let mut buffer = Vec::new();
        wire::write_frame(&mut stream, &hello, &mut buffer).await.unwrap();
        let welcome: Welcome =
            wire::read_frame(&mut stream, wire::MAX_CONTROL_FRAME, &mut buffer).await.unwrap();
        let Welcome::Refused { reason } = welcome else { panic!("{welcome:?}") };
        assert!(reason.starts_with(&format!("peer protocol version {}", VERSION + 1)), "{reason}");
        task.abort();
    }
}
