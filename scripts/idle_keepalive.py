#!/usr/bin/env python3
"""RSS per idle keep-alive client connection, through a wstap binary (docs/testing.md).

usage: idle_keepalive.py WSTAP_BINARY [CONNECTIONS] [BODY_BYTES]
An upstream in this process reads each request (its body by Content-Length) and answers
204 (or RESP bytes of body); N clients each POST BODY bytes over one connection, read the
answer, and stay open. Prints wstap's RSS before and after, and the difference per
connection. Environment: NOCAPTURE=1 (capture off), RESP=N (a response body of N bytes),
UPCLOSE=1 (the upstream closes after answering: no pooled connection), BATCH (clients
connecting at once, default 20), SETTLE (seconds before measuring, default 1), HOLD
(seconds to stay connected after measuring). Give wstap
_RJEM_MALLOC_CONF=dirty_decay_ms:0,muzzy_decay_ms:0 to count live memory only.
"""
import asyncio, os, socket, subprocess, sys, tempfile, time

binary = sys.argv[1]
n = int(sys.argv[2]) if len(sys.argv) > 2 else 200
size = int(sys.argv[3]) if len(sys.argv) > 3 else 200_000

def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])

async def upstream_conn(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            if os.environ.get("UPCLOSE"):
                writer.write(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
                await writer.drain()
                writer.close()
                return
            resp = int(os.environ.get("RESP", "0"))
            if resp:
                writer.write(f"HTTP/1.1 200 OK\r\nContent-Length: {resp}\r\n\r\n".encode() + b"y" * resp)
            else:
                writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
            await writer.drain()
    except (Exception, asyncio.CancelledError):
        pass

async def main():
    server = await asyncio.start_server(upstream_conn, "127.0.0.1", 0)
    up = server.sockets[0].getsockname()[1]
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
    d = tempfile.mkdtemp()
    cfg = os.path.join(d, "wstap.toml")
    with open(cfg, "w") as f:
        f.write(f'listen = ["127.0.0.1:{port}"]\n[limits]\nmax_connections = 100000\nmax_connections_per_client = 100000\n'
                f'[[route]]\nupstream = "ws://127.0.0.1:{up}"\n' + ('[capture]\nmode = "off"\n' if os.environ.get("NOCAPTURE") else f'[capture]\ndir = "{d}"\n') + '[log]\nlevel = "warn"\n')
    p = subprocess.Popen([binary, "run", "--config", cfg])
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port)).close(); break
        except OSError:
            await asyncio.sleep(0.05)
    body = b"x" * size
    head = f"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: {size}\r\n\r\n".encode()
    warm = []
    async def one():
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(head + body); await w.drain()
        got = await r.readuntil(b"\r\n\r\n")
        for line in got.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                await r.readexactly(int(line.split(b":")[1]))
        return (r, w)
    for _ in range(5):
        warm.append(await one())
    await asyncio.sleep(0.5)
    before = rss_kib(p.pid)
    conns = []
    batch = int(os.environ.get("BATCH", "20"))
    for i in range(0, n, batch):
        conns += await asyncio.gather(*[one() for _ in range(min(batch, n - i))])
    await asyncio.sleep(float(os.environ.get("SETTLE", "1.0")))
    after = rss_kib(p.pid)
    print(f"{os.path.basename(binary)}: {n} idle connections after a {size}-byte POST each: "
          f"RSS {before} -> {after} KiB, {(after - before) / n:.1f} KiB per connection")
    if os.environ.get("HOLD"):
        await asyncio.sleep(float(os.environ["HOLD"]))
    p.terminate(); p.wait()
    os._exit(0)

asyncio.run(main())
