"""Times a SIGTERM stop with many streams open (the spec: every accepted event
written to every stream, every stream ended, exit 0, all within 2 s).

    cargo build --release
    python3 examples/stop_time.py 19000 target/release/tinysse

Starts the server on 127.0.0.1:8130, opens N streams on one channel (2,000 a
second), publishes EVENTS (default 3) events, sends SIGTERM at once, and
prints the time to exit and how many streams got every event and the end of
their body. Standard library only; the server's log goes to
/tmp/stop_time.log."""

import os
import resource
import signal
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hold_streams import open_streams  # noqa: E402


def read_all(stream):
    stream.settimeout(5)
    data = b""
    try:
        while True:
            chunk = stream.recv(65536)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    return data


def main():
    count, binary = int(sys.argv[1]), sys.argv[2]
    events = int(os.environ.get("EVENTS", "3"))
    port = 8130
    resource.setrlimit(resource.RLIMIT_NOFILE, (20000, 20000))
    server = subprocess.Popen(
        [binary, "--port", str(port), "--max-connections", "20000", "--tick-interval", "0"],
        stdout=subprocess.DEVNULL,
        stderr=open("/tmp/stop_time.log", "w"),
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        streams = open_streams(port, count, "stop", rate=2000)
        time.sleep(3)
        publisher = socket.create_connection(("127.0.0.1", port), timeout=10)
        for n in range(events):
            body = f"event-{n}"
            publisher.sendall(
                f"POST /publish?channel=stop HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n{body}".encode()
            )
            publisher.recv(4096)
        fields = open(f"/proc/{server.pid}/stat").read().rsplit(")", 1)[1].split()
        cpu_before = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        start = time.monotonic()
        server.send_signal(signal.SIGTERM)
        _, status, usage = os.wait4(server.pid, 0)
        took = time.monotonic() - start
        server.returncode = code = os.waitstatus_to_exitcode(status)
        stop_cpu = usage.ru_utime + usage.ru_stime - cpu_before
    finally:
        if server.poll() is None:
            server.kill()
    whole = sum(
        1
        for data in map(read_all, streams)
        if all(f"event-{n}".encode() in data for n in range(events)) and data.endswith(b"0\r\n\r\n")
    )
    print(f"{count} streams, {events} events: exit {code} after {took:.3f} s, "
          f"{stop_cpu:.2f} s of CPU; "
          f"{whole} of {count} got every event and the end of the body")


if __name__ == "__main__":
    main()
