"""``python -m prfaas_env.export --run runs/NAME --out BUNDLE``: see :mod:`prfaas_env.export`."""

from __future__ import annotations

import argparse
import sys

from prfaas_env.errors import ConfigError, UnknownNameError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m prfaas_env.export",
        description="Export a train.py run to a router bundle (ONNX, TorchScript, manifest, "
        "golden file, distilled knobs).",
    )
    ap.add_argument("--run", required=True, help="train.py run folder")
    ap.add_argument("--out", required=True, help="bundle folder to write")
    ap.add_argument(
        "--checkpoint",
        choices=("selected", "best", "final"),
        default="selected",
        help="which weights: the run's best checkpoint when it has one (selected, default), "
        "best, or the final weights",
    )
    ap.add_argument("--seeds", type=int, default=5, help="seeds recorded (default 5)")
    ap.add_argument(
        "--decisions", type=int, default=2000, help="decisions recorded per seed (default 2000)"
    )
    ap.add_argument(
        "--fallback",
        default=None,
        help="fallback heuristic (default: the run's best stateless heuristic)",
    )
    ap.add_argument("--golden", type=int, default=256, help="golden lines (default 256)")
    ap.add_argument("--no-distill", action="store_true", help="skip distilled.yaml")
    ap.add_argument("--force", action="store_true", help="replace an existing bundle folder")
    args = ap.parse_args(argv)
    from prfaas_env.export import export_bundle

    try:
        manifest = export_bundle(
            args.run,
            args.out,
            checkpoint=args.checkpoint,
            seeds=args.seeds,
            decisions=args.decisions,
            fallback=args.fallback,
            golden=args.golden,
            distill=not args.no_distill,
            force=args.force,
        )
    except (ConfigError, UnknownNameError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.out} (content hash {manifest['content_hash'][:16]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
