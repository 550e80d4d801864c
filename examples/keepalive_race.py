#!/usr/bin/env python3
"""Pooled publishers against the server's idle timeout: POSTs lost to the
race between a kept-alive connection's next request and the server closing
it (BENCHMARKS.md, "Ninth round").

    target/release/tinysse --port 8150 --tick-interval 0 &
    python3 examples/keepalive_race.py 8150 2.0   # port, seconds between posts

CLIENTS threads (100) each keep one connection (http.client) and publish
POSTS times (6), waiting the given interval +-50 ms between; a POST that
gets no answer (the connection closed or reset under it) counts as lost.
Prints the answers by status and the losses. Loopback only; standard
library only.
"""

import collections
import http.client
import random
import sys
import threading

CLIENTS = 100
POSTS = 6


def publisher(port, interval, tally, lock):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    for _ in range(POSTS):
        try:
            connection.request("POST", "/publish?channel=race", body=b"x")
            response = connection.getresponse()
            response.read()
            outcome = str(response.status)
        except (http.client.HTTPException, OSError) as error:
            outcome = "lost: " + type(error).__name__
            connection.close()
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        with lock:
            tally[outcome] += 1
        threading.Event().wait(random.uniform(interval - 0.05, interval + 0.05))
    connection.close()


def main():
    port, interval = int(sys.argv[1]), float(sys.argv[2])
    tally, lock = collections.Counter(), threading.Lock()
    threads = [
        threading.Thread(target=publisher, args=(port, interval, tally, lock))
        for _ in range(CLIENTS)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for outcome, count in sorted(tally.items()):
        print(f"{count} {outcome}")
    lost = sum(n for outcome, n in tally.items() if outcome.startswith("lost"))
    print(f"lost {lost} of {CLIENTS * POSTS}")


if __name__ == "__main__":
    main()
