"""Export a train.py run to a router bundle (ONNX, TorchScript, manifest, golden file, knobs).

    python export.py --run runs/NAME --out bundles/NAME

The run's selected checkpoint (its best by periodic evaluation, else its final weights)
becomes a bundle that ``prfaas_env.router`` loads; see docs/router.md. The work is done by
:func:`prfaas_env.export.export_bundle`, which takes any trained policy offering
:class:`prfaas_env.export.policy.TrainedPolicy`; ``agents.run.TrainedRun`` is the one for
train.py runs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from agents.run import load_run
from prfaas_env.errors import ConfigError, UnknownNameError
from prfaas_env.export import default_fallback, export_bundle


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
    try:
        if _kind(Path(args.run)) == "generalist":
            from agents.generalist import export_generalist

            manifest = export_generalist(args.run, args.out, force=args.force)
            print(f"wrote {args.out} (content hash {manifest['content_hash'][:16]})")
            return 0
        trained = load_run(args.run, args.checkpoint)
        fallback = args.fallback or default_fallback(_baseline_scores(Path(args.run)))
        manifest = export_bundle(
            trained,
            args.out,
            fallback=fallback,
            seeds=args.seeds,
            decisions=args.decisions,
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


def _kind(run: Path) -> str | None:
    """The ``kind`` a run folder's run.json declares (None: a single-scenario agent run)."""
    try:
        kind = json.loads((run / "run.json").read_text()).get("kind")
    except (OSError, ValueError, AttributeError):
        return None
    return kind if isinstance(kind, str) else None


def _baseline_scores(run: Path) -> dict[str, dict[str, float]] | None:
    """The heuristics' validation scores a train.py run cached (baselines.json), if any."""
    path = run / "baselines.json"
    if not path.is_file():
        return None
    try:
        scores: dict[str, dict[str, float]] = json.loads(path.read_text())["scores"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: unreadable baseline scores: {exc}") from exc
    return scores


if __name__ == "__main__":
    sys.exit(main())
