# SPDX-License-Identifier: GPL-3.0-or-later
"""Load test of the inference server on loopback: throughput, latency, memory.

Starts ``python -m server serve`` with the test-double engine (tests/wire/fake_engine.py, a
numpy stand-in with the real Result names and sizes: what is measured is the server, not a
model), or connects to a running server with ``--connect HOST:PORT`` (token from
SAM3D_BODY_TOKEN; loopback addresses only). Then:

* for each N in ``--clients``: N concurrent clients each send ``--per-client`` reconstruct
  requests back to back; reports throughput (requests/s) and p50/p99 latency;
* ``--sequential`` requests from one client, reading the server's resident memory (RSS, from
  /proc or ps) after 100 and after all of them: a leak shows as growth between the two.

Bounded: every phase stops at ``--max-seconds`` in total, and the script stops the server it
started. Usage: python scripts/load_test.py [--clients 1,4,8] [--per-client 200]
[--sequential 1000] [--vertices 18439] [--json OUT.json]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from addon.protocol.client import TOKEN_ENV, Client, ClientError, ServerProcess  # noqa: E402
from server.service import is_loopback  # noqa: E402

TEST_ENGINE = "tests.wire.fake_engine:make_engine"


def rss_bytes(pid: int) -> int | None:
    """Resident memory of a local process, or None when it cannot be read."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        out = subprocess.run(["ps", "-o", "rss=", "-p", str(pid)], capture_output=True,
                             text=True, timeout=10).stdout.strip()
        return int(out) * 1024 if out else None
    except (OSError, ValueError, subprocess.SubprocessError):
        return None


def percentile_ms(seconds: list[float], q: float) -> float | None:
    return round(float(np.percentile(seconds, q)) * 1000, 2) if seconds else None


def concurrent_phase(address: tuple[str, int, str], clients: int, per_client: int,
                     image: np.ndarray, deadline: float) -> dict[str, Any]:
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def client_loop() -> None:
        try:
            with Client(*address, timeout=30) as client:
                for _ in range(per_client):
                    if time.monotonic() > deadline:
                        return
                    started = time.perf_counter()
                    client.reconstruct(image=image, timeout=60)
                    with lock:
                        latencies.append(time.perf_counter() - started)
        except ClientError as exc:
            with lock:
                errors.append(str(exc))

    threads = [threading.Thread(target=client_loop, daemon=True) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(deadline - time.monotonic(), 0) + 60)
    wall = time.perf_counter() - started
    return {"clients": clients, "requests": len(latencies), "errors": len(errors),
            "first_error": errors[0] if errors else None, "seconds": round(wall, 3),
            "throughput_rps": round(len(latencies) / wall, 1) if wall > 0 else None,
            "p50_ms": percentile_ms(latencies, 50), "p99_ms": percentile_ms(latencies, 99),
            "complete": len(latencies) == clients * per_client}


def sequential_phase(address: tuple[str, int, str], count: int, pid: int | None,
                     image: np.ndarray, deadline: float) -> dict[str, Any]:
    rss: dict[str, int | None] = {"start": rss_bytes(pid) if pid else None}
    done = 0
    latencies: list[float] = []
    with Client(*address, timeout=30) as client:
        while done < count and time.monotonic() < deadline:
            started = time.perf_counter()
            client.reconstruct(image=image, timeout=60)
            latencies.append(time.perf_counter() - started)
            done += 1
            if done in (100, count) and pid:
                rss[f"after_{done}"] = rss_bytes(pid)
    after_100, after_all = rss.get("after_100"), rss.get(f"after_{count}")
    growth = (after_all - after_100) if after_100 and after_all else None
    return {"requests": done, "complete": done == count, "rss_bytes": rss,
            "rss_growth_100_to_all_bytes": growth,
            "p50_ms": percentile_ms(latencies, 50), "p99_ms": percentile_ms(latencies, 99)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connect", metavar="HOST:PORT",
                        help="a running server on loopback (token from SAM3D_BODY_TOKEN)")
    parser.add_argument("--clients", default="1,4,8",
                        help="comma-separated concurrent client counts (default 1,4,8)")
    parser.add_argument("--per-client", type=int, default=200,
                        help="requests per client (default 200)")
    parser.add_argument("--sequential", type=int, default=1000,
                        help="sequential requests for the memory check (default 1000)")
    parser.add_argument("--vertices", type=int, default=18439,
                        help="test-double mesh size (default: MHR's 18439)")
    parser.add_argument("--image", default="64x48", metavar="WxH", help="request image size")
    parser.add_argument("--max-seconds", type=float, default=120.0,
                        help="stop every phase after this many seconds in all (default 120)")
    parser.add_argument("--json", metavar="OUT.json", help="also write the numbers here")
    args = parser.parse_args(argv)
    try:
        client_counts = [int(n) for n in args.clients.split(",")]
        width, height = (int(n) for n in args.image.lower().split("x"))
    except ValueError:
        parser.error("--clients must be integers like 1,4,8 and --image like 64x48")
    if not (all(0 < n <= 64 for n in client_counts) and 0 < args.per_client <= 10_000
            and 100 <= args.sequential <= 100_000 and width > 0 and height > 0):
        parser.error("need 1..64 clients, 1..10000 per client, 100..100000 sequential requests")

    deadline = time.monotonic() + args.max_seconds
    server: ServerProcess | None = None
    if args.connect:
        host, _, port = args.connect.rpartition(":")
        host = host.strip("[]")
        if not is_loopback(host) or not port.isdigit():
            parser.error("--connect must be a loopback HOST:PORT (this is a local load test)")
        token = os.environ.get(TOKEN_ENV, "")
        if not token:
            parser.error(f"--connect needs the server's token in {TOKEN_ENV}")
        address = (host, int(port), token)
    else:
        server = ServerProcess(sys.executable, root=ROOT, device="cpu", ready_timeout=120,
                               extra_args=["--engine", TEST_ENGINE, "--queue-size",
                                           str(max(8, max(client_counts)))],
                               env={"SAM3D_FAKE_VERTICES": str(args.vertices)})
        server.start()
        address = ("127.0.0.1", server.port, server.token)
    image = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    report: dict[str, Any] = {"image": [width, height], "concurrent": []}
    try:
        with Client(*address, timeout=30) as probe:
            info = probe.info
            sample = probe.reconstruct(image=image, timeout=60)  # also a warm-up
        report["result_bytes"] = int(sum(np.asarray(a).nbytes for a in sample.values()))
        print(f"server {info.get('model')} pid {info.get('pid')}; image {width}x{height}, "
              f"result {report['result_bytes'] / 2**20:.2f} MiB of arrays", flush=True)
        pid = int(info["pid"]) if "pid" in info else None
        report["server"] = {k: info.get(k) for k in ("model", "device", "pid", "protocol")}
        for clients in client_counts:
            phase = concurrent_phase(address, clients, args.per_client, image, deadline)
            report["concurrent"].append(phase)
            print(f"{clients:3d} clients: {phase['requests']:5d} requests in "
                  f"{phase['seconds']:7.2f} s = {phase['throughput_rps']} req/s, "
                  f"p50 {phase['p50_ms']} ms, p99 {phase['p99_ms']} ms, "
                  f"errors {phase['errors']}", flush=True)
        seq = sequential_phase(address, args.sequential, pid, image, deadline)
        report["sequential"] = seq
        mib = {k: (round(v / 2**20, 1) if v else None) for k, v in seq["rss_bytes"].items()}
        growth = seq["rss_growth_100_to_all_bytes"]
        print(f"sequential: {seq['requests']} requests, p50 {seq['p50_ms']} ms, p99 "
              f"{seq['p99_ms']} ms; server RSS MiB {mib}; growth 100->{seq['requests']}: "
              f"{None if growth is None else round(growth / 2**20, 2)} MiB", flush=True)
    finally:
        if server is not None:
            server.stop(timeout=10)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    incomplete = [p for p in report["concurrent"] if not p["complete"]]
    if incomplete or not report.get("sequential", {}).get("complete"):
        print("note: stopped by --max-seconds or errors before all requests were done",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
