#!/usr/bin/env python3
"""Keep-alive clients hammering GET /health; prints every request slower
than 100 ms (BENCHMARKS.md, "Limits found": tiny_http's pool queue).

    target/release/tinysse --port 8133 --tick-interval 0 &
    python3 examples/first_request_wait.py 8133 5 10   # port, seconds, clients

Each client is a process of its own with one kept-alive connection.
Loopback only.
"""
import http.client
import multiprocessing
import sys
import time


def run(args):
    port, seconds = args
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    slow, done = [], 0
    end = time.time() + seconds
    while time.time() < end:
        started = time.perf_counter()
        try:
            connection.request("GET", "/health")
            connection.getresponse().read()
        except Exception as e:  # noqa: BLE001 - report and reconnect
            slow.append(("error", repr(e)[:60]))
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            continue
        took = time.perf_counter() - started
        done += 1
        if took > 0.1:
            slow.append((round(took, 3), "request %d of this client" % done))
    return done, slow


if __name__ == "__main__":
    port, seconds, clients = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
    with multiprocessing.Pool(clients) as pool:
        results = pool.map(run, [(port, seconds)] * clients)
    print(sum(done for done, _ in results), "requests")
    for _, slow in results:
        for entry in slow:
            print(entry)
