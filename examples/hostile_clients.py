#!/usr/bin/env python3
"""Two hostile clients against a running tinysse, and what they cost it.

    target/release/tinysse --port 8140 --tick-interval 0 &
    python3 examples/hostile_clients.py reset-storm --port 8140 --pid $!
    python3 examples/hostile_clients.py endless-head --port 8140 --pid $!

reset-storm: THREADS threads connect, send a request and reset (SO_LINGER
0) for SECONDS; then prints the server's open descriptors each second
for 8 s (tiny_http panics on such connections; see README).
endless-head: one client writes a request line without end in 1 MiB
chunks (at most 1 GiB) until the server closes; prints how much it sent,
how long that took, and the server's RSS just after.
Loopback only, standard library only, every loop bounded.
"""

import argparse
import os
import socket
import struct
import threading
import time


def descriptors(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        return next(int(l.split()[1]) for l in status if l.startswith("VmRSS:"))


def reset_storm(port, pid, threads, seconds):
    before = descriptors(pid)
    end = time.monotonic() + seconds
    request = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"

    def hammer():
        while time.monotonic() < end:
            try:
                s = socket.socket()
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.connect(("127.0.0.1", port))
                s.send(request)
                s.close()
            except OSError:
                pass

    workers = [threading.Thread(target=hammer) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    after = []
    for _ in range(9):
        after.append(descriptors(pid))
        time.sleep(1)
    print(f"descriptors before {before}; at the storm's end and each second after: {after}")


def endless_head(port, pid):
    client = socket.create_connection(("127.0.0.1", port))
    client.settimeout(2)
    chunk = b"A" * (1 << 20)
    sent, start = 0, time.monotonic()
    last_taken = start
    try:
        while sent < 1 << 30:
            sent += client.send(chunk)
            last_taken = time.monotonic()
    except OSError:
        pass  # closed by the server, or 2 s without taking a byte
    print(f"sent {sent >> 20} MiB, the last taken {last_taken - start:.2f} s after the start; "
          f"server RSS {rss_kib(pid)} KiB")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=["reset-storm", "endless-head"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--pid", type=int, required=True)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    if args.mode == "reset-storm":
        reset_storm(args.port, args.pid, args.threads, args.seconds)
    else:
        endless_head(args.port, args.pid)


if __name__ == "__main__":
    main()
