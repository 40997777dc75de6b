"""A Ray cluster of two nodes on 127.0.0.1 for tests and benchmarks: `ray start --head` plus
`ray start --address`, each node with its own temp dir, ports and resources.

Other Ray instances may run on the same machine, so nothing here uses `ray stop` (it stops every
Ray of the user): `LocalCluster.stop` ends only the processes whose command line names one of this
cluster's temp dirs, and their descendants, then deletes the temp dirs.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ports(head: bool) -> list[str]:
    """Every port a node opens, chosen free, so that no default collides with another Ray here."""
    names = ["node-manager-port", "object-manager-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
             "runtime-env-agent-port", "metrics-export-port"]
    if head:
        names += ["ray-client-server-port", "dashboard-port"]
    low = free_port()
    workers = [f"--min-worker-port={low}", f"--max-worker-port={low + 200}"]
    return [f"--{name}={free_port()}" for name in names] + workers


class LocalCluster:
    """Start with `nodes`: one dict of custom resources per node (the first is the head), `cpus` each."""

    def __init__(self, nodes: list[dict[str, float]], cpus: int = 2) -> None:
        self.temp_dirs: list[str] = []
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
                    "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0",
                    "RAY_AUTH_MODE": "token"}  # as a local `ray.init` does: the nodes and clients agree
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        try:
            for i, resources in enumerate(nodes):
                self._start(i == 0, resources, cpus)
        except BaseException:
            self.stop()
            raise

    def _start(self, head: bool, resources: dict[str, float], cpus: int) -> None:
        # Short paths: Ray's unix sockets live under the temp dir and their names have a length limit.
        temp = tempfile.mkdtemp(prefix="rlnode", dir="/tmp")
        self.temp_dirs.append(temp)
        where = ["--head", f"--port={self.port}", "--include-dashboard=true", "--dashboard-host=127.0.0.1"] if head \
            else [f"--address={self.address}"]
        cmd = [RAY, "start", *where, "--node-ip-address=127.0.0.1", f"--temp-dir={temp}", f"--num-cpus={cpus}",
               "--num-gpus=0", f"--resources={json.dumps(resources)}", *_ports(head), "--disable-usage-stats"]
        proc = subprocess.run(cmd, env=self.env, cwd=ROOT, capture_output=True, text=True, timeout=180)
        if proc.returncode != 0:
            raise RuntimeError(f"ray start failed ({' '.join(cmd)}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")

    def processes(self) -> list[int]:
        """This cluster's processes: those naming one of its temp dirs, and all their descendants."""
        parents: dict[int, int] = {}
        mine: set[int] = set()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if any(d in cmdline for d in self.temp_dirs):
                mine.add(int(entry.name))
        grown = True
        while grown:
            children = {pid for pid, ppid in parents.items() if ppid in mine} - mine
            grown = bool(children)
            mine |= children
        return sorted(mine - {os.getpid()})

    def stop(self) -> None:
        """End this cluster's processes (TERM, then KILL after 10 s) and delete its temp dirs."""
        for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            pids = self.processes()
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + wait
            while pids and time.monotonic() < deadline and self.processes():
                time.sleep(0.2)
        for d in self.temp_dirs:
            shutil.rmtree(d, ignore_errors=True)
