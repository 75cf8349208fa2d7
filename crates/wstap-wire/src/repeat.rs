//! How a capture marks what it repeats of a connection's past so that a new file, or a
//! live stream joined mid-session, decodes on its own (the handshake, the Upgrade
//! exchange, the permessage-deflate priming, TLS records): the writer marks every such
//! packet, and a reader takes marked packets as the session's past, never as bytes sent
//! at that time.
//!
//! - In pcapng, by the packet's comment: it begins with [`REPEATED_IN_FILE`] or
//!   [`REPEATED_IN_STREAM`].
//! - In classic pcap, which has no comments (the live stream's `format = "pcap"`), by
//!   its Ethernet addresses: [`MAC_WSTAP_REPEATED`] and [`MAC_PEER_REPEATED`] rather
//!   than [`MAC_WSTAP`] and [`MAC_PEER`].

/// How the comment of a repeated packet begins in a new file...
pub const REPEATED_IN_FILE: &str = "repeated from an earlier file";
/// ... and in a live stream joined mid-session.
pub const REPEATED_IN_STREAM: &str = "in progress when this stream began";

/// The classic pcap stream's Ethernet addresses (locally administered): wstap's end of
/// each connection, and the other end...
pub const MAC_WSTAP: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
/// See [`MAC_WSTAP`].
pub const MAC_PEER: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
/// ... and the same ends in a repeated packet.
pub const MAC_WSTAP_REPEATED: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x01];
/// See [`MAC_WSTAP_REPEATED`].
pub const MAC_PEER_REPEATED: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x02];

/// Whether a packet's comment marks it as repeated.
pub fn is_repeat(comment: &str) -> bool {
    comment.starts_with(REPEATED_IN_FILE) || comment.starts_with(REPEATED_IN_STREAM)
}

/// Whether an Ethernet frame's addresses mark it as repeated: the two repeated ends,
/// one the source and the other the destination.
pub fn is_repeat_frame(frame: &[u8]) -> bool {
    let (Some(dst), Some(src)) = (frame.get(..6), frame.get(6..12)) else { return false };
    (dst == MAC_WSTAP_REPEATED && src == MAC_PEER_REPEATED) || (dst == MAC_PEER_REPEATED && src == MAC_WSTAP_REPEATED)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_are_told_from_ordinary_packets() {
        assert!(is_repeat("repeated from an earlier file: s") && is_repeat("in progress when this stream began: x"));
        assert!(!is_repeat("wstap session 1: GET /") && !is_repeat(""));
        let frame = |dst: [u8; 6], src: [u8; 6]| [&dst[..], &src, &[0x08, 0x00]].concat();
        assert!(is_repeat_frame(&frame(MAC_PEER_REPEATED, MAC_WSTAP_REPEATED)));
        assert!(is_repeat_frame(&frame(MAC_WSTAP_REPEATED, MAC_PEER_REPEATED)));
        assert!(!is_repeat_frame(&frame(MAC_PEER, MAC_WSTAP)));
        assert!(!is_repeat_frame(&frame(MAC_PEER_REPEATED, [0x02, 0x42, 0xac, 0x11, 0, 2])), "one end is not enough");
        assert!(!is_repeat_frame(&[0; 8]));
    }
}
