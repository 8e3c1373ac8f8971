"""The continuous prober's own cost: CPU and RSS of `kernelsession probe --every` over time.

``python -m bench.prober_footprint [--seconds 60] [--every 10]`` starts a local
jupyter-server, runs ``kernelsession probe --url ... --every EVERY --metrics-port 0`` against
it for SECONDS after its first check, scraping its metrics once per interval as
Prometheus would, and prints the prober's CPU seconds (start-up and steady state), its
CPU share of one core and its RSS. Every process is stopped by PID.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

from kernelsession.client.testing import LocalJupyterServer

SCRIPT = str(Path(sys.executable).parent / "kernelsession")


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.prober_footprint")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--every", type=float, default=10.0)
    args = parser.parse_args(argv)
    with LocalJupyterServer() as lab, tempfile.TemporaryDirectory() as tmp:
        token = Path(tmp) / "token"
        token.write_text(lab.token)
        err = Path(tmp) / "err"
        with err.open("w") as e:
            process = subprocess.Popen(
                [SCRIPT, "probe", "--url", lab.url, "--token-file", str(token),
                 "--every", str(args.every), "--metrics-port", "0",
                 "--metrics-address", "127.0.0.1"],
                stdout=subprocess.DEVNULL, stderr=e, stdin=subprocess.DEVNULL,
                env={k: v for k, v in os.environ.items() if k != "JUPYTER_TOKEN"},
            )  # fmt: skip
        try:
            proc = psutil.Process(process.pid)
            started = time.monotonic()
            port = 0
            while not port:  # the metrics line, bounded
                assert process.poll() is None, err.read_text()
                assert time.monotonic() - started < 60, err.read_text()
                for line in err.read_text().splitlines():
                    if line.startswith("serving metrics on "):
                        port = int(line.rsplit(":", 1)[1].split("/")[0])
                time.sleep(0.05)
            url = f"http://127.0.0.1:{port}/metrics"
            while (
                "kernelsession_probe_up 1.0" not in httpx.get(url, timeout=5, trust_env=False).text
            ):
                assert time.monotonic() - started < 60, err.read_text()
                time.sleep(0.05)
            startup_cpu = _cpu(proc)
            startup_rss = proc.memory_info().rss
            t0 = time.monotonic()
            rss_max = startup_rss
            next_scrape = t0
            while (now := time.monotonic()) - t0 < args.seconds:
                if now >= next_scrape:
                    httpx.get(url, timeout=5, trust_env=False)
                    next_scrape += args.every
                rss_max = max(rss_max, proc.memory_info().rss)
                time.sleep(1.0)  # a sampling period, not a condition
            steady_cpu = _cpu(proc) - startup_cpu
            elapsed = time.monotonic() - t0
            rss_end = proc.memory_info().rss
            text = httpx.get(url, timeout=5, trust_env=False).text
            checks = next(
                float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith('kernelsession_probe_total{error="",result="success"}')
            )
        finally:
            process.send_signal(signal.SIGTERM)
            code = process.wait(30)
    print(f"prober: --every {args.every:g} s for {elapsed:.1f} s, {checks:.0f} successful checks")
    print(
        f"  start-up to first success: {startup_cpu:.2f} CPU s, RSS {startup_rss / 2**20:.1f} MiB"
    )
    print(
        f"  steady state: {steady_cpu:.3f} CPU s = {100 * steady_cpu / elapsed:.3f} % of one core"
    )
    print(f"  RSS: {rss_end / 2**20:.1f} MiB at the end, {rss_max / 2**20:.1f} MiB max")
    print(f"  exit code after SIGTERM: {code}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
