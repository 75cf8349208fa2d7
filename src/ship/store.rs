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
    let (y, m, d) = day_in_name(name).unwrap_or_else(|| day_of(finished));
    match prefix.is_empty() {
        true => format!("{instance}/{y}/{m}/{d}/{name}"),
        false => format!("{prefix}/{instance}/{y}/{m}/{d}/{name}"),
    }
}

/// The year, month and day of the first `_YYYYmmddHHMMSS` part of a file name (its
/// prefix may hold dots: an instance named by a host's full name).
fn day_in_name(name: &str) -> Option<(String, String, String)> {
    let stem = name.strip_suffix(".pcapng").unwrap_or(name);
    let stamp = stem.split(['_', '.']).find(|p| p.len() == 14 && p.bytes().all(|b| b.is_ascii_digit()))?;
    let (y, m, d) = (&stamp[0..4], &stamp[4..6], &stamp[6..8]);
    let valid = ("01".."13").contains(&m) && ("01".."32").contains(&d);
    valid.then(|| (y.to_owned(), m.to_owned(), d.to_owned()))
}

/// The UTC day of `t` (a time before 1970 counts as 1970-01-01).
fn day_of(t: SystemTime) -> (String, String, String) {
    let days = t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() / 86_400) as i64;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (format!("{y:04}"), format!("{m:02}"), format!("{d:02}"))
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
        let dotted = "wstap-ip-10-0-0-1.ec2.internal_00003_20261207093000.pcapng";
        assert_eq!(key("p", "i", dotted, t), format!("p/i/2026/12/07/{dotted}"));
        let before = UNIX_EPOCH - Duration::from_secs(86_400 * 400);
        assert_eq!(key("p", "i", "old.pcapng", before), "p/i/1970/01/01/old.pcapng");
        for (secs, day) in [(0, "1970/01/01"), (951_782_400, "2000/02/29"), (4_107_542_400, "2100/03/01")] {
            assert_eq!(key("p", "i", "f", UNIX_EPOCH + Duration::from_secs(secs)), format!("p/i/{day}/f"));
        }
    }
}
