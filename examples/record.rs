//! Recording your own WebSocket connections with wstap's library, no proxy involved:
//! wrap each accepted `TcpStream` in a [`Tee`] whose [`Tap`] feeds a [`Capture`], then
//! hand the tee to your WebSocket (or hyper) server as if it were the stream.
//!
//! `cargo run --example record -- [DIR]` runs an echo server on a free port, talks to it
//! once, and leaves `DIR/wstap_*.pcapng` (default `captures/record-example`).

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use wstap::config::CaptureSettings;
use wstap::Capture;
use wstap::Leg;
use wstap::Opening;
use wstap::Tap;
use wstap::Tee;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args().nth(1).unwrap_or_else(|| "captures/record-example".to_owned());
    let capture = Capture::start(CaptureSettings::in_dir(&dir))?;
    let recorder = capture.recorder().clone();

    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move {
        let (stream, peer) = listener.accept().await?;
        // The one line that adds capture: the app's socket, teed.
        let opening = Opening::new(Leg::Client, addr, peer, format!("my app: connection from {peer}"));
        let tap = Tap::recording(recorder, opening);
        let mut ws = tokio_tungstenite::accept_async(Tee::new(stream, Some(tap))).await?;
        while let Some(msg) = ws.next().await {
            let msg = msg?;
            if msg.is_text() || msg.is_binary() {
                ws.send(msg).await?;
            }
        }
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
    });

    let (mut client, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/recorded")).await?;
    client.send(Message::text("recorded by the app itself")).await?;
    println!("record: echo = {}", client.next().await.ok_or("closed")??);
    client.close(None).await?;
    while client.next().await.is_some() {}
    drop(client);
    server.await?.map_err(|e| e.to_string())?;

    capture.finish(); // flush, fsync and close the file
    for entry in std::fs::read_dir(&dir)? {
        println!("record: wrote {}", entry?.path().display());
    }
    Ok(())
}
