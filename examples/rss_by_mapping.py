#!/usr/bin/env python3
"""Where a tinysse server's RSS per stream goes, by kind of memory mapping.

    target/release/tinysse --port 8120 --max-connections 20000 --tick-interval 0 &
    python3 examples/rss_by_mapping.py --port 8120 --pid $! --streams 3000

Opens STREAMS streams on loopback (200 at a time, `--pause` seconds apart,
or `--rate` per second on a fixed schedule, as `examples/bench.sh` does with
`--connect-rate`), waits `--settle` seconds for tiny_http's reader threads
to leave, and prints
the RSS of `/proc/PID/smaps` before and after, grouped: 128 KiB stream
stacks (132 KiB with musl, whose thread descriptor and TLS are mapped with
the stack; a stack the kernel merged with a neighbouring heap segment
counts as heap), 1 MiB tiny_http pool stacks, glibc's malloc arenas (64 MiB-aligned
heaps), dlmalloc's segments (other anonymous read-write mappings), and each
file. A dlmalloc segment of exactly 128 KiB is counted as a stack. Standard
library only; the streams are closed when it exits.
"""

import argparse
import collections
import time

from hold_streams import open_streams

ARENA_ALIGN = 64 << 20


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def rss_by_kind(pid):
    maps = []
    with open(f"/proc/{pid}/smaps") as smaps:
        for line in smaps:
            fields = line.split()
            if "-" in fields[0] and ":" not in fields[0]:
                start, end = (int(x, 16) for x in fields[0].split("-"))
                name = fields[5] if len(fields) > 5 else ""
                maps.append({"start": start, "kib": (end - start) // 1024,
                             "perm": fields[1], "name": name, "rss": 0})
            elif fields[0] == "Rss:":
                maps[-1]["rss"] = int(fields[1])
    kinds = collections.Counter()
    for i, m in enumerate(maps):
        following = maps[i + 1] if i + 1 < len(maps) else None
        if m["name"]:
            kind = m["name"].rsplit("/", 1)[-1]
        elif m["perm"] != "rw-p":
            kind = "other"
        elif m["kib"] in (128, 132):
            kind = "stream stacks (128 KiB)"
        elif m["kib"] == 1024:
            kind = "tiny_http pool stacks (1 MiB)"
        elif m["start"] % ARENA_ALIGN == 0 and following and following["perm"] == "---p":
            kind = "glibc malloc arenas"
        else:
            kind = "dlmalloc segments (other anonymous)"
        kinds[kind] += m["rss"]
    return kinds


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--pid", type=int, required=True)
    parser.add_argument("--streams", type=int, default=3000)
    parser.add_argument("--pause", type=float, default=0.5)
    parser.add_argument("--rate", type=float, default=0.0,
                        help="connections per second on a fixed schedule (0: bursts of 200)")
    parser.add_argument("--settle", type=float, default=9.0)
    args = parser.parse_args()

    before_total, before = rss_kib(args.pid), rss_by_kind(args.pid)
    streams = open_streams(args.port, args.streams, "rss", rate=args.rate, pause=args.pause)
    time.sleep(args.settle)
    after_total, after = rss_kib(args.pid), rss_by_kind(args.pid)

    count = len(streams)
    print(f"RSS {before_total} -> {after_total} KiB: "
          f"{(after_total - before_total) / count:.2f} KiB per stream ({count} streams)")
    for kind in sorted(set(before) | set(after), key=lambda k: before[k] - after[k]):
        delta = after[kind] - before[kind]
        if abs(delta) > 20:
            print(f"  {kind:38s} {before[kind]:8d} -> {after[kind]:8d} KiB, "
                  f"{delta / count:.2f} per stream")
    for stream in streams:
        stream.close()


if __name__ == "__main__":
    main()
