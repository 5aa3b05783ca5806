//! What agents send each other: frames of a big-endian u32 length and a postcard body, a
//! handshake first, then messages.
//!
//! The protocol core has no dependencies (not even serde), so its messages are mirrored here
//! by plain serde types with conversions both ways; the conversions are total, so nothing
//! the core sends is changed on the way.

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use weir_runtime::protocol::lease;

/// The first four bytes of every handshake.
pub const MAGIC: [u8; 4] = *b"WEIR";
/// The peer protocol's version: a peer with another one is refused.
pub const VERSION: u32 = 1;
/// The largest frame on a control link (register messages are tens of bytes).
pub const MAX_CONTROL_FRAME: u32 = 1 << 16;

/// A frame that cannot be read: the link is closed with this as the reason.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The connection failed or closed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A length beyond the link's limit: a corrupt or hostile stream.
    #[error("a frame of {length} bytes, more than the {limit} this link allows")]
    TooLong { length: u32, limit: u32 },
    /// A body that is not the message expected.
    #[error("a frame that does not decode: {0}")]
    Decode(#[from] postcard::Error),
}

/// Writes one frame holding `message`.
pub async fn write_frame<W: AsyncWrite + Unpin, T: Serialize>(
    writer: &mut W,
    message: &T,
    buffer: &mut Vec<u8>,
) -> Result<(), FrameError> {
    buffer.clear();
    buffer.extend_from_slice(&[0; 4]);
    let mut body = postcard::to_extend(message, std::mem::take(buffer))?;
    let length = u32::try_from(body.len() - 4).expect("a frame under 4 GiB");
    body[..4].copy_from_slice(&length.to_be_bytes());
    let result = writer.write_all(&body).await;
    *buffer = body;
    result?;
    writer.flush().await?;
    Ok(())
}

/// Reads one frame of at most `limit` bytes and decodes it.
pub async fn read_frame<R: AsyncRead + Unpin, T: for<'de> Deserialize<'de>>(
    reader: &mut R,
    limit: u32,
    buffer: &mut Vec<u8>,
) -> Result<T, FrameError> {
    let mut length = [0; 4];
    reader.read_exact(&mut length).await?;
    let length = u32::from_be_bytes(length);
    if length > limit {
        return Err(FrameError::TooLong { length, limit });
    }
    buffer.resize(length as usize, 0);
    reader.read_exact(buffer).await?;
    Ok(postcard::from_bytes(buffer)?)
}

/// Which of a pair's connections this is: control traffic (the register, acknowledgements)
/// never waits behind a bulk transfer (checkpoint parts, seeds).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Channel {
    /// Register requests and replies, acknowledgements.
    Control,
    /// Checkpoint parts, manifests and seeds.
    Bulk,
}

/// The connecting agent's first frame.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// [`MAGIC`].
    pub magic: [u8; 4],
    /// [`VERSION`].
    pub version: u32,
    /// The connecting agent's name.
    pub from: String,
    /// Every voter's name, sorted, as its `node.toml` has them.
    pub voters: Vec<String>,
    /// What the connection is for.
    pub channel: Channel,
}

/// The accepting agent's answer to a [`Hello`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Welcome {
    /// Accepted.
    Ok {
        /// The accepting agent's name.
        name: String,
    },
    /// Refused, and why (the connecting agent logs it).
    Refused {
        /// One line.
        reason: String,
    },
}

/// A message on a control link: requests from the connecting agent, replies from the
/// accepting one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Control {
    /// To the accepting agent's acceptor for `pipeline`'s register.
    Register { pipeline: String, request: Request },
    /// Its acceptor's reply.
    Registered { pipeline: String, reply: Reply },
}

/// The largest frame on a bulk link: a seed chunk, or one committed batch of the log (a
/// large operator snapshot is one write).
pub const MAX_BULK_FRAME: u32 = 1 << 28;
/// Seeds travel in chunks of this size, so that acknowledgements are not stuck behind one
/// frame of the whole log.
pub const SEED_CHUNK: usize = 1 << 20;

/// A message on a bulk link: the owner's shipping to a replica, and the replica's
/// acknowledgements.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Bulk {
    /// The first message: the owner ships `pipeline` under `epoch`.
    Start { pipeline: String, epoch: u64 },
    /// A piece of a compacted copy of the owner's log.
    Seed { bytes: Vec<u8> },
    /// The copy is whole: install it.
    SeedEnd,
    /// A committed batch of the log ([`weir_runtime::log::ship::encode_batch`]).
    Batch { bytes: Vec<u8> },
    /// The replica's latest completed checkpoint, received (and if `durable`, on its disk).
    Ack { checkpoint: u64, durable: bool },
    /// The replica refuses the owner (an older epoch than it knows): the link closes.
    Refused { reason: String },
}

/// [`lease::Ballot`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ballot {
    round: u64,
    node: u8,
}

/// [`lease::Lease`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    epoch: u64,
    holder: u8,
    version: u64,
    solo: bool,
}

/// [`lease::Request`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    Prepare(Ballot),
    Accept(Ballot, Lease),
    Peek,
}

/// [`lease::Reply`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    Promise { ballot: Ballot, accepted: Option<(Ballot, Lease)> },
    Accepted { ballot: Ballot },
    Nack { ballot: Ballot, promised: Ballot },
    Peeked { accepted: Option<(Ballot, Lease)> },
}

/// [`lease::Acceptor`], as stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Acceptor {
    promised: Ballot,
    accepted: Option<(Ballot, Lease)>,
}

impl Default for Ballot {
    fn default() -> Ballot {
        lease::Ballot::default().into()
    }
}

impl From<lease::Ballot> for Ballot {
    fn from(b: lease::Ballot) -> Ballot {
        Ballot { round: b.round, node: b.node }
    }
}

impl From<Ballot> for lease::Ballot {
    fn from(b: Ballot) -> lease::Ballot {
        lease::Ballot { round: b.round, node: b.node }
    }
}

impl From<lease::Lease> for Lease {
    fn from(l: lease::Lease) -> Lease {
        Lease { epoch: l.epoch, holder: l.holder, version: l.version, solo: l.solo }
    }
}

impl From<Lease> for lease::Lease {
    fn from(l: Lease) -> lease::Lease {
        lease::Lease { epoch: l.epoch, holder: l.holder, version: l.version, solo: l.solo }
    }
}

fn value_in(v: Option<(lease::Ballot, lease::Lease)>) -> Option<(Ballot, Lease)> {
    v.map(|(b, l)| (b.into(), l.into()))
}

fn value_out(v: Option<(Ballot, Lease)>) -> Option<(lease::Ballot, lease::Lease)> {
    v.map(|(b, l)| (b.into(), l.into()))
}

impl From<lease::Request> for Request {
    fn from(r: lease::Request) -> Request {
        match r {
            lease::Request::Prepare(b) => Request::Prepare(b.into()),
            lease::Request::Accept(b, l) => Request::Accept(b.into(), l.into()),
            lease::Request::Peek => Request::Peek,
        }
    }
}

impl From<Request> for lease::Request {
    fn from(r: Request) -> lease::Request {
        match r {
            Request::Prepare(b) => lease::Request::Prepare(b.into()),
            Request::Accept(b, l) => lease::Request::Accept(b.into(), l.into()),
            Request::Peek => lease::Request::Peek,
        }
    }
}

impl From<lease::Reply> for Reply {
    fn from(r: lease::Reply) -> Reply {
        match r {
            lease::Reply::Promise { ballot, accepted } => {
                Reply::Promise { ballot: ballot.into(), accepted: value_in(accepted) }
            }
            lease::Reply::Accepted { ballot } => Reply::Accepted { ballot: ballot.into() },
            lease::Reply::Nack { ballot, promised } => {
                Reply::Nack { ballot: ballot.into(), promised: promised.into() }
            }
            lease::Reply::Peeked { accepted } => Reply::Peeked { accepted: value_in(accepted) },
        }
    }
}

impl From<Reply> for lease::Reply {
    fn from(r: Reply) -> lease::Reply {
        match r {
            Reply::Promise { ballot, accepted } => {
                lease::Reply::Promise { ballot: ballot.into(), accepted: value_out(accepted) }
            }
            Reply::Accepted { ballot } => lease::Reply::Accepted { ballot: ballot.into() },
            Reply::Nack { ballot, promised } => {
                lease::Reply::Nack { ballot: ballot.into(), promised: promised.into() }
            }
            Reply::Peeked { accepted } => lease::Reply::Peeked { accepted: value_out(accepted) },
        }
    }
}

impl From<lease::Acceptor> for Acceptor {
    fn from(a: lease::Acceptor) -> Acceptor {
        Acceptor { promised: a.promised.into(), accepted: value_in(a.accepted) }
    }
}

impl From<Acceptor> for lease::Acceptor {
    fn from(a: Acceptor) -> lease::Acceptor {
        lease::Acceptor { promised: a.promised.into(), accepted: value_out(a.accepted) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn frames_round_trip_and_refuse_oversize_and_garbage() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let mut buffer = Vec::new();
        let ballot = lease::Ballot { round: 7, node: 2 };
        let value = lease::Lease { epoch: 3, holder: 2, version: 9, solo: true };
        let sent =
            Control::Register { pipeline: "p".into(), request: lease::Request::Accept(ballot, value).into() };
        write_frame(&mut a, &sent, &mut buffer).await.unwrap();
        let got: Control = read_frame(&mut b, MAX_CONTROL_FRAME, &mut Vec::new()).await.unwrap();
        assert_eq!(got, sent);
        let Control::Register { request, .. } = got else { unreachable!() };
        assert_eq!(lease::Request::from(request), lease::Request::Accept(ballot, value));

        a.write_all(&(MAX_CONTROL_FRAME + 1).to_be_bytes()).await.unwrap();
        let err = read_frame::<_, Control>(&mut b, MAX_CONTROL_FRAME, &mut Vec::new()).await.unwrap_err();
        assert!(matches!(err, FrameError::TooLong { .. }), "{err}");

        a.write_all(&2u32.to_be_bytes()).await.unwrap();
        a.write_all(&[0xff, 0xff]).await.unwrap();
        let err = read_frame::<_, Control>(&mut b, MAX_CONTROL_FRAME, &mut Vec::new()).await.unwrap_err();
        assert!(matches!(err, FrameError::Decode(_)), "{err}");
    }
}
