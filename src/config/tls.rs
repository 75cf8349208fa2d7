//! TLS settings of a listener (`[[listener]]` `tls = { … }`): certificates and keys read
//! from PEM files into a rustls server configuration when the config is checked or
//! loaded, so `wstap check` finds a bad file and a reload (SIGHUP) that cannot read one
//! changes nothing. TLS 1.2 and 1.3 with rustls's default suites (no TLS 1.0/1.1, no
//! weak ciphers), ALPN `http/1.1`, one certificate per SNI name over a default one, and
//! client certificates when `client_ca` is set.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};

use super::file::FileServerTls;

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

/// The crypto wstap's TLS uses: rustls with *ring*.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads a listener's certificates and keys; the error names the file (the caller adds
/// the key) and what was wrong with it.
pub(super) fn server_tls(f: FileServerTls) -> Result<ServerTls, (String, String)> {
    let provider = provider();
    let default = certified(&f.cert, &f.key, &provider).map_err(|e| ("cert".to_owned(), e))?;
    let mut by_name = HashMap::new();
    let mut sni = Vec::new();
    for (i, s) in f.sni.into_iter().enumerate() {
        let name = s.name.trim_end_matches('.').to_ascii_lowercase();
        if name.is_empty() || name.contains(['/', ' ', ':']) {
            return Err((format!("sni[{i}].name"), format!("{:?} is not a host name", s.name)));
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
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(ServerTls { cert: f.cert, key: f.key, sni, client_ca: f.client_ca, config: Arc::new(config) })
}

/// A certificate chain and its key, checked to belong together.
fn certified(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<CertifiedKey, String> {
    let chain = certificates(cert)?;
    let der = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: no private key read: {e}", key.display()))?;
    CertifiedKey::from_der(chain, der, provider)
        .map_err(|e| format!("{} with {}: {e}", cert.display(), key.display()))
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
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
