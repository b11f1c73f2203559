"""Command line of the gateway.

python -m prfaas_env.gateway serve --inventory FILE (--bundle DIR | --policy NAME) [--port 9002]
python -m prfaas_env.gateway emulate --inventory FILE [--link-port 9400]
python -m prfaas_env.gateway envoy-config --inventory FILE [--picker 127.0.0.1:9002] [--listen ...]
python -m prfaas_env.gateway load --url http://127.0.0.1:8080 --trace FILE [--requests N] ...
python -m prfaas_env.gateway demo [--requests 200] [--policy prfaas_threshold] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from prfaas_env.errors import ConfigError


def _params(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"--policy-params: not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ConfigError("--policy-params: expected a JSON object of parameter -> value")
    return value


class _RepeatFilter(logging.Filter):
    """Lets a message through at most once a second (a server out of file descriptors
    fails its accept loop on every turn, and would otherwise fill the disk with the same
    line); the number held back is added to the next one let through."""

    def __init__(self) -> None:
        super().__init__()
        self.last: dict[tuple[str, str], float] = {}
        self.held: dict[tuple[str, str], int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, str(record.msg))
        now = record.created
        if now - self.last.get(key, -1e9) < 1.0:
            self.held[key] = self.held.get(key, 0) + 1
            return False
        self.last[key] = now
        n = self.held.pop(key, 0)
        if n:
            record.msg = f"{record.msg} (and {n} more like it in the last second)"
        return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m prfaas_env.gateway",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = ap.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the endpoint picker (Envoy ext_proc) for a deployment")
    s.add_argument("--inventory", required=True, help="inventory YAML (docs/gateway.md)")
    s.add_argument("--bundle", help="policy bundle folder (python -m prfaas_env.export)")
    s.add_argument(
        "--policy", help="a built-in heuristic instead of a bundle, e.g. prfaas_threshold"
    )
    s.add_argument("--policy-params", help="the heuristic's parameters as a JSON object")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=9002, help="ext_proc gRPC port")
    s.add_argument("--metrics-port", type=int, default=9090, help="HTTP /metrics port (0: none)")
    s.add_argument(
        "--body-mode",
        default="BUFFERED",
        choices=["BUFFERED", "STREAMED", "FULL_DUPLEX_STREAMED"],
        help="body mode to assume when Envoy does not announce its own",
    )

    e = sub.add_parser("emulate", help="serve an inventory's endpoints as emulated model servers")
    e.add_argument("--inventory", required=True)
    e.add_argument("--link-port", type=int, default=0, help="port of the link monitor (0: none)")

    c = sub.add_parser("envoy-config", help="print the Envoy bootstrap for an inventory")
    c.add_argument("--inventory", required=True)
    c.add_argument("--picker", default="127.0.0.1:9002")
    c.add_argument("--listen", default="127.0.0.1:8080")
    c.add_argument("--admin", default="127.0.0.1:9901")
    c.add_argument(
        "--body-mode", default="BUFFERED", choices=["BUFFERED", "STREAMED", "FULL_DUPLEX_STREAMED"]
    )
    c.add_argument("--message-timeout", type=float, default=0.2, help="seconds per picker answer")

    from prfaas_env.gateway.demo import add_demo_arguments
    from prfaas_env.gateway.loadgen import add_load_arguments

    add_load_arguments(sub.add_parser("load", help="replay a trace against an OpenAI endpoint"))
    add_demo_arguments(
        sub.add_parser("demo", help="Envoy + picker + emulated deployment + a trace")
    )

    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(_RepeatFilter())
    try:
        return _run(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    if args.command == "serve":
        from prfaas_env.gateway.build import build_picker
        from prfaas_env.gateway.server import PickerServer, serve_forever

        picker = build_picker(args.inventory, args.bundle, args.policy, _params(args.policy_params))
        server = PickerServer(picker, args.host, args.port, args.metrics_port, args.body_mode)
        serve_forever(server)
        return 0
    if args.command == "emulate":
        import asyncio
        import signal

        from prfaas_env.gateway.emulator import run_deployment
        from prfaas_env.gateway.inventory import load_inventory

        inv = load_inventory(args.inventory)

        async def main() -> None:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            await run_deployment(
                inv,
                args.link_port,
                stop,
                lambda d: print(f"emulating {len(inv.endpoints)} endpoints", flush=True),
            )

        asyncio.run(main())
        return 0
    if args.command == "envoy-config":
        from prfaas_env.gateway.envoy import config_yaml, envoy_config
        from prfaas_env.gateway.inventory import load_inventory

        inv = load_inventory(args.inventory)
        cfg = envoy_config(
            inv, args.picker, args.listen, args.admin, args.body_mode, args.message_timeout
        )
        print(config_yaml(cfg), end="")
        return 0
    if args.command == "load":
        from prfaas_env.gateway.loadgen import run_load_command

        return run_load_command(args)
    if args.command == "demo":
        from prfaas_env.gateway.demo import run_demo_command

        return run_demo_command(args)
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
