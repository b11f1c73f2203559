"""Command line of the reference router.

python -m prfaas_env.router serve --bundle DIR [--host 127.0.0.1] [--port 8080]
python -m prfaas_env.router route --bundle DIR STATE.json     (or - for standard input)
python -m prfaas_env.router check --bundle DIR                (replay golden.jsonl)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from prfaas_env.router.bundle import BundleError
from prfaas_env.router.core import LiveStateError, Router


def check_golden(router: Router) -> tuple[int, int, float]:
    """Replay the bundle's whole golden file: (lines, lines decided by the model as recorded,
    largest observation difference)."""
    total, wrong, diff = router.replay_golden()
    for message in wrong[:5]:
        print(message, file=sys.stderr)
    return total, total - len(wrong), diff


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m prfaas_env.router",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = ap.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run the HTTP sidecar")
    s.add_argument("--bundle", required=True)
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8080)
    r = sub.add_parser("route", help="decide one state read from a JSON file")
    r.add_argument("--bundle", required=True)
    r.add_argument("state", help="JSON file with one state, or - for standard input")
    c = sub.add_parser("check", help="replay the bundle's golden file")
    c.add_argument("--bundle", required=True)
    args = ap.parse_args(argv)
    try:
        router = Router(args.bundle)
    except BundleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.command == "serve":
        from prfaas_env.router.server import serve

        print(f"serving {args.bundle} on http://{args.host}:{args.port}", file=sys.stderr)
        serve(router, args.host, args.port)
        return 0
    if args.command == "route":
        src = sys.stdin.read() if args.state == "-" else _read(Path(args.state))
        if src is None:
            print(f"error: {args.state}: no such file", file=sys.stderr)
            return 2
        try:
            decision = router.decide(json.loads(src))
        except json.JSONDecodeError as exc:
            print(f"error: {args.state}: invalid JSON: {exc}", file=sys.stderr)
            return 2
        except LiveStateError as exc:
            print(f"error: {args.state}: {exc}", file=sys.stderr)
            return 2
        print(json.dumps(decision.to_dict()))
        return 0
    total, ok, diff = check_golden(router)
    print(f"golden: {ok}/{total} decisions match; largest observation difference {diff:.2e}")
    return 0 if ok == total and diff <= 1e-6 else 1


def _read(path: Path) -> str | None:
    return path.read_text() if path.is_file() else None


if __name__ == "__main__":
    sys.exit(main())
