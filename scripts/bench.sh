#!/usr/bin/env bash
# make bench: the capture path alone, then wstap against direct connections and nginx.
# Installs nginx from Debian's packages if it is missing (the bench runs its own instance
# with its own config on loopback; the system's nginx service is not used).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh bench
# 5,000 idle sessions need 10,000 descriptors in a proxy.
ulimit -n "$(ulimit -Hn)"
echo "== $(date -u +%F) on $(nproc) CPUs: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), nginx $(/usr/sbin/nginx -v 2>&1 | cut -d/ -f2)"
cargo bench --bench capture
cargo bench --bench proxy
cargo bench --bench reader
