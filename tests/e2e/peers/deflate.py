"""Real permessage-deflate peers (python's websockets, Debian's python3-websockets) for
the reader's tests.

    deflate.py server LOG   an echo server on 127.0.0.1 (port 0): prints the port, then
                            appends each message it receives to LOG as a JSON line
    deflate.py client URL   connects with permessage-deflate, sends MESSAGES, checks each
                            echo; prints each message it sent as a JSON line; after the
                            4th and the 8th it prints "rotate" and waits for a line on stdin
    deflate.py clients URL N   N such sessions one after the other, on URL + "?n=I&", no
                            waits
"""
import asyncio
import json
import sys

import websockets


def message(i):
    """The i-th message: compressible text that repeats earlier ones (context takeover
    matters), noise in binary, and one of 200 KB."""
    if i % 4 == 3:
        return bytes((i * 7 + k * 13) % 256 for k in range(3000 + i))
    if i == 6:
        return "".join(f'{{"row":{k},"tick":"{k % 97}"}}' for k in range(8000))
    return f'{{"op":"update","seq":{i},"body":"' + "the same words again " * (10 + i) + '"}'


MESSAGES = [message(i) for i in range(12)]


def record(m):
    kind = "text" if isinstance(m, str) else "binary"
    data = m.encode() if isinstance(m, str) else m
    return json.dumps({"kind": kind, "hex": data.hex()})


async def serve(log):
    async def echo(ws, path=None):
        async for m in ws:
            with open(log, "a") as f:
                f.write(record(m) + "\n")
            await ws.send(m)

    async with websockets.serve(echo, "127.0.0.1", 0, max_size=None, compression="deflate") as server:
        print(server.sockets[0].getsockname()[1], flush=True)
        await asyncio.Future()


async def client(url, pause=True):
    async with websockets.connect(url, max_size=None, compression="deflate") as ws:
        for i, m in enumerate(MESSAGES):
            await ws.send(m)
            assert await ws.recv() == m, f"echo of message {i}"
            print("sent " + record(m), flush=True)
            if pause and i in (3, 7):
                print("rotate", flush=True)
                sys.stdin.readline()


async def clients(url, n):
    for i in range(n):
        await client(f"{url}?n={i}&", pause=False)


if __name__ == "__main__":
    mode, arg = sys.argv[1], sys.argv[2]
    if mode == "server":
        asyncio.run(serve(arg))
    elif mode == "clients":
        asyncio.run(clients(arg, int(sys.argv[3])))
    else:
        asyncio.run(client(arg))
