//! Graceful shutdown: stop accepting, let live sessions finish within the grace period,
//! close what is left after it.

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use wstap::daemon::State;

use crate::support::*;

#[tokio::test]
async fn draining_refuses_new_clients_and_waits_for_live_sessions() {
    within(async {
        let proxy = Proxy::start(&config(echo_upstream().await, "[shutdown]\ngrace = \"60s\"")).await;
        let addr = proxy.addr();
        let mut witness = Witness::open(&proxy.ws_url("/")).await;
        proxy.begin_shutdown().await;
        let mut state = proxy.state.clone();
        state.wait_for(|s| *s == State::Draining).await.unwrap();
        assert!(TcpStream::connect(addr).await.is_err(), "new connections are refused while draining");
        witness.check("shutdown began").await;
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
