"""Operations figures of a real `twistd parsec --dev`: start-up, health checks, graceful stop.

    .venv/bin/python benchmarks/ops_bench.py [--runs 3] [--seconds 3] [--websockets 50]

* start-up: from the spawn to systemd's READY=1 (the script plays the notify socket), and
  from READY=1 to the first answered GET /ready;
* GET /health and GET /ready: answers per second and latency percentiles, one client in a loop
  (each request on a new connection: the server closes after every answer), then 8 clients;
* graceful stop: from SIGTERM to STOPPING=1 and to the exit, with no client, with
  `--websockets` idle websocket clients that close their socket when the server's Close frame
  arrives, and with as many that never read their socket (what a Parsec 2.x client does with
  the connections of its pool: they never answer the server's Close).

Loopback only; every process started is stopped.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.notify_path = workdir / f"notify-{self.port}.sock"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(self.notify_path))
        env = {**os.environ, "NOTIFY_SOCKET": str(self.notify_path)}
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            [str(BIN / "twistd"), "-n", "--pidfile=", "parsec", "--dev", "--port", str(self.port)],
            cwd=workdir,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def wait_message(self, key: str, timeout: float = 30.0) -> float:
        self.notify.settimeout(timeout)
        while True:
            data = self.notify.recv(4096).decode()
            if any(line.startswith(f"{key}=") for line in data.split("\n")):
                return time.perf_counter()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.notify.close()
        self.notify_path.unlink(missing_ok=True)


def get(port: int, path: str) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1])


def load(port: int, path: str, seconds: float, clients: int) -> tuple[float, list[float]]:
    latencies: list[float] = []
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds

    def client() -> None:
        mine = []
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            assert get(port, path) == 200
            mine.append(time.perf_counter() - start)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return len(latencies) / (time.perf_counter() - start), latencies


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def idle_websocket(port: int, reading: bool = True) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(
        b"GET /ws HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 101"), head[:100]

    def close_on_close_frame() -> None:
        data = head.split(b"\r\n\r\n", 1)[1]
        try:
            while True:
                # Frames from the server are not masked: byte 0 has the opcode (0x8 = Close).
                while len(data) >= 2:
                    length = data[1] & 0x7F
                    header = 2 + (2 if length == 126 else 8 if length == 127 else 0)
                    if length >= 126:
                        if len(data) < header:
                            break
                        length = int.from_bytes(data[2:header], "big")
                    if len(data) < header + length:
                        break
                    if data[0] & 0x0F == 0x8:
                        sock.close()
                        return
                    data = data[header + length :]
                chunk = sock.recv(65536)
                if not chunk:
                    return
                data += chunk
        except OSError:
            return

    if reading:
        threading.Thread(target=close_on_close_frame, daemon=True).start()
    return sock


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--websockets", type=int, default=50)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="parsec-ops-bench-"))

    ready_times, first_answer = [], []
    for _ in range(args.runs):
        server = Server(workdir)
        try:
            ready = server.wait_message("READY")
            ready_times.append(ready - server.started)
            assert get(server.port, "/ready") == 200
            first_answer.append(time.perf_counter() - ready)
        finally:
            server.close()
    print(f"start-up to READY=1: median {statistics.median(ready_times) * 1000:.0f} ms ({args.runs} runs)")
    print(f"READY=1 to the first /ready 200: median {statistics.median(first_answer) * 1000:.1f} ms")

    server = Server(workdir)
    try:
        server.wait_message("READY")
        for path in ("/health", "/ready"):
            for clients in (1, 8):
                rate, latencies = load(server.port, path, args.seconds, clients)
                print(
                    f"GET {path:8} {clients} client(s): {rate:7.0f} answers/s, "
                    f"p50 {percentile(latencies, 0.5) * 1000:.2f} ms, p99 {percentile(latencies, 0.99) * 1000:.2f} ms"
                )
    finally:
        server.close()

    for count, reading in ((0, True), (args.websockets, True), (args.websockets, False)):
        stops, exits = [], []
        for _ in range(args.runs):
            server = Server(workdir)
            sockets = []
            try:
                server.wait_message("READY")
                sockets = [idle_websocket(server.port, reading) for _ in range(count)]
                time.sleep(0.2)  # let the server register them
                sent = time.perf_counter()
                server.proc.send_signal(signal.SIGTERM)
                stops.append(server.wait_message("STOPPING") - sent)
                code = server.proc.wait(timeout=60)
                exits.append(time.perf_counter() - sent)
                assert code == 0, code
            finally:
                for sock in sockets:
                    sock.close()
                server.close()
        kind = "idle" if reading else "unread"
        print(
            f"SIGTERM with {count:3} {kind:6} websocket(s): STOPPING=1 after {statistics.median(stops) * 1000:.1f} ms, "
            f"exit 0 after {statistics.median(exits) * 1000:.0f} ms (median of {args.runs})"
        )


if __name__ == "__main__":
    main()
