#!/usr/bin/env python3
"""CPU time of a tinysse server's background threads while it holds streams.

    target/x86_64-unknown-linux-musl/release/tinysse --port 8129 --max-connections 20000 --tick-interval 0 &
    python3 examples/thread_cpu.py --port 8129 --pid $! --streams 10000 --seconds 30

Opens STREAMS streams on loopback (`--rate` per second), waits `--settle`
seconds, then prints, for each thread name other than `sse-stream`, the
CPU it used per second over `--seconds` (utime + stime from
`/proc/PID/task/TID/stat`, in clock ticks of 10 ms), and the whole
process's. Nothing is published: what shows is the cost of holding the
streams (the head guard's reads of the socket table, pings, the ping
clock). Standard library only; the streams are closed when it exits.
"""

import argparse
import collections
import os
import time

from hold_streams import open_streams

TICK_MS = 1000 / os.sysconf("SC_CLK_TCK")


def cpu_ticks(stat_path):
    with open(stat_path) as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def by_thread(pid):
    ticks = collections.Counter()
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as comm:
                name = comm.read().strip()
            ticks[name] += cpu_ticks(f"/proc/{pid}/task/{tid}/stat")
        except OSError:
            pass  # the thread ended meanwhile
    return ticks


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--pid", type=int, required=True)
    parser.add_argument("--streams", type=int, default=10000)
    parser.add_argument("--rate", type=float, default=800.0)
    parser.add_argument("--settle", type=float, default=5.0)
    parser.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()

    streams = open_streams(args.port, args.streams, "cpu", rate=args.rate)
    time.sleep(args.settle)

    before, process_before = by_thread(args.pid), cpu_ticks(f"/proc/{args.pid}/stat")
    began = time.monotonic()
    time.sleep(args.seconds)
    after, process_after = by_thread(args.pid), cpu_ticks(f"/proc/{args.pid}/stat")
    elapsed = time.monotonic() - began

    print(f"{len(streams)} streams, {elapsed:.1f} s: "
          f"whole process {(process_after - process_before) * TICK_MS / elapsed:.1f} ms of CPU per second")
    for name in sorted(after):
        if name == "sse-stream":
            continue
        used = (after[name] - before[name]) * TICK_MS / elapsed
        print(f"  {name:16s} {used:6.1f} ms per second")
    for stream in streams:
        stream.close()


if __name__ == "__main__":
    main()
