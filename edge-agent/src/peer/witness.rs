//! `weir witness`: the third voter of two data agents. It keeps one register acceptor per
//! pipeline ([`RegisterStore`]) and answers the data agents' register requests on control
//! links; it holds no pipeline data and never owns anything.

use std::sync::Arc;

use super::link::{self, Identity, Link, Transport};
use super::store::RegisterStore;
use super::wire::{self, Channel, Control};
use crate::config::node::NodeConfig;

/// Serves register requests on `node.listen` until the transport fails.
pub async fn serve<T: Transport>(
    transport: T,
    node: &NodeConfig,
    me: Identity,
    store: RegisterStore,
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
                    if let Err(e) = answer(link, &store).await {
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

/// Answers one agent's register requests, each made durable before its reply is sent.
pub async fn answer<S>(mut link: Link<S>, store: &RegisterStore) -> anyhow::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut inbound, mut outbound) = (Vec::new(), Vec::new());
    loop {
        let message: Control =
            wire::read_frame(&mut link.stream, wire::MAX_CONTROL_FRAME, &mut inbound).await?;
        let Control::Register { pipeline, request } = message else {
            anyhow::bail!("a reply on a link that carries requests");
        };
        let request = request.into();
        let reply = {
            let store = store.clone();
            let pipeline = pipeline.clone();
            tokio::task::spawn_blocking(move || store.handle(&pipeline, request)).await??
        };
        let reply = Control::Registered { pipeline, reply: reply.into() };
        wire::write_frame(&mut link.stream, &reply, &mut outbound).await?;
    }
}
