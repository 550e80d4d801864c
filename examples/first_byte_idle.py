#!/usr/bin/env python3
"""First byte of streams opened one at a time on an idle server.

    python3 examples/first_byte_idle.py target/release/tinysse 40 0.05

Starts the binary on port 8128 (loopback), then opens COUNT streams one
after the other, GAP seconds apart, keeping them open, and prints the time
from the request's write to the first byte of the answer: p50, p90, max,
and which opens took over 1 ms. Standard library only.
"""

import socket
import subprocess
import sys
import time

PORT = 8128


def main():
    binary, count, gap = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    server = subprocess.Popen([binary, "--port", str(PORT), "--tick-interval", "0"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.5)
        waits, streams = [], []
        for _ in range(count):
            s = socket.create_connection(("127.0.0.1", PORT))
            started = time.perf_counter()
            s.sendall(b"GET /events?channel=a HTTP/1.1\r\nHost: x\r\n\r\n")
            s.recv(100)
            waits.append((time.perf_counter() - started) * 1000)
            streams.append(s)
            time.sleep(gap)
        ordered = sorted(waits)
        print(f"{binary}: p50 {ordered[len(ordered) // 2]:.2f} ms, "
              f"p90 {ordered[int(len(ordered) * 0.9)]:.2f} ms, max {ordered[-1]:.2f} ms; "
              f"over 1 ms: opens {[i for i, w in enumerate(waits) if w > 1]}")
    finally:
        server.kill()


if __name__ == "__main__":
    main()
