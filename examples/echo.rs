//! A small WebSocket echo backend for the demo and for trying wstap by hand.
//!
//! `cargo run --example echo -- [ADDR]` (default `127.0.0.1:9000`, the upstream of
//! `config/wstap.toml`). Echoes every text and binary message; answers pings.

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:9000".to_owned());
    let listener = TcpListener::bind(&addr).await?;
    eprintln!("echo: listening on {}", listener.local_addr()?);
    loop {
        let (stream, peer) = listener.accept().await?;
        tokio::spawn(async move {
            let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                eprintln!("echo: {peer}: not a WebSocket handshake");
                return;
            };
            while let Some(Ok(msg)) = ws.next().await {
                if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                    break;
                }
            }
        });
    }
}
