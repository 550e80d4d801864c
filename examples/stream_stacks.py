#!/usr/bin/env python3
"""How deep a waiting stream thread's stack is, and how much of it is resident.

    cargo build --release   # or --target x86_64-unknown-linux-musl
    python3 examples/stream_stacks.py target/release/tinysse [STREAMS]

Starts the binary on port 8127 (loopback, pings every 1 s and a 200 ms
write timeout, so that every stream pings and checks its client's
acknowledgements while the script waits), opens STREAMS (default 300)
streams on one channel, publishes one event, waits 8 s, then prints, over
the threads named `sse-stream`: how far below the top of its stack mapping
each one's stack pointer is while it waits (`/proc/PID/task/TID/syscall`),
how far below that pointer the stream ever went (the lowest byte that is
not zero, read from `/proc/PID/mem`: pages start zeroed; root), against
the room left in the waiting page (a deeper excursion keeps one more page
resident for the stream's life), and the resident KiB of those mappings
(`/proc/PID/smaps`; a mapping the kernel merged with a neighbour counts
the neighbour too). Standard library only; the server is killed at the
end.
"""

import collections
import os
import socket
import subprocess
import sys
import time

PORT = 8127


def mappings(pid):
    """(start, end, rss_kib) of every mapping of the process."""
    out, current = [], None
    with open(f"/proc/{pid}/smaps") as smaps:
        for line in smaps:
            first = line.split()[0]
            if "-" in first and ":" not in first:
                start, end = (int(x, 16) for x in first.split("-"))
                current = [start, end, 0]
                out.append(current)
            elif first == "Rss:" and current is not None:
                current[2] = int(line.split()[1])
    return out


def deepest_below(pid, start, sp):
    """How many bytes below `sp` the thread's stack was ever written (the
    lowest non-zero byte of the mapping), or None if it cannot be read."""
    try:
        with open(f"/proc/{pid}/mem", "rb") as mem:
            mem.seek(start)
            data = mem.read(sp - start)
    except OSError:
        return None
    lowest = next((i for i, byte in enumerate(data) if byte), None)
    return 0 if lowest is None else sp - (start + lowest)


def main():
    binary = sys.argv[1]
    streams = int(sys.argv[2]) if len(sys.argv) > 2 else 300
    server = subprocess.Popen([binary, "--port", str(PORT), "--tick-interval", "0",
                               "--ping-interval", "1s", "--write-timeout", "200ms"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.5)
        clients = []
        for _ in range(streams):
            s = socket.create_connection(("127.0.0.1", PORT))
            s.sendall(b"GET /events?channel=stacks HTTP/1.1\r\nHost: x\r\n\r\n")
            clients.append(s)
        time.sleep(2)
        p = socket.create_connection(("127.0.0.1", PORT))
        p.sendall(b"POST /publish?channel=stacks HTTP/1.1\r\nHost: x\r\n"
                  b"Content-Length: 5\r\nConnection: close\r\n\r\nhello")
        p.recv(1000)
        time.sleep(8)
        maps = mappings(server.pid)
        depths, resident = collections.Counter(), []
        excursions = collections.Counter()
        for tid in os.listdir(f"/proc/{server.pid}/task"):
            task = f"/proc/{server.pid}/task/{tid}"
            with open(f"{task}/comm") as comm:
                if comm.read().strip() != "sse-stream":
                    continue
            with open(f"{task}/syscall") as syscall:
                fields = syscall.read().split()
            if len(fields) != 9:
                continue
            sp = int(fields[7], 16)
            for start, end, rss in maps:
                if start <= sp < end:
                    depths[end - sp] += 1
                    resident.append(rss)
                    below = deepest_below(server.pid, start, sp)
                    if below is not None:
                        excursions[(below, sp % 4096)] += 1
        print(f"{binary}: {len(resident)} waiting stream threads")
        for depth, count in sorted(depths.items()):
            print(f"  stack pointer {depth} bytes below the mapping's top: {count} threads")
        for (below, room), count in sorted(excursions.items()):
            print(f"  went {below} bytes below the waiting pointer, {room} bytes of room in its page: "
                  f"{count} threads{'' if below <= room else ' (one more page resident)'}")
        if resident:
            print(f"  resident KiB of their stack mappings: average {sum(resident) / len(resident):.2f}, "
                  f"most common {collections.Counter(resident).most_common(1)[0][0]}")
    finally:
        server.kill()


if __name__ == "__main__":
    main()
