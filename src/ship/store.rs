//! The object store: an S3 client (Apache Arrow's `object_store`) built from
//! `[capture.upload]`, speaking HTTP/1.1 through hyper and rustls (the daemon's own
//! stack, not a second one), and the object keys files are stored under.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http_body_util::BodyExt;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use object_store::aws::AmazonS3Builder;
use object_store::client::{
    ClientOptions, HttpClient, HttpError, HttpErrorKind, HttpRequest, HttpRequestBody, HttpResponse, HttpResponseBody,
    HttpService,
};
use object_store::{BackoffConfig, ObjectStore, RetryConfig};

use crate::config::UploadSettings;

/// How long a request may wait for its response head (an upload's body is sent first:
/// a part of 8 MiB at 100 KB/s still makes it).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(120);

/// How long a connection may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The store `u` names, with its credentials: those of the files the config names,
/// else the environment's (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
/// `AWS_SESSION_TOKEN`, web identity, a container's), else the instance's role. The
/// error says what was wrong, without a secret in it.
pub fn open(u: &UploadSettings) -> Result<Arc<dyn ObjectStore>, String> {
    let tls = crate::config::tls::store_client(u.ca_file.as_deref())?;
    let connector = Connector(Arc::new(tls));
    let mut b = AmazonS3Builder::from_env()
        .with_bucket_name(&u.bucket)
        .with_http_connector(connector)
        .with_client_options(ClientOptions::new().with_allow_http(true))
        .with_retry(RetryConfig {
            backoff: BackoffConfig::default(),
            max_retries: 3,
            retry_timeout: Duration::from_secs(60),
        });
    if let Some(endpoint) = &u.endpoint {
        b = b.with_endpoint(endpoint).with_virtual_hosted_style_request(false);
    }
    // Else `AWS_REGION` or `AWS_DEFAULT_REGION` (from_env), else us-east-1.
    if let Some(region) = &u.region {
        b = b.with_region(region);
    }
    if let Some(c) = &u.credentials {
        b = b.with_access_key_id(c.key_id.expose()).with_secret_access_key(c.secret.expose());
        if let Some(token) = &c.token {
            b = b.with_token(token.expose());
        }
    }
    b.build().map(|s| Arc::new(s) as Arc<dyn ObjectStore>).map_err(|e| e.to_string())
}

/// Where a file is stored: `PREFIX/INSTANCE/YYYY/MM/DD/NAME`, the day (UTC) the file
/// began, read from its name (`…_YYYYmmddHHMMSS…`), else the day it was `finished`.
pub fn key(prefix: &str, instance: &str, name: &str, finished: SystemTime) -> String {
    let day = day_in_name(name).unwrap_or_else(|| {
        let t = humantime::format_rfc3339_seconds(finished).to_string();
        (t[0..4].to_owned(), t[5..7].to_owned(), t[8..10].to_owned())
    });
    let (y, m, d) = day;
    match prefix.is_empty() {
        true => format!("{instance}/{y}/{m}/{d}/{name}"),
        false => format!("{prefix}/{instance}/{y}/{m}/{d}/{name}"),
    }
}

/// The year, month and day of the first `_YYYYmmddHHMMSS` part of a file name.
fn day_in_name(name: &str) -> Option<(String, String, String)> {
    let stem = name.split('.').next()?;
    let stamp = stem.split('_').find(|p| p.len() == 14 && p.bytes().all(|b| b.is_ascii_digit()))?;
    let (y, m, d) = (&stamp[0..4], &stamp[4..6], &stamp[6..8]);
    let valid = ("01".."13").contains(&m) && ("01".."32").contains(&d);
    valid.then(|| (y.to_owned(), m.to_owned(), d.to_owned()))
}

/// Requests through hyper, over TLS where the address says `https`.
#[derive(Debug)]
struct Connector(Arc<rustls::ClientConfig>);

impl object_store::client::HttpConnector for Connector {
    fn connect(&self, _options: &ClientOptions) -> object_store::Result<HttpClient> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        http.set_nodelay(true);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config((*self.0).clone())
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(30)).build(https);
        Ok(HttpClient::new(Service(client)))
    }
}

type HyperClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, HttpRequestBody>;

#[derive(Debug)]
struct Service(HyperClient);

#[async_trait::async_trait]
impl HttpService for Service {
    async fn call(&self, req: HttpRequest) -> Result<HttpResponse, HttpError> {
        let sent = tokio::time::timeout(RESPONSE_TIMEOUT, self.0.request(req)).await;
        let response = match sent {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                let kind = if e.is_connect() { HttpErrorKind::Connect } else { HttpErrorKind::Request };
                return Err(HttpError::new(kind, e));
            }
            Err(elapsed) => return Err(HttpError::new(HttpErrorKind::Timeout, elapsed)),
        };
        let (parts, body) = response.into_parts();
        let body = body.map_err(|e| HttpError::new(HttpErrorKind::Interrupted, e));
        Ok(HttpResponse::from_parts(parts, HttpResponseBody::new(body)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn keys_name_the_instance_and_the_day_the_file_began() {
        let t = UNIX_EPOCH + Duration::from_secs(1_765_000_000); // 2025-12-06
        assert_eq!(
            key("prod/ws", "eu-1a", "wstap_00042_20261207093000.pcapng", t),
            "prod/ws/eu-1a/2026/12/07/wstap_00042_20261207093000.pcapng"
        );
        assert_eq!(
            key("", "eu-1a", "wstap-eu-1a_00001_20261231235959_7.pcapng", t),
            "eu-1a/2026/12/31/wstap-eu-1a_00001_20261231235959_7.pcapng"
        );
        assert_eq!(key("p", "i", "mine.pcapng", t), "p/i/2025/12/06/mine.pcapng");
        assert_eq!(key("p", "i", "x_20261399000000.pcapng", t), "p/i/2025/12/06/x_20261399000000.pcapng");
    }
}
