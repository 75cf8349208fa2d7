//! Graceful shutdown: stop accepting, let live sessions finish within the grace period,
//! close what is left after it.

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

use wstap::State;

use crate::support::*;

#[tokio::test]
async fn draining_refuses_new_clients_and_waits_for_live_sessions() {
    within(async {
        // Its own loopback address: no other test can be handed this port meanwhile.
        let echo = echo_upstream().await;
        let toml =
            format!("listen = [\"127.0.0.3:0\"]\n[[route]]\nupstream = \"ws://{echo}\"\n[shutdown]\ngrace = \"60s\"");
        let proxy = Proxy::start(&toml).await;
        let addr = proxy.addr();
        let mut witness = Witness::open(&proxy.ws_url("/")).await;
        proxy.begin_shutdown().await;
        let mut state = proxy.state.clone();
        state.wait_for(|s| *s == State::Draining).await.unwrap();
        // The daemon no longer listens: its exact address can be bound again. (A failed
        // connect proves less: a freed loopback port can become a client's own source
        // port, and a connect to it then succeeds by connecting to itself.)
        let taken_back = TcpListener::bind(addr).await.expect("the listen address is free while draining");
        witness.check("shutdown began").await;
        drop(taken_back);
        witness.close().await;
        proxy.stopped().await;
    })
    .await;
}

#[tokio::test]
async fn sessions_still_open_when_grace_ends_are_closed() {
    within(async {
        let proxy = Proxy::start(&config(echo_upstream().await, "[shutdown]\ngrace = \"100ms\"")).await;
        let (mut ws, _) = tokio_tungstenite::connect_async(proxy.ws_url("/")).await.unwrap();
        ws.send(Message::text("before")).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("before"));
        proxy.begin_shutdown().await;
        proxy.stopped().await;
        // The daemon has returned; the session's socket was closed under it.
        match ws.next().await {
            None | Some(Err(_)) => {}
            Some(Ok(m)) => panic!("session should be closed, got {m:?}"),
        }
    })
    .await;
}
