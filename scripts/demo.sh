#!/usr/bin/env bash
# make demo: the echo backend on 127.0.0.1:9000, wstap on config/wstap.toml in front of
# it (127.0.0.1:8080), one short WebSocket session through it, then a clean SIGTERM.
# wstap runs in target/demo, so its log and its captures stay out of the source tree.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/release
out=target/demo
mkdir -p "$out"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

"$bin/examples/echo" 127.0.0.1:9000 2>"$out/echo.log" & pids+=($!)
(cd "$out" && exec "../../$bin/wstap" run -c ../../config/wstap.toml) 2>"$out/wstap.log" & wstap=$!; pids+=($wstap)

"$bin/examples/demo_client" ws://127.0.0.1:8080/demo

kill -TERM "$wstap"
wait "$wstap" && echo "demo: wstap drained and exited 0"
echo "demo: the daemon's log: $out/wstap.log"
grep -E 'websocket session' "$out/wstap.log" | sed 's/^/  /'
capture=$(ls -t "$out"/captures/wstap_*.pcapng | head -n 1)
echo "demo: the capture: $capture (open it in Wireshark)"
if command -v tshark >/dev/null; then
  echo "demo: tshark -r $capture -Y websocket"
  tshark -r "$capture" -Y websocket 2>/dev/null | sed 's/^/  /'
fi
echo "demo: wstap sessions $capture --messages  (see docs/replay.md for replay and mock)"
"$bin/wstap" sessions "$capture" --messages | sed 's/^/  /'
