//! Who writes the capture: this program on this machine, as each file's section header
//! names it. Read once per writer, from `/proc`, with the instance its config names.

use wstap_wire::pcapng::SectionInfo;

/// This program on this machine: `wstap 0.1.0` on `linux 6.1.0`, the host name and the
/// processor's architecture, and the `instance` that writes.
pub fn section_info(instance: &str) -> SectionInfo {
    let read = |p: &str| std::fs::read_to_string(p).map(|s| s.trim().to_owned()).ok();
    let os = match read("/proc/sys/kernel/osrelease") {
        Some(release) => format!("{} {release}", std::env::consts::OS),
        None => std::env::consts::OS.to_owned(),
    };
    SectionInfo {
        application: format!("wstap {}", env!("CARGO_PKG_VERSION")),
        os,
        hostname: read("/proc/sys/kernel/hostname").unwrap_or_else(|| "unknown-host".to_owned()),
        hardware: std::env::consts::ARCH.to_owned(),
        instance: instance.to_owned(),
    }
}
