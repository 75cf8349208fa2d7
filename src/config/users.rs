//! Users and groups by name or number, for `live.users` and `live.group`: a name is looked
//! up in `/etc/passwd` (or `/etc/group`), then through `getent` (the host's NSS: LDAP,
//! systemd's dynamic users); a number is taken as it is. The crate has no unsafe code, so
//! no `getpwnam`: the files are read, in bounded amounts, and parsed here.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};

/// Which database a name is looked up in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Db {
    /// Users: `/etc/passwd`, `getent passwd`.
    Passwd,
    /// Groups: `/etc/group`, `getent group`.
    Group,
}

impl Db {
    fn file(self) -> &'static str {
        match self {
            Db::Passwd => "/etc/passwd",
            Db::Group => "/etc/group",
        }
    }

    fn getent(self) -> &'static str {
        match self {
            Db::Passwd => "passwd",
            Db::Group => "group",
        }
    }
}

/// More than any account database holds; past it a file is not read further.
const MAX_DB_BYTES: u64 = 16 << 20;

/// The id `name` stands for in `db`: a number as it is, a name as the host knows it.
pub(crate) fn id_of(db: Db, name: &str) -> Option<u32> {
    if let Ok(id) = name.parse::<u32>() {
        return Some(id);
    }
    if name.is_empty() || name.starts_with('-') || name.contains([':', '\n', '\0']) {
        return None;
    }
    let in_file = read_bounded(Path::new(db.file())).and_then(|text| find(&text, |n, _| n == name));
    in_file.or_else(|| getent(db, name)).map(|(_, id)| id)
}

/// The name of user `uid` in `/etc/passwd`, if it has one there (for log lines).
pub(crate) fn user_name(uid: u32) -> Option<String> {
    read_bounded(Path::new(Db::Passwd.file())).and_then(|text| find(&text, |_, id| id == uid)).map(|(n, _)| n)
}

/// wstap's own (effective) user id: the owner of `/proc/self`.
pub(crate) fn own_uid() -> u32 {
    std::fs::metadata("/proc/self").map_or(u32::MAX, |m| m.uid())
}

/// The first entry of a passwd or group file's `text` (`name:x:id:…`) that `wanted` picks.
fn find(text: &str, wanted: impl Fn(&str, u32) -> bool) -> Option<(String, u32)> {
    text.lines().find_map(|line| {
        let mut fields = line.split(':');
        let (name, _, id) = (fields.next()?, fields.next()?, fields.next()?.parse().ok()?);
        wanted(name, id).then(|| (name.to_owned(), id))
    })
}

fn read_bounded(path: &Path) -> Option<String> {
    let mut text = String::new();
    std::fs::File::open(path).ok()?.take(MAX_DB_BYTES).read_to_string(&mut text).ok()?;
    Some(text)
}

/// `getent passwd NAME` (or `group`): the host's NSS, where the files do not have it.
fn getent(db: Db, name: &str) -> Option<(String, u32)> {
    let out = Command::new("getent")
        .args([db.getent(), name])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    find(&String::from_utf8_lossy(&out.stdout), |n, _| n == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\n# a comment\nnobody:x:65534:65534::/:/sbin/nologin\nbad:x:y\n";
        assert_eq!(find(passwd, |n, _| n == "nobody"), Some(("nobody".into(), 65534)));
        assert_eq!(find(passwd, |_, id| id == 0), Some(("root".into(), 0)));
        assert_eq!(find(passwd, |n, _| n == "bad"), None, "a line without a number names no one");
        assert_eq!(id_of(Db::Passwd, "1234"), Some(1234), "a number is taken as it is");
        assert_eq!(id_of(Db::Passwd, "root"), Some(0));
        assert_eq!(id_of(Db::Group, "root"), Some(0));
        assert_eq!(id_of(Db::Passwd, "no-such-user-anywhere"), None);
        assert_eq!(id_of(Db::Passwd, "-x"), None, "never an option to getent");
        assert_eq!(user_name(0).as_deref(), Some("root"));
        assert_eq!(own_uid(), std::fs::metadata("/proc/self").unwrap().uid());
    }
}
