"""Opens streams to a tinysse on loopback and holds them: the part that
examples/rss_by_mapping.py and examples/thread_cpu.py share (imported from
the scripts' own directory). Standard library only."""

import socket
import time


def open_streams(port, count, channel, rate=0.0, pause=0.5, burst=200):
    """Opens `count` streams on `channel`: `rate` per second on a fixed
    schedule, or with rate 0 in bursts of `burst` with `pause` seconds
    between. Returns them once every one has its response head."""
    request = f"GET /events?channel={channel} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode()
    streams = []
    start = time.monotonic()
    for n in range(count):
        stream = socket.create_connection(("127.0.0.1", port), timeout=10)
        stream.sendall(request)
        streams.append(stream)
        if rate > 0:
            ahead = start + (n + 1) / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
        elif n % burst == burst - 1:
            time.sleep(pause)
    for stream in streams:
        stream.recv(4096)  # the response head: the stream is open
    return streams
