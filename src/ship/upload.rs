//! Storing one finished file under its key: in one request, or in parts when it is
//! larger than a part, then checked (its size, and its ETag against the MD5 of what was
//! sent) before it counts as stored. S3 makes an object visible only once it is whole,
//! so a key never shows half a file; an object that fails the check is deleted. A key
//! that already holds this very file (a run killed after storing it) is recognised, and
//! one that holds something else is never overwritten.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use md5::{Digest, Md5};
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use crate::config::Verify;

/// The size of each part of a multipart upload, at least (S3 allows 10,000 parts).
const PART: u64 = 8 << 20;

/// The most parts an upload is cut into.
const MAX_PARTS: u64 = 10_000;

/// What became of a file handed to [`store`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    /// Stored now, and checked.
    Stored,
    /// Its key held this very file already.
    AlreadyThere,
    /// Its key holds something else: left alone.
    Conflict,
}

/// Why a try failed: the `reason` of `wstap_upload_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The store refused the credentials (401, 403).
    Credentials,
    /// The bucket does not exist.
    NoBucket,
    /// The store could not be reached, or did not answer in time.
    Unreachable,
    /// The object stored is not what was sent.
    Verify,
    /// The local file could not be read.
    Local,
    /// Any other refusal of the store (a 5xx, a full store).
    Store,
}

impl Failure {
    /// Every reason, in the order they are counted.
    pub const ALL: [Failure; 6] = [
        Failure::Credentials,
        Failure::NoBucket,
        Failure::Unreachable,
        Failure::Verify,
        Failure::Local,
        Failure::Store,
    ];

    /// Its label value.
    pub fn label(self) -> &'static str {
        match self {
            Failure::Credentials => "credentials",
            Failure::NoBucket => "no_bucket",
            Failure::Unreachable => "unreachable",
            Failure::Verify => "verify",
            Failure::Local => "local",
            Failure::Store => "store",
        }
    }
}

/// A failed try: why, and what was said.
#[derive(Debug)]
pub(super) struct Failed {
    pub(super) reason: Failure,
    pub(super) detail: String,
}

impl Failed {
    fn local(e: std::io::Error) -> Failed {
        Failed { reason: Failure::Local, detail: e.to_string() }
    }

    fn store(e: &object_store::Error, writing: bool) -> Failed {
        Failed { reason: classify(e, writing), detail: describe(e) }
    }
}

/// Stores the file at `path` under `key`.
pub(super) async fn store(
    store: Arc<dyn ObjectStore>,
    path: PathBuf,
    key: String,
    verify: Verify,
) -> Result<Outcome, Failed> {
    let key = Key::parse(&key).map_err(|e| Failed { reason: Failure::Local, detail: e.to_string() })?;
    let file = Arc::new(File::open(&path).map_err(Failed::local)?);
    let size = file.metadata().map_err(Failed::local)?.len();
    let part = part_size(size);
    match store.head(&key).await {
        // (Without s3:ListBucket, S3 answers 403 for a key that does not exist: then
        // nothing can be told, and the file is stored.)
        Err(object_store::Error::NotFound { .. } | object_store::Error::PermissionDenied { .. }) => {}
        Ok(there) => {
            let ours = etag(&file, size, part).await.map_err(Failed::local)?;
            return Ok(match there.size == size && matches(there.e_tag.as_deref(), &ours, verify) {
                true => Outcome::AlreadyThere,
                false => Outcome::Conflict,
            });
        }
        Err(e) => return Err(Failed::store(&e, false)),
    }
    let sent = match size <= part {
        true => {
            let (bytes, md5) = read(&file, 0, size).await.map_err(Failed::local)?;
            store.put(&key, PutPayload::from(bytes)).await.map_err(|e| Failed::store(&e, true))?;
            hex(&md5)
        }
        false => in_parts(&*store, &key, &file, size, part).await?,
    };
    let stored = store.head(&key).await.map_err(|e| Failed::store(&e, false))?;
    if stored.size != size || !matches(stored.e_tag.as_deref(), &sent, verify) {
        let _ = store.delete(&key).await;
        let detail = format!(
            "the store holds {} bytes with ETag {:?}; {size} bytes were sent, with MD5 ETag {sent:?}",
            stored.size, stored.e_tag
        );
        return Err(Failed { reason: Failure::Verify, detail });
    }
    Ok(Outcome::Stored)
}

/// A multipart upload, a part at a time; given up (aborted) on any error. Returns the
/// ETag S3 gives such an object: the MD5 of the parts' MD5s, a dash, their count.
async fn in_parts(
    store: &dyn ObjectStore,
    key: &Key,
    file: &Arc<File>,
    size: u64,
    part: u64,
) -> Result<String, Failed> {
    let mut upload = store.put_multipart(key).await.map_err(|e| Failed::store(&e, true))?;
    let mut digests = Vec::new();
    let mut at = 0;
    while at < size {
        let len = part.min(size - at);
        let sent = match read(file, at, len).await {
            Ok((bytes, md5)) => {
                digests.extend_from_slice(&md5);
                upload.put_part(PutPayload::from(bytes)).await.map_err(|e| Failed::store(&e, true))
            }
            Err(e) => Err(Failed::local(e)),
        };
        if let Err(failed) = sent {
            let _ = upload.abort().await;
            return Err(failed);
        }
        at += len;
    }
    if let Err(e) = upload.complete().await {
        let _ = upload.abort().await;
        return Err(Failed::store(&e, true));
    }
    Ok(format!("{}-{}", hex(&Md5::digest(&digests)), digests.len() / 16))
}

/// The ETag an upload of this file makes, read from the disk.
async fn etag(file: &Arc<File>, size: u64, part: u64) -> std::io::Result<String> {
    if size <= part {
        return Ok(hex(&read(file, 0, size).await?.1));
    }
    let mut digests = Vec::new();
    let mut at = 0;
    while at < size {
        let len = part.min(size - at);
        digests.extend_from_slice(&read(file, at, len).await?.1);
        at += len;
    }
    Ok(format!("{}-{}", hex(&Md5::digest(&digests)), digests.len() / 16))
}

/// `len` bytes of the file from `at`, and their MD5, off the async threads.
async fn read(file: &Arc<File>, at: u64, len: u64) -> std::io::Result<(Bytes, [u8; 16])> {
    let file = file.clone();
    let work = move || {
        let mut buf = vec![0; len as usize];
        file.read_exact_at(&mut buf, at)?;
        let md5: [u8; 16] = Md5::digest(&buf).into();
        Ok((Bytes::from(buf), md5))
    };
    tokio::task::spawn_blocking(work).await.map_err(std::io::Error::other)?
}

/// The part size for a file of `size` bytes: [`PART`], or more for a file that would
/// need more than [`MAX_PARTS`] (whole MiB).
fn part_size(size: u64) -> u64 {
    let mib = 1 << 20;
    PART.max(size.div_ceil(MAX_PARTS).div_ceil(mib) * mib)
}

/// Whether an object's ETag says it holds what was sent (its MD5 form `sent`).
fn matches(etag: Option<&str>, sent: &str, verify: Verify) -> bool {
    match verify {
        Verify::Size => true,
        Verify::Etag => etag.is_some_and(|e| e.trim_matches('"').eq_ignore_ascii_case(sent)),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What the store said, for a log line: the request and its status, and S3's error code
/// and message, but never the response body itself. An S3 error body can repeat the
/// access key id and the request as it was signed, a session token included.
pub fn describe(e: &object_store::Error) -> String {
    let text = e.to_string();
    let tag = |name: &str| {
        let open = format!("<{name}>");
        let after = &text[text.find(&open)? + open.len()..];
        Some(after[..after.find('<')?].trim().to_owned())
    };
    let mut said = text.split('<').next().unwrap_or_default().trim_end_matches([' ', ':']).to_owned();
    if let Some(at) = said.find("status code: ") {
        let status = &said[at + "status code: ".len()..];
        let end = status.find(": ").unwrap_or(status.len());
        said.truncate(at + "status code: ".len() + end);
    }
    if let Some(code) = tag("Code") {
        said.push_str(&format!(": {code}"));
        if let Some(message) = tag("Message") {
            said.push_str(&format!(": {message}"));
        }
    }
    said.chars().take(400).collect()
}

/// Why the store refused: the credentials (401, 403), a bucket that does not exist (a
/// 404 on a write, or S3's `NoSuchBucket`), a store not reached, or anything else.
pub(super) fn classify(e: &object_store::Error, writing: bool) -> Failure {
    use object_store::client::{HttpError, HttpErrorKind};
    match e {
        object_store::Error::Unauthenticated { .. } | object_store::Error::PermissionDenied { .. } => {
            return Failure::Credentials
        }
        object_store::Error::NotFound { .. } if writing => return Failure::NoBucket,
        _ => {}
    }
    if e.to_string().contains("NoSuchBucket") {
        return Failure::NoBucket;
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(h) = s.downcast_ref::<HttpError>() {
            if matches!(h.kind(), HttpErrorKind::Connect | HttpErrorKind::Timeout) {
                return Failure::Unreachable;
            }
        }
        source = s.source();
    }
    Failure::Store
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_the_store_said_is_told_without_its_body() {
        let body = "<?xml version=\"1.0\"?><Error><Code>SignatureDoesNotMatch</Code><Message>The request signature we \
                    calculated does not match</Message><AWSAccessKeyId>AKIASECRETID</AWSAccessKeyId><CanonicalRequest>PUT \
                    x-amz-security-token:FQoGZXIvYXdzEXAMPLETOKEN</CanonicalRequest></Error>";
        let e = object_store::Error::Generic {
            store: "S3",
            source: format!("Error performing PUT http://s3/b/k in 3ms - Server returned non-2xx status code: 403 Forbidden: {body}").into(),
        };
        let said = describe(&e);
        assert!(!said.contains("AKIASECRETID") && !said.contains("EXAMPLETOKEN"), "{said}");
        assert!(
            said.contains("403 Forbidden") && said.contains("SignatureDoesNotMatch: The request signature"),
            "{said}"
        );
        let plain = object_store::Error::Generic { store: "S3", source: "error trying to connect: refused".into() };
        assert!(describe(&plain).contains("error trying to connect: refused"));
    }

    #[test]
    fn parts_stay_within_s3s_count() {
        assert_eq!(part_size(1), PART);
        assert_eq!(part_size(100 << 30), 11 << 20);
        assert!(part_size(1 << 40).div_ceil(1) * MAX_PARTS >= 1 << 40);
    }

    #[test]
    fn etags_are_compared_without_quotes_or_case() {
        assert!(matches(
            Some("\"9E107D9D372BB6826BD81D3542A419D6\""),
            "9e107d9d372bb6826bd81d3542a419d6",
            Verify::Etag
        ));
        assert!(!matches(Some("\"abc\""), "9e107d9d372bb6826bd81d3542a419d6", Verify::Etag));
        assert!(!matches(None, "9e10", Verify::Etag));
        assert!(matches(None, "9e10", Verify::Size));
        assert_eq!(
            hex(&Md5::digest(b"The quick brown fox jumps over the lazy dog")),
            "9e107d9d372bb6826bd81d3542a419d6"
        );
    }
}
