//! Captures read back from object storage, for the commands that read captures
//! (`wstap sessions s3://BUCKET/PREFIX/…`): the objects a URL names, each streamed when
//! its turn comes, a few chunks ahead of the reader, never held whole.

use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::Arc;

use bytes::{Buf, Bytes};
use futures_util::StreamExt;
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt};
use tokio::runtime::Handle;

use crate::config::{parse_url, UploadSettings, Verify};
use wstap_replay::Opener;

/// Chunks of an object read ahead of its reader, at most.
const AHEAD: usize = 4;

/// The names of captures: what the commands read, compressed or not.
const CAPTURES: [&str; 8] =
    [".pcapng", ".pcap", ".pcapng.gz", ".pcap.gz", ".pcapng.zst", ".pcap.zst", ".pcapng.lz4", ".pcap.lz4"];

/// The captures `url` names (`s3://BUCKET/KEY`, one object; `s3://BUCKET/PREFIX/`, every
/// capture under it, in key order), each named by its URL and opened by an [`Opener`].
/// The store's address, region and credentials are those of `store` (a config's
/// `[capture.upload]`), else the environment's (`AWS_ENDPOINT_URL`, `AWS_REGION`,
/// `AWS_ACCESS_KEY_ID` …).
pub fn captures(url: &str, store: Option<&UploadSettings>) -> Result<Vec<(PathBuf, Opener)>, String> {
    let (bucket, key) = parse_url(url)?;
    let mut settings = store.cloned().unwrap_or_else(|| UploadSettings {
        url: url.to_owned(),
        bucket: bucket.clone(),
        prefix: String::new(),
        endpoint: None,
        region: None,
        credentials: None,
        ca_file: None,
        delete_after: false,
        concurrency: 1,
        max_backlog: u64::MAX,
        verify: Verify::Size,
        shutdown_wait: std::time::Duration::ZERO,
    });
    settings.bucket.clone_from(&bucket);
    let objects: Arc<dyn ObjectStore> = super::store::open(&settings)?;
    let handle = runtime()?;
    let parsed = Key::parse(&key).map_err(|e| format!("{url}: {e}"))?;
    let one = (!url.ends_with('/') && !key.is_empty()).then(|| parsed.clone());
    let prefix = (!key.is_empty()).then_some(parsed);
    let store = objects.clone();
    let keys = on(&handle, async move {
        if let Some(k) = one {
            match store.head(&k).await {
                Ok(_) => return Ok(vec![k]),
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(super::describe(&e)),
            }
        }
        let mut listed = store.list(prefix.as_ref());
        let mut keys = Vec::new();
        while let Some(meta) = listed.next().await {
            let meta = meta.map_err(|e| super::describe(&e))?;
            if CAPTURES.iter().any(|c| meta.location.as_ref().ends_with(c)) {
                keys.push(meta.location);
            }
        }
        keys.sort();
        Ok(keys)
    })??;
    if keys.is_empty() {
        return Err(format!("{url}: no capture there"));
    }
    Ok(keys
        .into_iter()
        .map(|k| {
            let name = PathBuf::from(format!("s3://{bucket}/{k}"));
            let (store, handle) = (objects.clone(), handle.clone());
            let open: Opener =
                Box::new(move || Ok(Box::new(stream(&handle, store.clone(), k.clone())) as Box<dyn Read + Send>));
            (name, open)
        })
        .collect())
}

/// A runtime of its own, on a thread of its own for the rest of the process: the
/// commands that read are not async, and some run inside a runtime of their own.
fn runtime() -> Result<Handle, String> {
    let (tx, rx) = mpsc::sync_channel(1);
    // Made on its thread, and never dropped: no runtime is dropped in another's context.
    std::thread::Builder::new()
        .name("wstap-objects".into())
        .spawn(move || match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => {
                let _ = tx.send(Ok(rt.handle().clone()));
                rt.block_on(std::future::pending::<()>());
            }
            Err(e) => {
                let _ = tx.send(Err(e.to_string()));
            }
        })
        .map_err(|e| e.to_string())?;
    rx.recv().map_err(|_| "the object store's runtime did not start".to_owned())?
}

/// Runs `work` on the objects' runtime and waits for it.
fn on<T: Send + 'static>(
    handle: &Handle,
    work: impl std::future::Future<Output = T> + Send + 'static,
) -> Result<T, String> {
    let (tx, rx) = mpsc::sync_channel(1);
    handle.spawn(async move {
        let _ = tx.send(work.await);
    });
    rx.recv().map_err(|_| "the object store's runtime stopped".to_owned())
}

/// An object's bytes as a reader: fetched by a task of the objects' runtime, at most
/// [`AHEAD`] chunks ahead.
fn stream(handle: &Handle, store: Arc<dyn ObjectStore>, key: Key) -> ObjectReader {
    let (tx, rx) = mpsc::sync_channel(AHEAD);
    handle.spawn(async move {
        let mut body = match store.get(&key).await {
            Ok(got) => got.into_stream(),
            Err(e) => {
                let _ = tx.send(Err(io::Error::other(super::describe(&e))));
                return;
            }
        };
        let mut tx = tx;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| io::Error::other(super::describe(&e)));
            // A full channel waits on a blocking thread: the reader sets the pace.
            let sent = tokio::task::spawn_blocking(move || {
                let sent = tx.send(chunk).is_ok();
                (tx, sent)
            });
            match sent.await {
                Ok((back, true)) => tx = back,
                _ => return,
            }
        }
    });
    ObjectReader { rx, chunk: Bytes::new() }
}

/// The reading end of [`stream`].
struct ObjectReader {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    chunk: Bytes,
}

impl Read for ObjectReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.chunk.is_empty() {
            match self.rx.recv() {
                Ok(chunk) => self.chunk = chunk?,
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk[..n]);
        self.chunk.advance(n);
        Ok(n)
    }
}
