"""Export a trained policy to a deployable bundle (see :mod:`prfaas_env.router.bundle`).

    python export.py --run runs/NAME --out bundles/NAME      # a train.py run

:func:`export_bundle` takes any trained policy that offers the small interface of
:class:`prfaas_env.export.policy.TrainedPolicy` (spaces signature, normaliser, scores).
Steps: route ``seeds x decisions`` requests of the policy's scenario (validation seeds
10000+) with it and record every view (10,000 decisions by default); build the policy graph
(normalisation and masking inside) and write it as ONNX and TorchScript; check that both
choose the trained policy's action on the recorded decisions (export fails on any
disagreement where the two best scores are more than 1e-4 apart; closer pairs may order
differently in float32); write the golden file, the live-state schema, the manifest and,
unless skipped, the distilled knobs. The bundle is written into a temporary sibling folder
that replaces ``out`` only once complete.
"""

from __future__ import annotations

import datetime as dt
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from prfaas_env import package_versions
from prfaas_env.env.spaces import check_spaces
from prfaas_env.errors import ConfigError, replaceable_out
from prfaas_env.evaluation import VALIDATION_SEED, best_baseline, heuristic_params, seed_range
from prfaas_env.export.graph import (
    INPUT_NAMES,
    ONNX_OPSET,
    OUTPUT_NAMES,
    PolicyGraph,
    write_onnx,
    write_torchscript,
)
from prfaas_env.export.policy import TrainedPolicy
from prfaas_env.export.record import (
    Recording,
    folder_in_place,
    portable_topology,
    record,
    score_margin,
)
from prfaas_env.observation.live import STATE_FORMAT, LiveState
from prfaas_env.policies import RouteTable
from prfaas_env.policies.learned import ScoredPolicy
from prfaas_env.router.bundle import (
    BUNDLE_FORMAT,
    STATELESS_FALLBACKS,
    content_hash,
    sha256,
)
from prfaas_env.sim.topology import REJECT_LABEL

TIE = 1e-4  # scores closer than this may order differently in float32 runtimes
GOLDEN_MARGIN = 1e-3  # golden rows need this gap between the best and second allowed score


@dataclass(frozen=True)
class Parity:
    """How often each runtime picks the trained policy's action on the recorded decisions."""

    decisions: int
    onnx_agree: int
    torchscript_agree: int
    max_score_diff_onnx: float
    max_score_diff_torchscript: float
    real_disagreements: int  # disagreements where the trained scores are not tied (within TIE)

    def to_dict(self) -> dict[str, Any]:
        return {
            "decisions": self.decisions,
            "onnx_agree": self.onnx_agree,
            "torchscript_agree": self.torchscript_agree,
            "max_abs_score_diff_onnx": self.max_score_diff_onnx,
            "max_abs_score_diff_torchscript": self.max_score_diff_torchscript,
            "disagreements_beyond_ties": self.real_disagreements,
            "tie": TIE,
        }


def export_bundle(
    trained: TrainedPolicy,
    out: str | Path,
    fallback: str = "mooncake",
    seeds: int = 5,
    decisions: int = 2000,
    golden: int = 256,
    distill: bool = True,
    force: bool = False,
    echo: Any = print,
) -> dict[str, Any]:
    """Write the bundle of ``trained`` into ``out``; returns the manifest.

    ``fallback``: the stateless heuristic a router uses when the policy cannot decide
    (:func:`default_fallback` picks the best one from a run's baseline scores).

    Raises ConfigError (bad arguments, a policy whose spaces do not match its scenario) or
    RuntimeError (a runtime disagrees with the trained policy, which would make the bundle
    untrustworthy).
    """
    out = Path(out)
    replaceable_out(out, force, "manifest.json", "bundle")  # replaced once the bundle is built
    if seeds < 1 or decisions < 1 or golden < 1:
        raise ConfigError("--seeds, --decisions and --golden must be >= 1")
    if fallback not in STATELESS_FALLBACKS:
        raise ConfigError(
            f"--fallback {fallback!r}: a fallback must be a stateless heuristic; allowed: "
            f"{', '.join(STATELESS_FALLBACKS)}"
        )
    scenario, env_cfg = trained.scenario, trained.env_config
    check_spaces(trained.spaces, scenario, env_cfg, trained.name)
    topo = scenario.topology
    agent = ScoredPolicy(
        RouteTable.from_topology(topo, env_cfg.admission_control),
        topo,
        trained.scores,
        trained.name,
    )
    live = LiveState(topo, scenario.workload.mean_output_tokens(), env_cfg.admission_control)
    with folder_in_place(out) as work:  # replaces `out` only when complete
        manifest = _write_bundle(
            work, trained, agent, live, fallback, seeds, decisions, golden, distill, echo
        )
    return manifest


def default_fallback(baseline_scores: dict[str, dict[str, float]] | None) -> str:
    """The best stateless heuristic by P90 TTFT among those that keep up with the best
    throughput (``baseline_scores``: mean metrics per heuristic); Mooncake's conductor when
    there are none."""
    scores = {k: v for k, v in (baseline_scores or {}).items() if k in STATELESS_FALLBACKS}
    return best_baseline(scores, "ttft_p90_s") if scores else "mooncake"


def _write_bundle(
    out: Path,
    trained: TrainedPolicy,
    agent: ScoredPolicy,
    live: LiveState,
    fallback: str,
    seeds: int,
    decisions: int,
    golden: int,
    distill: bool,
    echo: Any,
) -> dict[str, Any]:
    scenario, env_cfg = trained.scenario, trained.env_config
    seed_list = seed_range(VALIDATION_SEED, seeds)  # distilled knobs use the test seeds
    echo(f"recording {seeds} x {decisions} decisions of {scenario.source} ...")
    rec = record(scenario, agent, live, seed_list, decisions, env_cfg.bandwidth_staleness_s)
    obs = live.encoder.encode(rec.view)

    dict_obs = bool(trained.spaces.get("dict_observation"))
    graph = PolicyGraph(
        trained.scoring_module(),
        trained.normalizer,
        live.encoder.size,
        trained.score_kind,
        dict_obs,
    )
    actions = live.num_actions
    echo("writing policy.onnx and policy.pt ...")
    write_onnx(graph, actions, out / "policy.onnx")
    write_torchscript(graph, actions, out / "policy.pt")
    ref_scores = trained.scores(obs, rec.mask)
    parity = check_parity(out, obs, rec.mask, rec.actions, ref_scores)
    echo(
        f"parity on {parity.decisions} recorded decisions: ONNX {parity.onnx_agree}, "
        f"TorchScript {parity.torchscript_agree} agree with the trained policy"
    )
    if parity.real_disagreements:
        raise RuntimeError(
            f"the exported graph disagrees with the trained policy on "
            f"{parity.real_disagreements} of {parity.decisions} recorded decisions whose two "
            f"best scores are more than {TIE} apart"
        )
    _write_golden(out / "golden.jsonl", live, rec, obs, ref_scores, golden)
    (out / "state.schema.json").write_text(json.dumps(live.schema(), indent=1) + "\n")
    manifest = _manifest(trained, live, graph, parity, fallback)
    if distill:
        from prfaas_env.export.distill import distill_knobs, write_distilled

        echo("distilling router knobs ...")
        result = distill_knobs(scenario, live, rec, agent, env_cfg, seeds, decisions, echo)
        write_distilled(out / "distilled.yaml", result, manifest["run"])
    files = {p.name: sha256(p) for p in sorted(out.iterdir()) if p.name != "manifest.json"}
    manifest["files"] = files
    manifest["content_hash"] = content_hash(files, manifest)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def check_parity(
    bundle: Path,
    obs: NDArray[np.float32],
    mask: NDArray[np.bool_],
    expected: NDArray[np.int64],
    expected_scores: NDArray[np.float64],
) -> Parity:
    """Run ``policy.onnx`` (ONNX Runtime) and ``policy.pt`` (TorchScript) of ``bundle`` on
    ``obs``/``mask`` and count agreement with ``expected`` actions."""
    import onnxruntime as ort
    import torch

    sess = ort.InferenceSession(str(bundle / "policy.onnx"), providers=["CPUExecutionProvider"])
    a_onnx, s_onnx = sess.run(None, {"observation": obs, "action_mask": mask})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is deprecated upstream
        ts = torch.jit.load(str(bundle / "policy.pt"))
    with torch.no_grad():
        a_ts, s_ts = ts(torch.from_numpy(obs), torch.from_numpy(mask))
    a_onnx, a_ts = np.asarray(a_onnx), a_ts.numpy()
    untied = score_margin(expected_scores, mask) > TIE
    return Parity(
        decisions=len(expected),
        onnx_agree=int((a_onnx == expected).sum()),
        torchscript_agree=int((a_ts == expected).sum()),
        real_disagreements=int((((a_onnx != expected) | (a_ts != expected)) & untied).sum()),
        max_score_diff_onnx=float(np.abs(s_onnx - expected_scores).max()),
        max_score_diff_torchscript=float(np.abs(s_ts.numpy() - expected_scores).max()),
    )


def _write_golden(
    path: Path,
    live: LiveState,
    rec: Recording,
    obs: NDArray[np.float32],
    scores: NDArray[np.float64],
    count: int,
) -> None:
    """``count`` recorded decisions spread over the recording, skipping near-ties (a gap under
    GOLDEN_MARGIN between the two best allowed scores), one JSON object per line."""
    ok = np.flatnonzero(score_margin(scores, rec.mask) > GOLDEN_MARGIN)
    # prefer a mix of actions: take rows evenly from each action's candidates
    picks: list[int] = []
    by_action = [ok[rec.actions[ok] == a] for a in np.unique(rec.actions[ok])]
    per = max(count // max(len(by_action), 1), 1)
    for rows in by_action:
        picks += list(rows[np.linspace(0, len(rows) - 1, min(per, len(rows))).astype(int)])
    picks = sorted(set(picks))[:count]
    with path.open("w") as f:
        for i in picks:
            line = {
                "state": live.state(rec.view, int(i)),
                "observation": [float(x) for x in obs[i]],
                "action_mask": [bool(x) for x in rec.mask[i]],
                "scores": [float(x) for x in scores[i]],
                "action": int(rec.actions[i]),
                "label": live.topology.action_labels(True)[int(rec.actions[i])],
            }
            f.write(json.dumps(line) + "\n")


def _versions() -> dict[str, str]:
    return package_versions("torch", "onnx", "onnxruntime", "numpy")


def _manifest(
    trained: TrainedPolicy,
    live: LiveState,
    graph: PolicyGraph,
    parity: Parity,
    fallback: str,
) -> dict[str, Any]:
    scenario = trained.scenario
    topo_raw = portable_topology(scenario.raw["topology"])
    routes = live.topology.routes
    clusters = live.topology.clusters
    actions = []
    for i, r in enumerate(routes):
        ch = live.topology.channels[r.channel] if r.channel >= 0 else None
        actions.append(
            {
                "index": i,
                "label": r.label(live.topology),
                "prefill_cluster": clusters[r.prefill].name,
                "decode_cluster": clusters[r.decode].name,
                "kv_path": f"{ch[1]}->{ch[2]}" if ch else "rdma",
            }
        )
    if live.admission_control:
        actions.append({"index": len(routes), "label": REJECT_LABEL, "kv_path": None})
    return {
        "format": BUNDLE_FORMAT,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "run": dict(trained.provenance),
        "model": {
            "onnx": "policy.onnx",
            "opset": ONNX_OPSET,
            "torchscript": "policy.pt",
            "inputs": [
                {"name": INPUT_NAMES[0], "dtype": "float32", "shape": ["batch", graph.size]},
                {"name": INPUT_NAMES[1], "dtype": "bool", "shape": ["batch", len(actions)]},
            ],
            "outputs": [
                {"name": OUTPUT_NAMES[0], "dtype": "int64", "shape": ["batch"]},
                {"name": OUTPUT_NAMES[1], "dtype": "float32", "shape": ["batch", len(actions)]},
            ],
            "scores": graph.score_kind,
            "normalisation": "inside the graph: clip((x - mean) / sqrt(var + eps), -clip, clip) "
            "with the trained policy's statistics; feed the encoder's output",
            "mask": "input action_mask; the action is the argmax of the scores over allowed "
            "actions (scores are returned before masking). A row with no allowed action "
            "returns 0: the router falls back instead",
        },
        "observation": {
            "size": live.encoder.size,
            "expected_output_tokens": live.expected_output_tokens,
            "admission_control": live.admission_control,
            "clip": "every entry is clipped to [0, 10] after its normalisation",
            "features": live.feature_sources(),
        },
        "state": {"format": STATE_FORMAT, "schema": "state.schema.json"},
        "actions": actions,
        "fallback": {
            "policy": fallback,
            "params": heuristic_params(scenario, fallback),
            "used_when": "a metric is missing or invalid, the model fails, or no action is allowed",
        },
        "topology": topo_raw,
        "slo": {"ttft_s": scenario.ttft_slo_s, "tpot_s": scenario.tpot_slo_s},
        "parity": parity.to_dict(),
        "golden": {"file": "golden.jsonl", "min_score_margin": GOLDEN_MARGIN},
        "versions": _versions(),
    }
