//! TLS listeners: `wss://` clients through the real daemon, the certificate each SNI name
//! gets, handshake failures counted without harming anyone else, certificates reloaded
//! by SIGHUP (a bad file changes nothing), and the decrypted session in the capture.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use crate::capture::*;
use crate::support::*;
use wstap_wire::wsframe::Opcode;

/// A test CA, and certificates it signs, written as PEM files into a directory.
pub(crate) struct Pki {
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
    ca: CertificateDer<'static>,
}

/// A certificate's files and its DER.
pub(crate) struct Site {
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
    der: CertificateDer<'static>,
}

impl Pki {
    pub(crate) fn new(dir: &Path) -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().unwrap();
        let ca = params.self_signed(&key).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        Pki { dir: dir.to_owned(), issuer: Issuer::new(params, key), ca: ca.der().clone() }
    }

    /// A certificate for `name`, written as `<file>.pem` and `<file>.key`.
    pub(crate) fn site(&self, name: &str, file: &str) -> Site {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![name.to_owned()]).unwrap().signed_by(&key, &self.issuer).unwrap();
        let (cert_path, key_path) = (self.dir.join(format!("{file}.pem")), self.dir.join(format!("{file}.key")));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        Site { cert: cert_path, key: key_path, der: cert.der().clone() }
    }

    /// A client that trusts this CA.
    fn client(&self) -> tokio_rustls::TlsConnector {
        self.client_as(None)
    }

    /// A client that trusts this CA and shows `cert` if the server asks for one.
    fn client_as(&self, cert: Option<&Site>) -> tokio_rustls::TlsConnector {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.clone()).unwrap();
        let builder = rustls::ClientConfig::builder_with_provider(wstap::config::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let mut config = match cert {
            Some(site) => {
                let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&site.key).unwrap();
                builder.with_client_auth_cert(vec![site.der.clone()], key).unwrap()
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }
}

/// Connects with TLS to `addr` asking for `name`; returns the stream and the certificate
/// the server showed.
async fn connect(
    pki: &Pki,
    addr: SocketAddr,
    name: &str,
) -> (tokio_rustls::client::TlsStream<TcpStream>, CertificateDer<'static>) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = pki.client().connect(ServerName::try_from(name.to_owned()).unwrap(), tcp).await.unwrap();
    let shown = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    (tls, shown)
}

/// `/metrics` line `name{labels}`'s value, or 0.
pub(crate) async fn metric(admin: SocketAddr, line: &str) -> u64 {
    let text = raw_exchange(admin, b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    text.lines().find_map(|l| l.strip_prefix(line)?.trim().parse().ok()).unwrap_or(0)
}

fn listener_toml(a: &Site, b: &Site) -> String {
    // 127.0.0.2: a listener is told apart by its configured address, and the plain one
    // beside it (in one test) is on 127.0.0.1:0.
    format!(
        "[[listener]]\naddr = \"127.0.0.2:0\"\ntls = {{ cert = {:?}, key = {:?}, sni = [{{ name = \"b.example\", \
         cert = {:?}, key = {:?} }}] }}\n",
        a.cert, a.key, b.cert, b.key
    )
}

#[tokio::test]
async fn wss_clients_get_their_sni_certificate_and_their_sessions_decode() {
    within(async {
        let dir = capture_dir("tls");
        std::fs::create_dir_all(&*dir).unwrap();
        let pki = Pki::new(&dir);
        let (a, b) = (pki.site("localhost", "a"), pki.site("b.example", "b"));
        let captures = dir.join("captures");
        let toml = format!(
            "listen = [\"127.0.0.1:0\"]\n{}[[route]]\nupstream = \"ws://{}\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [limits]\nhandshake_timeout = \"500ms\"\n{}",
            listener_toml(&a, &b),
            echo_upstream().await,
            capture_toml(&captures, "")
        );
        let proxy = Proxy::start(&toml).await;
        let (plain, tls, admin) = (proxy.addrs[0], proxy.addrs[1], proxy.admin.unwrap());

        // Handshakes that fail: plaintext to the TLS port, a client that leaves mid-way.
        let mut s = TcpStream::connect(tls).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf).await; // the daemon closes it
        assert!(!String::from_utf8_lossy(&buf).contains("HTTP/1.1"), "no HTTP answer over a TLS port");
        drop(TcpStream::connect(tls).await.unwrap());
        // A client that starts a record and stalls is closed after handshake_timeout.
        let mut stalled = TcpStream::connect(tls).await.unwrap();
        stalled.write_all(&[0x16, 0x03, 0x01, 0x00, 0xff]).await.unwrap();
        assert_eq!(stalled.read(&mut [0u8; 16]).await.unwrap_or(0), 0, "closed, not answered");
        eventually_async("failures counted", async || {
            metric(admin, "wstap_tls_handshake_failures_total{reason=\"not_tls\"}").await == 1
                && metric(admin, "wstap_tls_handshake_failures_total{reason=\"closed\"}").await == 1
                && metric(admin, "wstap_tls_handshake_failures_total{reason=\"timeout\"}").await == 1
        })
        .await;

        // SNI picks the certificate; no SNI match gets the default one.
        assert_eq!(connect(&pki, tls, "b.example").await.1, b.der);
        let (stream, shown) = connect(&pki, tls, "localhost").await;
        assert_eq!(shown, a.der);
        assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
        let (mut ws, _) = tokio_tungstenite::client_async("wss://localhost/secure", stream).await.unwrap();
        let sent = [Message::text("over TLS"), Message::binary(noise(3000))];
        for m in &sent {
            ws.send(m.clone()).await.unwrap();
            assert_eq!(&ws.next().await.unwrap().unwrap(), m);
        }
        // The plain listener beside it still serves.
        let (mut plain_ws, _) = tokio_tungstenite::connect_async(format!("ws://{plain}/plain")).await.unwrap();
        plain_ws.send(Message::text("plain")).await.unwrap();
        assert_eq!(plain_ws.next().await.unwrap().unwrap(), Message::text("plain"));
        ws.close(None).await.unwrap();
        while let Some(Ok(_)) = ws.next().await {}
        plain_ws.close(None).await.unwrap();
        while let Some(Ok(_)) = plain_ws.next().await {}
        drop((ws, plain_ws));
        proxy.begin_shutdown().await;
        proxy.stopped().await;

        // The TLS session is captured decrypted, decodes, and its comment says how it ran.
        let files = the_files(&captures);
        let per_file = decode_each(&files, 2);
        let secure: Vec<_> = per_file.iter().flat_map(|(up, _)| up.clone()).collect();
        assert!(secure.contains(&(Opcode::Text, b"over TLS".to_vec())), "{secure:?}");
        assert!(secure.contains(&(Opcode::Binary, noise(3000))));
        let comments: Vec<String> =
            files.iter().flat_map(|f| fields(f, "frame.comment", &["frame.comment"])).flatten().collect();
        let about = comments.iter().find(|c| c.contains("/secure")).expect("the TLS session's comment");
        assert!(about.contains("TLS 1.3") && about.contains("SNI localhost") && about.contains("ALPN http/1.1"));
        assert!(about.contains(&format!("port {}", tls.port())), "{about}");
    })
    .await;
}

#[tokio::test]
async fn with_client_ca_only_clients_holding_a_certificate_from_it_get_in() {
    within(async {
        let dir = scratch_dir("tls-mtls");
        let pki = Pki::new(&dir);
        let (a, alice) = (pki.site("localhost", "a"), pki.site("alice", "alice"));
        let other = dir.join("other");
        std::fs::create_dir_all(&other).unwrap();
        let stranger = Pki::new(&other).site("mallory", "mallory");
        let toml = format!(
            "listen = []\n[[listener]]\naddr = \"127.0.0.1:0\"\ntls = {{ cert = {:?}, key = {:?}, client_ca = {:?} }}\n\
             [[route]]\nupstream = \"ws://{}\"\n[admin]\nlisten = \"127.0.0.1:0\"\n",
            a.cert,
            a.key,
            dir.join("ca.pem"),
            echo_upstream().await
        );
        let proxy = Proxy::start(&toml).await;
        let (addr, admin) = (proxy.addr(), proxy.admin.unwrap());
        let session = async |who: Option<&Site>| {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let name = ServerName::try_from("localhost").unwrap();
            let tls = pki.client_as(who).connect(name, tcp).await.ok()?;
            let (mut ws, _) = tokio_tungstenite::client_async("wss://localhost/m", tls).await.ok()?;
            ws.send(Message::text("hi")).await.ok()?;
            ws.next().await?.ok()
        };
        assert_eq!(session(Some(&alice)).await, Some(Message::text("hi")), "a certificate from the CA");
        assert_eq!(session(None).await, None, "no certificate");
        assert_eq!(session(Some(&stranger)).await, None, "a certificate from another CA");
        eventually_async("failures counted", async || {
            metric(admin, "wstap_tls_handshake_failures_total{reason=\"no_client_certificate\"}").await == 1
                && metric(admin, "wstap_tls_handshake_failures_total{reason=\"bad_client_certificate\"}").await == 1
        })
        .await;
    })
    .await;
}

/// A TLS listener with an admin endpoint, giving clients an hour to finish a handshake;
/// returns the daemon, its TLS address and its admin address.
async fn tls_proxy(pki: &Pki) -> (Proxy, SocketAddr, SocketAddr) {
    let a = pki.site("localhost", "a");
    let toml = format!(
        "listen = []\n[[listener]]\naddr = \"127.0.0.1:0\"\ntls = {{ cert = {:?}, key = {:?} }}\n\
         [[route]]\nupstream = \"ws://{}\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [limits]\nhandshake_timeout = \"1h\"\n",
        a.cert,
        a.key,
        echo_upstream().await
    );
    let proxy = Proxy::start(&toml).await;
    let (addr, admin) = (proxy.addr(), proxy.admin.unwrap());
    (proxy, addr, admin)
}

/// A client that offers only `h2` shares no protocol with wstap (`http/1.1`): its
/// handshake fails under a reason of its own, not `other`.
#[tokio::test]
async fn h2_only_clients_are_counted_by_their_own_reason() {
    within(async {
        let dir = scratch_dir("tls-alpn");
        let pki = Pki::new(&dir);
        let (_proxy, addr, admin) = tls_proxy(&pki).await;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(pki.ca.clone()).unwrap();
        let mut h2 = rustls::ClientConfig::builder_with_provider(wstap::config::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        h2.alpn_protocols = vec![b"h2".to_vec()];
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let refused = tokio_rustls::TlsConnector::from(Arc::new(h2)).connect(name, tcp).await;
        assert!(refused.is_err(), "no protocol in common");
        eventually_async("an h2-only client is counted by its reason", async || {
            metric(admin, "wstap_tls_handshake_failures_total{reason=\"no_common_alpn\"}").await == 1
        })
        .await;
        assert_eq!(metric(admin, "wstap_tls_handshake_failures_total{reason=\"other\"}").await, 0);
    })
    .await;
}

/// A client still in its handshake holds a connection place, and is counted among the
/// open connections until it leaves.
#[tokio::test]
async fn handshakes_in_progress_count_as_open_connections() {
    within(async {
        let dir = scratch_dir("tls-active");
        let (_proxy, addr, admin) = tls_proxy(&Pki::new(&dir)).await;
        // A connection that sends nothing is in its handshake (for up to an hour here).
        let silent = TcpStream::connect(addr).await.unwrap();
        eventually_async("a handshake in progress is an open connection", async || {
            metric(admin, "wstap_connections_active").await == 1
        })
        .await;
        assert_eq!(metric(admin, "wstap_connections_total").await, 1, "and an accepted one");
        drop(silent);
        eventually_async("and stops being one when it closes", async || {
            metric(admin, "wstap_connections_active").await == 0
        })
        .await;
    })
    .await;
}

/// Polls an async condition (a state reached in the daemon, read over HTTP) for up to
/// five seconds.
async fn eventually_async(what: &str, mut done: impl AsyncFnMut() -> bool) {
    for _ in 0..500 {
        if done().await {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("{what}: not within 5 s");
}

#[tokio::test]
async fn sighup_reloads_certificates_and_a_bad_file_changes_nothing() {
    within(async {
        let dir = scratch_dir("tls-reload");
        let pki = Pki::new(&dir);
        let (a, b) = (pki.site("localhost", "a"), pki.site("b.example", "b"));
        let config = dir.join("wstap.toml");
        let toml = |a: &Site| {
            format!(
                "{}[[route]]\nupstream = \"ws://127.0.0.1:9\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
                 [capture]\nmode = \"off\"\n",
                listener_toml(a, &b)
            )
        };
        std::fs::write(&config, toml(&a)).unwrap();
        let proxy = Proxy::start_file(&config).await;
        let (tls, admin) = (proxy.addr(), proxy.admin.unwrap());
        let (held, shown) = connect(&pki, tls, "localhost").await;
        assert_eq!(shown, a.der);

        // New certificate files, then SIGHUP: new handshakes get the new certificate.
        let renewed = pki.site("localhost", "a2");
        std::fs::write(&config, toml(&renewed)).unwrap();
        proxy.reload().await;
        eventually_async("reloaded", async || metric(admin, "wstap_reloads_total{result=\"ok\"}").await == 1).await;
        assert_eq!(connect(&pki, tls, "localhost").await.1, renewed.der, "the reloaded certificate");

        // A key that is not the certificate's: the reload is refused, the old one stays.
        std::fs::copy(&a.key, &renewed.key).unwrap();
        proxy.reload().await;
        eventually_async("refused", async || metric(admin, "wstap_reloads_total{result=\"failed\"}").await == 1).await;
        assert_eq!(connect(&pki, tls, "localhost").await.1, renewed.der);
        drop(held);

        // The same address made plain: the socket stays, new connections speak HTTP.
        let plain = "listen = [\"127.0.0.2:0\"]\n[[route]]\nupstream = \"ws://127.0.0.1:9\"\n\
                     [admin]\nlisten = \"127.0.0.1:0\"\n[capture]\nmode = \"off\"\n";
        std::fs::write(&config, plain).unwrap();
        proxy.reload().await;
        eventually_async("reloaded", async || metric(admin, "wstap_reloads_total{result=\"ok\"}").await == 2).await;
        let response = raw_exchange(tls, b"GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
        assert_eq!(status_of(&response), 502, "plain HTTP on the same port (no upstream there): {response}");
    })
    .await;
}

/// A WebSocket echo server over TLS with `site`'s certificate.
async fn tls_echo_upstream(site: &Site) -> SocketAddr {
    tls_echo_upstream_speaking(site, rustls::DEFAULT_VERSIONS).await
}

/// A WebSocket echo server over TLS `versions` with `site`'s certificate.
async fn tls_echo_upstream_speaking(site: &Site, versions: &[&'static rustls::SupportedProtocolVersion]) -> SocketAddr {
    use rustls::pki_types::pem::PemObject;
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&site.key).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(wstap::config::tls::provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![site.der.clone()], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    serve(move |stream| {
        let acceptor = acceptor.clone();
        async move {
            let Ok(tls) = acceptor.accept(stream).await else { return };
            let Ok(mut ws) = tokio_tungstenite::accept_async(tls).await else { return };
            while let Some(Ok(msg)) = ws.next().await {
                if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                    break;
                }
            }
        }
    })
    .await
}

#[tokio::test]
async fn wss_upstreams_are_verified_and_their_sessions_decode() {
    let (logs, _capturing) = Logs::capture();
    within(async {
        let dir = capture_dir("tls-upstream");
        std::fs::create_dir_all(&*dir).unwrap();
        let pki = Pki::new(&dir);
        let up = tls_echo_upstream(&pki.site("localhost", "upstream")).await;
        let ca = dir.join("ca.pem");
        let port = up.port();
        let route = |prefix: &str, url: &str, tls: &str| {
            format!("[[route]]\npath_prefix = \"{prefix}\"\nupstream = \"{url}\"\ntls = {{ {tls} }}\n")
        };
        let toml = [
            // A refused upgrade leaves the connection open until the keep-alive time.
            "listen = [\"127.0.0.1:0\"]\n[limits]\nhandshake_timeout = \"300ms\"\n".to_owned(),
            route("/good", &format!("wss://localhost:{port}"), &format!("ca_file = {ca:?}")),
            route(
                "/by-ip",
                &format!("wss://127.0.0.1:{port}"),
                &format!("ca_file = {ca:?}, server_name = \"localhost\""),
            ),
            route("/wrong-name", &format!("wss://127.0.0.1:{port}"), &format!("ca_file = {ca:?}")),
            route("/system-roots", &format!("wss://localhost:{port}"), ""),
            route("/insecure", &format!("wss://127.0.0.1:{port}"), "insecure_skip_verify = true"),
            capture_toml(&dir.join("captures"), ""),
        ]
        .concat();
        let proxy = Proxy::start(&toml).await;
        for path in ["/good", "/by-ip", "/insecure"] {
            let (mut ws, _) = tokio_tungstenite::connect_async(proxy.ws_url(path)).await.unwrap();
            let m = Message::text(format!("through {path}"));
            ws.send(m.clone()).await.unwrap();
            assert_eq!(ws.next().await.unwrap().unwrap(), m, "{path}");
            ws.close(None).await.unwrap();
            while let Some(Ok(_)) = ws.next().await {}
        }
        // A certificate that does not verify: 502, and the log says it was the certificate.
        for (path, why) in [("/wrong-name", "not valid for name"), ("/system-roots", "UnknownIssuer")] {
            let upgrade = format!(
                "GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            );
            let response = raw_exchange(proxy.addr(), upgrade.as_bytes()).await;
            assert_eq!(status_of(&response), 502, "{path}: {response}");
            let lines = logs.lines_with(&["TLS with the upstream failed: invalid peer certificate", why]);
            assert_eq!(
                lines.len(),
                1,
                "{path}: one log line naming the certificate's fault: {:?}",
                logs.lines_with(&["TLS"])
            );
        }
        assert_eq!(logs.lines_with(&["insecure_skip_verify", "NOT checked"]).len(), 1, "said at start");
        assert_eq!(
            logs.lines_with(&["session ended", "end=aborted"]),
            Vec::<String>::new(),
            "no close_notify is an end"
        );
        proxy.begin_shutdown().await;
        proxy.stopped().await;

        // Both legs are captured decrypted and decode.
        let files = the_files(&dir.join("captures"));
        let per_file = decode_each(&files, 2);
        let up: Vec<_> = per_file.iter().flat_map(|(up, _)| up.clone()).collect();
        assert!(up.contains(&(Opcode::Text, b"through /good".to_vec())), "{up:?}");
        let upstream_leg =
            files.iter().flat_map(|f| fields(f, "websocket && frame.interface_id == 1", &["frame.number"]));
        assert!(upstream_leg.count() >= 6, "the upstream leg's frames decode too");
        let comments: Vec<String> =
            files.iter().flat_map(|f| fields(f, "frame.comment", &["frame.comment"])).flatten().collect();
        let about = comments.iter().find(|c| c.contains("/by-ip")).expect("the session's comment");
        // (The test's upstream offers no ALPN.)
        let tail = format!("SNI localhost, no ALPN, port {port} (captured decrypted)");
        assert!(about.contains("upstream leg over TLS 1.3, TLS13_") && about.contains(&tail), "{about}");
        // The test's upstream drops its TLS without close_notify: a FIN, with a comment.
        assert!(comments.iter().any(|c| c.contains("closed without close_notify")), "{comments:?}");
    })
    .await;
}

#[tokio::test]
async fn replay_reaches_a_wss_server_and_mock_serves_one() {
    use crate::replay::{record, start_mock, wstap};
    within(async {
        let (dir, file) = record("tls-replay").await;
        let pki = Pki::new(&dir);
        let site = pki.site("localhost", "mock");
        let (cert, key) = (site.cert.to_str().unwrap(), site.key.to_str().unwrap());
        let ca = dir.join("ca.pem");
        let f = file.to_str().unwrap();
        let args = ["--session", "1", "--speed", "max", "--wait", "2s", "--tls-cert", cert, "--tls-key", key];
        // The mock serves wss://; replay trusts it through --ca-file: every message matches.
        let wss = |url: String| {
            let port = url.trim_start_matches("wss://127.0.0.1:").split('/').next().unwrap().to_owned();
            format!("wss://localhost:{port}")
        };
        let (mut child, url) = start_mock(&file, &args).await;
        let target = wss(url);
        let (code, out, err) =
            wstap(&["replay", f, "--session", "1", "--target", &target, "--ca-file", ca.to_str().unwrap()]).await;
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.contains("MATCH:"), "{out}");
        assert_eq!(child.wait().await.unwrap().code(), Some(0), "the mock saw the recorded client");

        // The system's roots do not know the test CA: an error that says it was the certificate.
        let (mut child, url) = start_mock(&file, &args).await;
        let target = wss(url);
        let (code, _, err) = wstap(&["replay", f, "--session", "1", "--target", &target]).await;
        assert_eq!(code, 2, "{err}");
        assert!(err.contains("invalid peer certificate") && err.contains("UnknownIssuer"), "{err}");
        let _ = child.kill().await;

        // --insecure connects anyway, and says so.
        let (mut child, url) = start_mock(&file, &args).await;
        let target = wss(url);
        let (code, out, err) = wstap(&["replay", f, "--session", "1", "--target", &target, "--insecure"]).await;
        assert_eq!(code, 0, "{out}{err}");
        assert!(err.contains("not verified"), "{err}");
        assert_eq!(child.wait().await.unwrap().code(), Some(0));

        // The TLS options belong to wss:// targets; a bad certificate file is named.
        let (code, _, err) =
            wstap(&["replay", f, "--session", "1", "--target", "ws://127.0.0.1:1", "--insecure"]).await;
        assert_eq!(code, 2, "{err}");
        assert!(err.contains("wss://"), "{err}");
        let (code, _, err) = wstap(&["mock", f, "--listen", "127.0.0.1:0", "--tls-cert", key, "--tls-key", key]).await;
        assert_eq!(code, 2, "{err}");
        assert!(err.contains("mock.key"), "{err}");
    })
    .await;
}

/// A client for `pki`'s sites that speaks only TLS `version`.
fn client_speaking(pki: &Pki, version: &'static rustls::SupportedProtocolVersion) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca.clone()).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(wstap::config::tls::provider())
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// Each WebSocket text message tshark decrypts and decodes in `file` (no options given):
/// (interface, text).
fn decrypted_texts(file: &Path) -> Vec<(String, String)> {
    fields(file, "websocket.opcode == 1", &["frame.interface_id", "websocket.payload.text"])
        .into_iter()
        .map(|row| (row[0].clone(), row.get(1).cloned().unwrap_or_default()))
        .collect()
}

#[tokio::test]
async fn encrypted_tls13_captures_decrypt_from_the_file_alone_in_every_rotated_file() {
    encrypted_captures_decrypt(&rustls::version::TLS13, "1.3").await;
}

#[tokio::test]
async fn encrypted_tls12_captures_decrypt_from_the_file_alone_in_every_rotated_file() {
    encrypted_captures_decrypt(&rustls::version::TLS12, "1.2").await;
}

/// Both legs TLS `version`, captured encrypted, rotated twice mid-session: tshark, given
/// no key, decrypts every message in every file.
async fn encrypted_captures_decrypt(version: &'static rustls::SupportedProtocolVersion, name: &str) {
    within(async {
        {
            let dir = capture_dir(&format!("tls-encrypted-{name}"));
            std::fs::create_dir_all(&*dir).unwrap();
            let pki = Pki::new(&dir);
            let site = pki.site("localhost", "site");
            let up = tls_echo_upstream_speaking(&pki.site("localhost", "upstream"), &[version]).await;
            let (captures, keylog) = (dir.join("captures"), dir.join("keys.log"));
            let toml = format!(
                "[[listener]]\naddr = \"127.0.0.1:0\"\ntls = {{ cert = {:?}, key = {:?} }}\n\
                 [[route]]\nupstream = \"wss://localhost:{}\"\ntls = {{ ca_file = {:?} }}\n{}",
                site.cert,
                site.key,
                up.port(),
                dir.join("ca.pem"),
                capture_toml(&captures, &format!("tls = \"encrypted\"\ntls_keylog = {keylog:?}\n"))
            );
            let proxy = Proxy::start(&toml).await;
            let tcp = TcpStream::connect(proxy.addr()).await.unwrap();
            let tls = client_speaking(&pki, version).connect(ServerName::try_from("localhost").unwrap(), tcp).await;
            let (mut ws, _) = tokio_tungstenite::client_async("wss://localhost/sealed", tls.unwrap()).await.unwrap();
            let mut sent = Vec::new();
            for i in 0..12 {
                let m = format!("secret message {i} over TLS {name}");
                ws.send(Message::text(m.clone())).await.unwrap();
                assert_eq!(ws.next().await.unwrap().unwrap(), Message::text(m.clone()));
                sent.push(m);
                if i == 3 || i == 7 {
                    // The file being written exists (the writer is this far), then rotate.
                    let count = || std::fs::read_dir(&captures).map_or(0, |d| d.count());
                    eventually("written", || count() == 1 + i / 4).await;
                    proxy.rotate().await; // SIGUSR1, mid-session
                    eventually("rotated", || count() > 1 + i / 4).await;
                }
            }
            ws.close(None).await.unwrap();
            while let Some(Ok(_)) = ws.next().await {}
            drop(ws);
            proxy.begin_shutdown().await;
            proxy.stopped().await;

            let files = the_files(&captures);
            assert_eq!(files.len(), 3, "two rotations: {files:?}");
            let (mut seen, mut last_prefix) = (Vec::new(), 0);
            for (n, file) in files.iter().enumerate() {
                let expert = tshark(file, &["-q", "-z", "expert"]);
                assert!(!expert.contains("Warnings (") && !expert.contains("Errors ("), "{name}: {expert}");
                // No key log file given to tshark: the Decryption Secrets Block does it.
                let texts = decrypted_texts(file);
                // Each file holds every message since the session's start (the records
                // before the rotation are repeated, or nothing would decrypt), each on the
                // client leg (interface 0) and the upstream leg (1), each way: a prefix of
                // the conversation, longer in each file (where a rotation falls among the
                // queued events is the writer's business), all of it in the last.
                let mut prefix = 0;
                for (i, m) in sent.iter().enumerate() {
                    let mut legs: Vec<&str> = texts.iter().filter(|(_, t)| t == m).map(|(l, _)| &l[..]).collect();
                    legs.sort();
                    if legs.is_empty() {
                        continue;
                    }
                    assert_eq!(legs, ["0", "0", "1", "1"], "TLS {name}, file {n}, {m:?}: {texts:?}");
                    assert_eq!(prefix, i, "TLS {name}, file {n}: a prefix: {texts:?}");
                    prefix = i + 1;
                }
                assert!(prefix > last_prefix, "TLS {name}, file {n} decrypts more than the file before");
                last_prefix = prefix;
                seen.extend(texts);
                // The records are the real ones: no plaintext in the file.
                assert!(!std::fs::read(file).unwrap().windows(14).any(|w| w == b"secret message"));
            }
            assert_eq!(last_prefix, sent.len(), "the last file has the whole conversation");
            assert!(!seen.is_empty());
            // Merged with `wstap merge`, the files decode as one: every message once on
            // each leg each way, the repeated records left out, no expert warning.
            let merged = crate::fixtures::merged(&files, &dir.join("merged.pcapng")).await;
            let expert = tshark(&merged, &["-q", "-z", "expert"]);
            assert!(!expert.contains("Warnings (") && !expert.contains("Errors ("), "{name}, merged: {expert}");
            let texts = decrypted_texts(&merged);
            for m in &sent {
                assert_eq!(texts.iter().filter(|(_, t)| t == m).count(), 4, "TLS {name}, merged, {m:?}: {texts:?}");
            }
            assert_eq!(texts.len(), 4 * sent.len(), "TLS {name}, merged: nothing twice");
            let comments: Vec<String> = fields(&files[0], "frame.comment", &["frame.comment"]).concat();
            assert!(comments.iter().any(|c| c.contains("captured as TLS records")), "{comments:?}");
            // The key log file has the same keys, and only the owner may read it.
            use std::os::unix::fs::PermissionsExt;
            let meta = std::fs::metadata(&keylog).unwrap();
            assert_eq!(meta.permissions().mode() & 0o777, 0o600);
            let label = if name == "1.3" { "CLIENT_TRAFFIC_SECRET_0 " } else { "CLIENT_RANDOM " };
            let count = || std::fs::read_to_string(&keylog).unwrap().lines().filter(|l| l.starts_with(label)).count();
            eventually("the key log file has both legs' keys (its own thread writes it)", || count() == 2).await;
            // wstap's own reader does not decrypt, and says so rather than listing nothing:
            // information, not a problem (nothing in the file is damaged).
            let (code, out, err) = crate::replay::wstap(&["sessions", files[0].to_str().unwrap()]).await;
            assert_eq!(code, 0, "{out}{err}");
            assert!(err.contains("note: 2 TLS connection(s)") && err.contains("tshark"), "{err}");
            assert!(!err.contains("capture.tls"), "it speaks of the capture, not of a config: {err}");
        }
    })
    .await;
}

/// A TLS listener on 443 itself (the port Wireshark reads as TLS), captured decrypted with
/// the default config: every message decodes as WebSocket with no Warning, the server
/// port is written as 80, and the comment names 443.
#[tokio::test]
#[ignore = "needs root: binds port 443"]
async fn a_tls_listener_on_443_decodes_in_plaintext_captures_with_no_options() {
    within(async {
        // An address of its own, so nothing else on this machine's 443 is in the way.
        let addr = "127.0.44.3:443";
        if let Err(e) = std::net::TcpListener::bind(addr) {
            panic!("{addr}: {e} (binding 443 needs root or net.ipv4.ip_unprivileged_port_start <= 443)");
        }
        let dir = capture_dir("tls-443");
        std::fs::create_dir_all(&*dir).unwrap();
        let pki = Pki::new(&dir);
        let site = pki.site("localhost", "site");
        let captures = dir.join("captures");
        let toml = format!(
            "[[listener]]\naddr = \"{addr}\"\ntls = {{ cert = {:?}, key = {:?} }}\n[[route]]\nupstream = \"ws://{}\"\n\
             [capture]\ndir = {:?}\n[capture.rotate]\ninterval = \"0s\"\n",
            site.cert,
            site.key,
            echo_upstream().await,
            captures.display().to_string()
        );
        let proxy = Proxy::start(&toml).await;
        let (stream, _) = connect(&pki, proxy.addr(), "localhost").await;
        let (mut ws, _) = tokio_tungstenite::client_async("wss://localhost/on-443", stream).await.unwrap();
        for i in 0..3 {
            let m = Message::text(format!("message {i} on 443"));
            ws.send(m.clone()).await.unwrap();
            assert_eq!(ws.next().await.unwrap().unwrap(), m);
        }
        ws.close(None).await.unwrap();
        while let Some(Ok(_)) = ws.next().await {}
        drop(ws);
        proxy.begin_shutdown().await;
        proxy.stopped().await;
        let file = the_files(&captures).pop().unwrap();
        assert_clean(&file, 1);
        let texts = fields(&file, "websocket.opcode == 1", &["websocket.payload.text"]).concat();
        let want: Vec<String> = (0..6).map(|i| format!("message {} on 443", i / 2)).collect();
        assert_eq!(texts, want, "each message, each way");
        let comments = fields(&file, "frame.comment", &["frame.comment"]).concat();
        assert!(comments.iter().any(|c| c.contains("server port 443 is written as 80")), "{comments:?}");
    })
    .await;
}

/// Encrypted capture of a connection recorded whole (`/a`, `all`) that also carries a
/// plain request of a route recording sessions (`/ws`): TLS records cannot be cut between
/// requests, so the leg goes on whole and decrypts from its first record to its last.
#[tokio::test]
async fn an_encrypted_connection_recorded_whole_is_never_cut_between_requests() {
    within(async {
        let dir = capture_dir("tls-encrypted-whole");
        std::fs::create_dir_all(&*dir).unwrap();
        let pki = Pki::new(&dir);
        let site = pki.site("localhost", "site");
        let upstream = fixed_upstream("HTTP/1.1 204 No Content\r\n\r\n").await;
        let captures = dir.join("captures");
        let toml = format!(
            "[[listener]]\naddr = \"127.0.0.1:0\"\ntls = {{ cert = {:?}, key = {:?} }}\n\
             [[route]]\npath_prefix = \"/a\"\nupstream = \"ws://{upstream}\"\ncapture = \"all\"\nlegs = [\"client\"]\n\
             [[route]]\npath_prefix = \"/ws\"\nupstream = \"ws://{upstream}\"\nlegs = [\"client\"]\n{}",
            site.cert,
            site.key,
            capture_toml(&captures, "tls = \"encrypted\"\n")
        );
        let proxy = Proxy::start(&toml).await;
        let tcp = TcpStream::connect(proxy.addr()).await.unwrap();
        let tls = client_speaking(&pki, &rustls::version::TLS13);
        let mut tls = tls.connect(ServerName::try_from("localhost").unwrap(), tcp).await.unwrap();
        for path in ["/a/1", "/ws/info", "/a/2"] {
            tls.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes()).await.unwrap();
            let mut r = tokio::io::BufReader::new(&mut tls);
            assert_eq!(status_of(&read_head(&mut r).await), 204, "{path}");
        }
        drop(tls);
        proxy.begin_shutdown().await;
        proxy.stopped().await;
        let file = &the_files(&captures)[0];
        let expert = tshark(file, &["-q", "-z", "expert"]);
        assert!(!expert.contains("Warnings (") && !expert.contains("Errors ("), "{expert}");
        let uris = fields(file, "http.request", &["http.request.uri"]);
        assert_eq!(uris, [["/a/1"], ["/ws/info"], ["/a/2"]], "decrypted from the file alone, whole");
    })
    .await;
}

/// A drain ends a kept-alive TLS connection as TLS ends one: a `close_notify`, then the
/// FIN, whether it was parked or in a turn when the drain began.
#[tokio::test]
async fn a_drain_closes_a_kept_alive_tls_connection_with_close_notify() {
    within(async {
        let dir = scratch_dir("tls-drain-close-notify");
        let pki = Pki::new(&dir);
        let a = pki.site("localhost", "a");
        let upstream = fixed_upstream("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
        let toml = format!(
            "listen = []\n[[listener]]\naddr = \"127.0.0.1:0\"\ntls = {{ cert = {:?}, key = {:?} }}\n\
             [[route]]\nupstream = \"ws://{upstream}\"\n[admin]\nlisten = \"127.0.0.1:0\"\n",
            a.cert, a.key,
        );
        let proxy = Proxy::start(&toml).await;
        let (mut tls, _) = connect(&pki, proxy.addr(), "localhost").await;
        tls.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut got = Vec::new();
        while !got.ends_with(b"\r\n\r\nok") {
            let mut buf = [0u8; 256];
            let n = tls.read(&mut buf).await.unwrap();
            assert!(n > 0, "the answer: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
        proxy.begin_shutdown().await;
        let mut rest = Vec::new();
        let end = tls.read_to_end(&mut rest).await;
        assert!(end.is_ok(), "a clean TLS close (close_notify), got {end:?}");
    })
    .await;
}
