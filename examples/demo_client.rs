//! The demo's client: one short WebSocket session through wstap, checked message by
//! message. `cargo run --example demo_client -- [URL]` (default `ws://127.0.0.1:8080/demo`).
//! Retries the connection for a few seconds while the daemon starts.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args().nth(1).unwrap_or_else(|| "ws://127.0.0.1:8080/demo".to_owned());
    let mut attempt = 0;
    let (mut ws, resp) = loop {
        match tokio_tungstenite::connect_async(&url).await {
            Ok(ok) => break ok,
            Err(e) if attempt < 50 => {
                attempt += 1;
                if attempt == 1 {
                    eprintln!("demo: waiting for {url} ({e})");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(format!("cannot open {url}: {e}").into()),
        }
    };
    println!("demo: connected to {url}: {}", resp.status());
    let messages = [
        Message::text("hello through wstap"),
        Message::binary((0u8..=255).collect::<Vec<_>>()),
        Message::text("x".repeat(100_000)),
        Message::Ping(b"ping".to_vec().into()),
    ];
    for msg in messages {
        let sent = msg.clone();
        ws.send(msg).await?;
        let echoed = ws.next().await.ok_or("connection closed")??;
        let ok = match (&sent, &echoed) {
            (Message::Ping(a), Message::Pong(b)) => a == b,
            _ => sent == echoed,
        };
        println!(
            "demo: sent {:>7} bytes ({:6}), echo {}",
            sent.len(),
            kind(&sent),
            if ok { "matches" } else { "DIFFERS" }
        );
        if !ok {
            return Err("echo differs".into());
        }
    }
    ws.close(Some(CloseFrame { code: CloseCode::Normal, reason: "demo done".into() })).await?;
    while let Some(Ok(_)) = ws.next().await {}
    println!("demo: closed cleanly");
    Ok(())
}

fn kind(m: &Message) -> &'static str {
    match m {
        Message::Text(_) => "text",
        Message::Binary(_) => "binary",
        Message::Ping(_) => "ping",
        _ => "other",
    }
}
