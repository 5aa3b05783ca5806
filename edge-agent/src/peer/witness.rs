//! `weir witness`: the third voter of two data agents. It keeps one register acceptor per
//! pipeline ([`RegisterStore`]) and answers the data agents' register requests on control
//! links; it holds no pipeline data and never owns anything.

use std::sync::Arc;

use super::link::{self, Identity, Link, Transport};
use super::store::RegisterStore;
use super::wire::{self, Channel, Control};
use crate::config::node::NodeConfig;

/// Serves register requests on `node.listen` until the transport fails. `inline_disk`: the
/// store is written on the async task instead of a blocking thread (the seeded simulation,
/// whose runs must not depend on when a real thread finishes).
pub async fn serve<T: Transport>(
    transport: T,
    node: &NodeConfig,
    me: Identity,
    store: RegisterStore,
    inline_disk: bool,
) -> anyhow::Result<()> {
    let listener = transport
        .bind(node.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {} (node.toml listen): {e}", node.listen))?;
    tracing::info!("witness {} listening on {}", node.name, node.listen);
    let me = Arc::new(me);
    loop {
        let (stream, from) = match T::accept(&listener).await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!("accept: {e}");
                continue;
            }
        };
        let me = me.clone();
        let store = store.clone();
        tokio::spawn(async move {
            match link::accept(stream, from, &me).await {
                Ok(link) if link.channel == Channel::Control => {
                    let peer = link.peer.clone();
                    tracing::info!("{peer}: control link up");
                    if let Err(e) = answer(link, |p, r| from_store(&store, p, r, inline_disk)).await {
                        tracing::info!("{peer}: control link down: {e}");
                    }
                }
                Ok(link) => {
                    tracing::warn!("{}: a bulk link to a witness, which holds no data; closed", link.peer)
                }
                Err(e) => {
                    tracing::warn!("{e}");
                    eprintln!("weir: {e}");
                }
            }
        });
    }
}

/// Answers one agent's register requests with `answer` (none: no reply, the acceptor's
/// state could not be made durable), each reply sent only once `answer` returned it.
pub async fn answer<S, F, A>(mut link: Link<S>, answer: A) -> anyhow::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    A: Fn(String, wire::Request) -> F,
    F: std::future::Future<Output = Option<wire::Reply>> + Send,
{
    let (mut inbound, mut outbound) = (Vec::new(), Vec::new());
    loop {
        let message: Control =
            wire::read_frame(&mut link.stream, wire::MAX_CONTROL_FRAME, &mut inbound).await?;
        let Control::Register { pipeline, request } = message else {
            anyhow::bail!("a reply on a link that carries requests");
        };
        let Some(reply) = answer(pipeline.clone(), request).await else { continue };
        wire::write_frame(&mut link.stream, &Control::Registered { pipeline, reply }, &mut outbound).await?;
    }
}

/// The witness's answer: `store`'s acceptor for the pipeline, durable before the reply;
/// written on a blocking thread unless `inline_disk`.
pub async fn from_store(
    store: &RegisterStore,
    pipeline: String,
    request: wire::Request,
    inline_disk: bool,
) -> Option<wire::Reply> {
    let store = store.clone();
    let handled = super::on_disk(inline_disk, move || store.handle(&pipeline, request.into())).await;
    match handled {
        Ok(Ok(reply)) => Some(reply.into()),
        Ok(Err(e)) => {
            tracing::error!("{e}");
            None
        }
        Err(_) => None,
    }
}
