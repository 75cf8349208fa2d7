//! What happens to a capture file once it is finished: `[capture.upload]` (stored in
//! S3-compatible object storage), `capture.on_finish` (a command run for it), and
//! `capture.instance` (the name this instance gives its files and objects).

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::units::{ByteSize, HumanDuration};

/// `[capture.upload]` as the file has it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileUpload {
    url: String,
    endpoint: Option<String>,
    region: Option<String>,
    access_key_id_file: Option<PathBuf>,
    secret_access_key_file: Option<PathBuf>,
    session_token_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    #[serde(default)]
    delete_after: bool,
    #[serde(default = "default_concurrency")]
    concurrency: usize,
    #[serde(default = "default_max_backlog")]
    max_backlog: ByteSize,
    #[serde(default)]
    verify: Verify,
    #[serde(default = "default_shutdown_wait")]
    shutdown_wait: HumanDuration,
}

fn default_concurrency() -> usize {
    2
}

fn default_max_backlog() -> ByteSize {
    ByteSize(10 << 30)
}

/// With the default `shutdown.grace` (30 s), within the unit's `TimeoutStopSec` (45 s).
fn default_shutdown_wait() -> HumanDuration {
    HumanDuration(Duration::from_secs(10))
}

/// How a stored object is checked before its file counts as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verify {
    /// Its size, and its ETag against the MD5 of what was sent (of each part, for a
    /// multipart upload), as S3, MinIO, Ceph, R2 and SeaweedFS give it.
    #[default]
    Etag,
    /// Its size only: for stores whose ETag is no MD5 (S3 with SSE-KMS encryption).
    Size,
}

/// A secret read from a file: never shown, never logged.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret itself, for the store's client.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Credentials read from the files the config names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The access key id.
    pub key_id: Secret,
    /// The secret access key.
    pub secret: Secret,
    /// A session token, for temporary credentials.
    pub token: Option<Secret>,
    /// The files they were read from, as the config names them.
    pub files: Vec<PathBuf>,
}

/// `[capture.upload]`: where finished files are stored, and how.
#[derive(Debug, Clone, PartialEq)]
pub struct UploadSettings {
    /// The `url` as written: `s3://BUCKET/PREFIX/`.
    pub url: String,
    /// The bucket.
    pub bucket: String,
    /// Where keys start (no leading or trailing `/`; may be empty).
    pub prefix: String,
    /// An S3-compatible store's address (`http://` or `https://`); `None`: AWS.
    pub endpoint: Option<String>,
    /// The region; `None`: `AWS_REGION`, `AWS_DEFAULT_REGION`, else `us-east-1`.
    pub region: Option<String>,
    /// From the files the config names; `None`: the environment (`AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, web identity) or the instance's role.
    pub credentials: Option<Credentials>,
    /// Roots to check an `https://` endpoint against; `None`: the system's.
    pub ca_file: Option<PathBuf>,
    /// The local file is deleted once its object is stored and verified.
    pub delete_after: bool,
    /// Files uploaded at once.
    pub concurrency: usize,
    /// Bytes of finished files waiting to be stored; past it the oldest is dropped.
    pub max_backlog: u64,
    /// How an object is checked.
    pub verify: Verify,
    /// How long a shutdown waits for the uploads still to do.
    pub shutdown_wait: Duration,
}

/// `capture.on_finish`: a command run for every finished file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnFinish {
    /// The program and its arguments, `{path}`, `{name}` and `{instance}` not yet
    /// replaced.
    pub command: Vec<String>,
    /// How long one run may take before it is killed.
    pub timeout: Duration,
    /// Runs at once.
    pub concurrency: usize,
}

/// The most uploads or commands at once a config may ask for.
const MAX_CONCURRENCY: usize = 64;

/// Turns `[capture.upload]` into settings; the error names the key (under
/// `capture.upload.`) and what was wrong.
fn upload(f: FileUpload) -> Result<UploadSettings, (String, String)> {
    let err = |key: &str, msg: String| (key.to_owned(), msg);
    let (bucket, prefix) = parse_url(&f.url).map_err(|m| err("url", m))?;
    if let Some(e) = &f.endpoint {
        let rest = e.strip_prefix("http://").or_else(|| e.strip_prefix("https://"));
        if rest.is_none_or(|r| r.is_empty() || r.contains(['?', '#', ' '])) {
            return Err(err("endpoint", format!("{e:?} is not an http:// or https:// address")));
        }
    }
    if f.region.as_ref().is_some_and(|r| r.is_empty() || !r.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')) {
        return Err(err("region", format!("{:?} is not a region name such as \"eu-west-1\"", f.region.unwrap())));
    }
    let credentials = credentials(f.access_key_id_file, f.secret_access_key_file, f.session_token_file)?;
    if let Some(ca) = &f.ca_file {
        super::tls::roots(ca).map_err(|e| err("ca_file", e))?;
    }
    if !(1..=MAX_CONCURRENCY).contains(&f.concurrency) {
        return Err(err("concurrency", format!("must be between 1 and {MAX_CONCURRENCY}, not {}", f.concurrency)));
    }
    if f.max_backlog.0 < 1 << 20 {
        return Err(err("max_backlog", "must be at least 1MiB".to_owned()));
    }
    Ok(UploadSettings {
        url: f.url,
        bucket,
        prefix,
        endpoint: f.endpoint.map(|e| e.trim_end_matches('/').to_owned()),
        region: f.region,
        credentials,
        ca_file: f.ca_file,
        delete_after: f.delete_after,
        concurrency: f.concurrency,
        max_backlog: f.max_backlog.0,
        verify: f.verify,
        shutdown_wait: f.shutdown_wait.0,
    })
}

/// `s3://BUCKET/PREFIX/` → the bucket and the prefix (without its slashes).
pub fn parse_url(url: &str) -> Result<(String, String), String> {
    let Some(rest) = url.strip_prefix("s3://") else {
        return Err(format!("{url:?} is not an s3://BUCKET/PREFIX/ address"));
    };
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let valid = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.';
    if !(3..=63).contains(&bucket.len()) || !bucket.chars().all(valid) {
        return Err(format!("{bucket:?} is not a bucket name (3 to 63 of a-z, 0-9, '-' and '.')"));
    }
    let prefix = prefix.trim_matches('/');
    let odd = |p: &str| p == "." || p == ".." || p.chars().any(char::is_control);
    if prefix.split('/').any(odd) || prefix.contains("//") || prefix.contains('\\') {
        return Err(format!("{prefix:?} is not a key prefix (no empty, '.' or '..' parts)"));
    }
    Ok((bucket.to_owned(), prefix.to_owned()))
}

/// Reads the credential files: both of the key's halves or neither.
fn credentials(
    key_id: Option<PathBuf>,
    secret: Option<PathBuf>,
    token: Option<PathBuf>,
) -> Result<Option<Credentials>, (String, String)> {
    let read = |key: &str, path: &Path| {
        let text = std::fs::read_to_string(path).map_err(|e| (key.to_owned(), format!("{}: {e}", path.display())))?;
        match text.trim() {
            "" => Err((key.to_owned(), format!("{} is empty", path.display()))),
            t => Ok(Secret(t.to_owned())),
        }
    };
    match (key_id, secret) {
        (None, None) if token.is_none() => Ok(None),
        (Some(k), Some(s)) => Ok(Some(Credentials {
            key_id: read("access_key_id_file", &k)?,
            secret: read("secret_access_key_file", &s)?,
            token: token.as_deref().map(|t| read("session_token_file", t)).transpose()?,
            files: [Some(k), Some(s), token].into_iter().flatten().collect(),
        })),
        (None, _) => Err(("access_key_id_file".to_owned(), "is needed with the other credential files".to_owned())),
        (Some(_), None) => Err(("secret_access_key_file".to_owned(), "is needed with access_key_id_file".to_owned())),
    }
}

/// `capture.instance`, and `capture.prefix` with `{instance}` replaced; the error names
/// the key.
pub(super) fn naming(instance: Option<String>, prefix: &str) -> Result<(String, String), (String, String)> {
    let instance = self::instance(instance)?;
    let bad_prefix = |msg: String| Err(("capture.prefix".to_owned(), msg));
    if let Some(bad) = unknown_placeholder(prefix, &["instance"]) {
        return bad_prefix(format!("{{{bad}}} is not {{instance}}"));
    }
    let expanded = prefix.replace("{instance}", &instance);
    if expanded.is_empty() || expanded.contains(['/', '\\']) || expanded.chars().any(char::is_control) {
        return bad_prefix(format!("{prefix:?} must be a non-empty file name part"));
    }
    Ok((instance, expanded))
}

/// `capture.on_finish` (with its companions) and `[capture.upload]`; the error names
/// the key.
pub(super) fn shipping(
    command: Vec<String>,
    timeout: HumanDuration,
    concurrency: usize,
    upload: Option<FileUpload>,
) -> Result<(Option<OnFinish>, Option<UploadSettings>), (String, String)> {
    let on_finish = on_finish(command, timeout, concurrency)?;
    let upload = upload.map(self::upload).transpose().map_err(|(key, msg)| (format!("capture.upload.{key}"), msg))?;
    Ok((on_finish, upload))
}

/// `capture.on_finish` and its two companions; the error names the key.
fn on_finish(
    command: Vec<String>,
    timeout: HumanDuration,
    concurrency: usize,
) -> Result<Option<OnFinish>, (String, String)> {
    if command.is_empty() {
        return Ok(None);
    }
    if command[0].is_empty() {
        return Err(("capture.on_finish".to_owned(), "the program (its first item) is empty".to_owned()));
    }
    if let Some(bad) = command.iter().find_map(|a| unknown_placeholder(a, &["path", "name", "instance"])) {
        return Err(("capture.on_finish".to_owned(), format!("{{{bad}}} is not {{path}}, {{name}} or {{instance}}")));
    }
    if timeout.0.is_zero() {
        return Err(("capture.on_finish_timeout".to_owned(), "must be more than 0s".to_owned()));
    }
    if !(1..=MAX_CONCURRENCY).contains(&concurrency) {
        let msg = format!("must be between 1 and {MAX_CONCURRENCY}, not {concurrency}");
        return Err(("capture.on_finish_concurrency".to_owned(), msg));
    }
    Ok(Some(OnFinish { command, timeout: timeout.0, concurrency }))
}

/// The first `{word}` in `text` that is not one of `known`.
fn unknown_placeholder(text: &str, known: &[&str]) -> Option<String> {
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        let Some(close) = after.find('}') else { return Some(after.to_owned()) };
        if !known.contains(&&after[..close]) {
            return Some(after[..close].to_owned());
        }
        rest = &after[close + 1..];
    }
    None
}

/// This machine's host name, made fit for a file name and a key: the default
/// `capture.instance`.
pub fn host_name() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let name: String = name.trim().chars().filter(|c| is_instance_char(*c)).take(63).collect();
    if name.is_empty() {
        "wstap".to_owned()
    } else {
        name
    }
}

fn is_instance_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_'
}

/// `capture.instance`: 1 to 63 of letters, digits, `-`, `.` and `_`.
fn instance(name: Option<String>) -> Result<String, (String, String)> {
    let Some(name) = name else { return Ok(host_name()) };
    let valid = (1..=63).contains(&name.len()) && name.chars().all(is_instance_char) && name != "." && name != "..";
    match valid {
        true => Ok(name),
        false => Err((
            "capture.instance".to_owned(),
            format!("{name:?} must be 1 to 63 of letters, digits, '-', '.' and '_'"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_give_a_bucket_and_a_prefix_without_slashes() {
        assert_eq!(parse_url("s3://caps/prod/ws/").unwrap(), ("caps".into(), "prod/ws".into()));
        assert_eq!(parse_url("s3://caps").unwrap(), ("caps".into(), String::new()));
        assert_eq!(parse_url("s3://caps/").unwrap(), ("caps".into(), String::new()));
        for bad in
            ["http://caps/", "s3://Caps/", "s3://ab/", "s3://caps/a//b", "s3://caps/../x", "s3:///x", "s3://caps/a\nb/"]
        {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn placeholders_are_known_or_named() {
        let known = ["path", "name", "instance"];
        assert_eq!(unknown_placeholder("--file={path}", &known), None);
        assert_eq!(unknown_placeholder("{name}.{instance}", &known), None);
        assert_eq!(unknown_placeholder("{paht}", &known).as_deref(), Some("paht"));
        assert_eq!(unknown_placeholder("{path", &known).as_deref(), Some("path"));
    }

    #[test]
    fn a_secret_never_shows() {
        let c = Credentials {
            key_id: Secret("AKIAEXAMPLE".into()),
            secret: Secret("wJalrXUtnFEMI".into()),
            token: None,
            files: vec![],
        };
        let shown = format!("{c:?}");
        assert!(!shown.contains("AKIAEXAMPLE") && !shown.contains("wJalrXUtnFEMI"), "{shown}");
    }

    #[test]
    fn the_default_instance_is_a_file_name_part() {
        let name = host_name();
        assert!(!name.is_empty() && name.chars().all(is_instance_char), "{name}");
        assert!(instance(Some("eu-1a".into())).is_ok());
        assert!(instance(Some("a/b".into())).unwrap_err().0 == "capture.instance");
    }
}

#[cfg(test)]
mod config_tests {
    use crate::config::Settings;

    fn load(extra: &str) -> Result<Settings, String> {
        let text = format!("listen = [\"127.0.0.1:0\"]\n[[route]]\nupstream = \"ws://127.0.0.1:1\"\n{extra}");
        Settings::parse(&text, "up.toml".as_ref()).map_err(|e| e.to_string())
    }

    #[test]
    fn bad_keys_are_named_with_the_file() {
        for (extra, key) in [
            ("[capture]\nprefix = \"ws-{host}\"", "capture.prefix"),
            ("[capture]\ninstance = \"eu 1\"", "capture.instance"),
            ("[capture]\nprefix = \"ws\\u0007\"", "capture.prefix"),
            ("[capture]\non_finish = [\"gzip\", \"{file}\"]", "capture.on_finish"),
            ("[capture]\non_finish = [\"gzip\"]\non_finish_timeout = \"0s\"", "capture.on_finish_timeout"),
            ("[capture.upload]\nurl = \"https://bucket/\"", "capture.upload.url"),
            ("[capture.upload]\nurl = \"s3://caps/\"\nendpoint = \"minio:9000\"", "capture.upload.endpoint"),
            ("[capture.upload]\nurl = \"s3://caps/\"\nconcurrency = 0", "capture.upload.concurrency"),
            ("[capture.upload]\nurl = \"s3://caps/\"\nmax_backlog = \"1KiB\"", "capture.upload.max_backlog"),
            ("[capture.upload]\nurl = \"s3://caps/\"\naccess_key_id_file = \"/nonexistent/k\"", "capture.upload.secret_access_key_file"),
            ("[capture.upload]\nurl = \"s3://caps/\"\nsecret_access_key_file = \"/nonexistent/s\"", "capture.upload.access_key_id_file"),
            (
                "[capture.upload]\nurl = \"s3://caps/\"\naccess_key_id_file = \"/nonexistent/k\"\nsecret_access_key_file = \"/nonexistent/s\"",
                "capture.upload.access_key_id_file",
            ),
        ] {
            let e = load(extra).expect_err(extra);
            assert!(e.contains(&format!("key `{key}`")) && e.contains("up.toml"), "{extra}: {e}");
        }
    }

    #[test]
    fn the_instance_goes_into_the_prefix_and_check_shows_no_secret() {
        let dir = std::env::temp_dir().join(format!("wstap-upload-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("k"), "AKIAEXAMPLEKEY\n").unwrap();
        std::fs::write(dir.join("s"), "very-secret-value").unwrap();
        let s = load(&format!(
            "[capture]\ninstance = \"eu-1a\"\nprefix = \"ws-{{instance}}\"\n[capture.upload]\nurl = \"s3://caps/prod/\"\naccess_key_id_file = \"{}\"\nsecret_access_key_file = \"{}\"\n",
            dir.join("k").display(),
            dir.join("s").display()
        ))
        .unwrap();
        assert_eq!(s.capture.prefix, "ws-eu-1a");
        let u = s.capture.upload.as_ref().unwrap();
        assert_eq!((u.bucket.as_str(), u.prefix.as_str()), ("caps", "prod"));
        assert_eq!(u.credentials.as_ref().unwrap().key_id.expose(), "AKIAEXAMPLEKEY");
        let shown = s.to_string();
        assert!(!shown.contains("AKIAEXAMPLEKEY") && !shown.contains("very-secret-value"), "{shown}");
        assert!(shown.contains("secret_access_key_file"), "{shown}");
        // What `check` shows reads back as the same settings.
        assert_eq!(Settings::parse(&shown, "up.toml".as_ref()).unwrap().capture, s.capture);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
