//! TLS settings of a listener (`[[listener]]` `tls = { … }`) and of a route's upstream
//! (`wss://`, `https://`, `tls = { … }`): certificates and keys read from PEM files into
//! rustls configurations when the config is checked or loaded, so `wstap check` finds a
//! bad file and a reload (SIGHUP) that cannot read one changes nothing. TLS 1.2 and 1.3
//! with rustls's default suites (no TLS 1.0/1.1, no weak ciphers), ALPN `http/1.1`.
//! Listeners: one certificate per SNI name over a default one, client certificates when
//! `client_ca` is set. Upstreams: verified against the system's roots (the ones the
//! host's administrator keeps, read by rustls-native-certs) or `ca_file`; a client
//! certificate if asked; `insecure_skip_verify` only when written out.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};

use serde::Deserialize;

/// `tls` of a `[[listener]]`, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileServerTls {
    pub(super) cert: PathBuf,
    pub(super) key: PathBuf,
    #[serde(default)]
    pub(super) sni: Vec<FileSni>,
    pub(super) client_ca: Option<PathBuf>,
}

/// One `sni` entry, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileSni {
    pub(super) name: String,
    pub(super) cert: PathBuf,
    pub(super) key: PathBuf,
}

/// `tls` of a `[[route]]`, as written.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct FileUpstreamTls {
    pub(super) ca_file: Option<PathBuf>,
    pub(super) server_name: Option<String>,
    pub(super) cert: Option<PathBuf>,
    pub(super) key: Option<PathBuf>,
    #[serde(default)]
    pub(super) insecure_skip_verify: bool,
}

/// A TLS listener's settings: the files it was built from (for `wstap check`) and the
/// rustls configuration new handshakes use.
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// The default certificate chain (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// More certificates, by SNI name: (name, chain, key).
    pub sni: Vec<(String, PathBuf, PathBuf)>,
    /// CA certificates client certificates must chain to; `None`: none asked for.
    pub client_ca: Option<PathBuf>,
    /// What handshakes run with.
    pub config: Arc<ServerConfig>,
}

/// TLS to a route's upstream: the settings as written (for `wstap check`) and the rustls
/// configuration connections use. Two are the same when they share the configuration
/// (an upstream connection is reused only by requests that would have opened it alike).
#[derive(Debug, Clone)]
pub struct UpstreamTls {
    /// CA certificates to verify the upstream with, instead of the system's.
    pub ca_file: Option<PathBuf>,
    /// The name to ask for (SNI) and verify, instead of the URL's host.
    pub server_name: rustls::pki_types::ServerName<'static>,
    /// The client certificate chain and key to show, if any.
    pub cert: Option<(PathBuf, PathBuf)>,
    /// The upstream's certificate is not checked at all.
    pub insecure_skip_verify: bool,
    /// What connections run with.
    pub config: Arc<rustls::ClientConfig>,
}

impl PartialEq for UpstreamTls {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.config, &other.config)
    }
}

/// The system's root certificates, read each time a config is loaded (a reload picks up
/// an updated store).
fn system_roots() -> Result<Arc<RootCertStore>, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    match (added, found.errors.first()) {
        (0, Some(e)) => Err(format!("no system root certificate could be read: {e}")),
        (0, None) => Err("the system has no root certificates (set ca_file)".to_owned()),
        _ => Ok(Arc::new(roots)),
    }
}

/// Builds the TLS settings of an upstream; the error names the key (under the route's
/// `tls.`) and what was wrong.
pub(super) fn upstream_tls(f: FileUpstreamTls, host: &str) -> Result<UpstreamTls, (String, String)> {
    let provider = provider();
    let name = f.server_name.clone().unwrap_or_else(|| host.to_owned());
    let server_name = rustls::pki_types::ServerName::try_from(name.clone())
        .map_err(|_| ("server_name".to_owned(), format!("{name:?} is not a DNS name or an IP address")))?;
    let roots = match &f.ca_file {
        Some(ca) => Arc::new(roots(ca).map_err(|e| ("ca_file".to_owned(), e))?),
        None if f.insecure_skip_verify => Arc::new(RootCertStore::empty()),
        None => system_roots().map_err(|e| ("ca_file".to_owned(), e))?,
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ("ca_file".to_owned(), e.to_string()))?
        .with_root_certificates(roots);
    let mut config = match (&f.cert, &f.key) {
        (Some(cert), Some(key)) => {
            let chain = certificates(cert).map_err(|e| ("cert".to_owned(), e))?;
            let der = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| ("key".to_owned(), format!("{}: no private key read: {e}", key.display())))?;
            builder
                .with_client_auth_cert(chain, der)
                .map_err(|e| ("key".to_owned(), format!("{}: {e}", key.display())))?
        }
        (None, None) => builder.with_no_client_auth(),
        (Some(_), None) => return Err(("key".to_owned(), "cert is set without its key".to_owned())),
        (None, Some(_)) => return Err(("cert".to_owned(), "key is set without its cert".to_owned())),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    if f.insecure_skip_verify {
        config.dangerous().set_certificate_verifier(Arc::new(NoVerification(provider)));
    }
    Ok(UpstreamTls {
        ca_file: f.ca_file,
        server_name,
        cert: f.cert.zip(f.key),
        insecure_skip_verify: f.insecure_skip_verify,
        config: Arc::new(config),
    })
}

/// TLS to an object store (`capture.upload`): its certificate checked against `ca_file`
/// or the system's roots.
pub fn store_client(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, String> {
    let roots = match ca_file {
        Some(ca) => Arc::new(roots(ca)?),
        None => system_roots()?,
    };
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

/// Whether a server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerCheck {
    /// Against the CA file given, or the system's roots.
    Verified,
    /// Any certificate is accepted (`--insecure`).
    Skipped,
}

/// TLS to a server outside a config (`wstap replay --target wss://…`): its certificate
/// checked as `check` says, against `ca_file` or the system's roots. The error names the
/// option.
pub fn client(host: &str, ca_file: Option<PathBuf>, check: ServerCheck) -> Result<UpstreamTls, String> {
    let insecure_skip_verify = check == ServerCheck::Skipped;
    let f = FileUpstreamTls { ca_file, insecure_skip_verify, ..FileUpstreamTls::default() };
    upstream_tls(f, host).map_err(|(key, e)| format!("--{}: {e}", key.replace('_', "-")))
}

/// A server's TLS outside a config (`wstap mock --tls-cert … --tls-key …`).
pub fn server(cert: PathBuf, key: PathBuf) -> Result<ServerTls, String> {
    let f = FileServerTls { cert, key, sni: Vec::new(), client_ca: None };
    server_tls(f, false).map_err(|(_, e)| format!("--tls-cert/--tls-key: {e}"))
}

/// `insecure_skip_verify`: any certificate is accepted; signatures are still checked,
/// so the connection is encrypted, to someone.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The crypto wstap's TLS uses: rustls with *ring*.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads a listener's certificates and keys; the error names the file (the caller adds
/// the key) and what was wrong with it.
pub(super) fn server_tls(f: FileServerTls, http2: bool) -> Result<ServerTls, (String, String)> {
    let provider = provider();
    let default = certified(&f.cert, &f.key, &provider).map_err(|e| ("cert".to_owned(), e))?;
    let mut by_name = HashMap::new();
    let mut sni = Vec::new();
    for (i, s) in f.sni.into_iter().enumerate() {
        let name = s.name.trim_end_matches('.').to_ascii_lowercase();
        if name.is_empty() || name.contains(['/', ' ', ':']) {
            return Err((format!("sni[{i}].name"), format!("{:?} is not a host name", s.name)));
        }
        if name.contains('*') {
            return Err((format!("sni[{i}].name"), format!("{:?}: wildcards are not matched; list each name", s.name)));
        }
        let key = certified(&s.cert, &s.key, &provider).map_err(|e| (format!("sni[{i}].cert"), e))?;
        if by_name.insert(name.clone(), Arc::new(key)).is_some() {
            return Err((format!("sni[{i}].name"), format!("{name:?} is listed twice")));
        }
        sni.push((name, s.cert, s.key));
    }
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ("cert".to_owned(), e.to_string()))?;
    let builder = match &f.client_ca {
        Some(ca) => {
            let roots = Arc::new(roots(ca).map_err(|e| ("client_ca".to_owned(), e))?);
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider)
                .build()
                .map_err(|e| ("client_ca".to_owned(), format!("{}: {e}", ca.display())))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(BySni { default: Arc::new(default), by_name }));
    config.alpn_protocols = match http2 {
        true => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        false => vec![b"http/1.1".to_vec()],
    };
    Ok(ServerTls { cert: f.cert, key: f.key, sni, client_ca: f.client_ca, config: Arc::new(config) })
}

/// A certificate chain and its key, checked to belong together.
fn certified(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<CertifiedKey, String> {
    let chain = certificates(cert)?;
    let der = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: no private key read: {e}", key.display()))?;
    CertifiedKey::from_der(chain, der, provider).map_err(|e| format!("{} with {}: {e}", cert.display(), key.display()))
}

/// Every certificate of a PEM file (at least one).
pub(super) fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: no certificate in it", path.display()));
    }
    Ok(chain)
}

/// A root store of the certificates in a PEM file.
pub(super) fn roots(path: &Path) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(path)? {
        roots.add(cert).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(roots)
}

/// The certificate for the name a client asks for (SNI), or the default one.
#[derive(Debug)]
struct BySni {
    default: Arc<CertifiedKey>,
    by_name: HashMap<String, Arc<CertifiedKey>>,
}

impl ResolvesServerCert for BySni {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let named = hello.server_name().and_then(|n| self.by_name.get(&n.to_ascii_lowercase()));
        Some(named.unwrap_or(&self.default).clone())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Settings;
    use std::path::Path;

    /// A self-signed certificate for `name` and its key, as PEM files in `dir`.
    fn site(dir: &Path, file: &str) -> (String, String) {
        let c = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let (cert, key) = (dir.join(format!("{file}.pem")), dir.join(format!("{file}.key")));
        std::fs::write(&cert, c.cert.pem()).unwrap();
        std::fs::write(&key, c.signing_key.serialize_pem()).unwrap();
        (cert.display().to_string(), key.display().to_string())
    }

    fn parse(cert: &str, key: &str) -> Result<Settings, String> {
        let toml = format!(
            "[[listener]]\naddr = \"127.0.0.1:8443\"\ntls = {{ cert = {cert:?}, key = {key:?} }}\n\
             [[route]]\nupstream = \"ws://127.0.0.1:9\"\n"
        );
        Settings::parse(&toml, Path::new("test.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn listeners_read_their_files_and_errors_name_key_and_file() {
        let dir = std::env::temp_dir().join(format!("wstap-tls-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = site(&dir, "a");
        let (_, other_key) = site(&dir, "b");
        let s = parse(&cert, &key).unwrap();
        assert!(s.tls_at("127.0.0.1:8443".parse().unwrap()).is_some());
        // `wstap check` prints it back as a [[listener]] that parses to the same.
        let again = Settings::parse(&s.to_string(), Path::new("test.toml")).unwrap();
        assert_eq!(again.to_string(), s.to_string());
        for (cert, key, wanted) in [
            ("/nonexistent/site.pem", key.as_str(), "key `listener[0].tls.cert`: /nonexistent/site.pem"),
            (key.as_str(), key.as_str(), "no certificate in it"),
            (cert.as_str(), cert.as_str(), "no private key read"),
            (cert.as_str(), other_key.as_str(), "KeyMismatch"),
        ] {
            let e = parse(cert, key).unwrap_err();
            assert!(e.contains("test.toml") && e.contains(wanted), "{e}");
        }
        // A route's upstream TLS: named keys.
        let route = |url: &str, tls: &str| {
            let toml = format!("listen = [\"127.0.0.1:1\"]\n[[route]]\nupstream = \"{url}\"\ntls = {{ {tls} }}\n");
            Settings::parse(&toml, Path::new("test.toml")).map_err(|e| e.to_string())
        };
        let ok = route("wss://localhost", &format!("ca_file = {cert:?}, cert = {cert:?}, key = {key:?}")).unwrap();
        assert_eq!(ok.routes[0].tls.as_ref().unwrap().server_name.to_str(), "localhost");
        for (url, tls, wanted) in [
            (
                "ws://localhost",
                "insecure_skip_verify = true",
                "key `route[0].tls`: the upstream ws://localhost:80 is plain",
            ),
            ("wss://localhost", "ca_file = \"/nonexistent/ca.pem\"", "key `route[0].tls.ca_file`: /nonexistent/ca.pem"),
            ("wss://localhost", &format!("cert = {cert:?}"), "key `route[0].tls.key`: cert is set without its key"),
            ("wss://localhost", "server_name = \"a b\"", "key `route[0].tls.server_name`"),
        ] {
            let e = route(url, tls).unwrap_err();
            assert!(e.contains(wanted), "{e}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
