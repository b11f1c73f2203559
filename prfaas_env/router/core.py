"""The reference router: a bundle's policy deciding on live cluster state, with a fallback.

``Router.decide(state)`` takes one live state (plain JSON-like data, see
:mod:`prfaas_env.observation.live`), builds the view and the observation with the environment's own
code, runs ``policy.onnx`` with ONNX Runtime and returns a :class:`Decision`. The fallback
heuristic named in the manifest decides instead, and the decision says why, when:

- a metric is missing, null or invalid (negative, NaN, not a number): ``missing ...`` /
  ``invalid ...``; the fallback sees the view with defaults in their place;
- the model fails to run or returns an action the mask forbids: ``model failed: ...``;
- no action is allowed (every route's link is down): ``no allowed action``; the decision
  is then action -1, label ``none``.

A state without a usable ``request.input_tokens`` cannot be routed by anything and raises
:class:`~prfaas_env.observation.live.LiveStateError`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from prfaas_env.observation.live import LiveStateError
from prfaas_env.policies import Policy, RouteTable, make_policy
from prfaas_env.router.bundle import Bundle, BundleError, load_bundle

__all__ = ["BundlePolicy", "Decision", "LiveStateError", "ModelRunner", "Router"]

_OUTPUTS = ["action", "scores"]  # policy.onnx's outputs, in the order ModelRunner returns


@dataclass(frozen=True, slots=True)
class Decision:
    """One routing decision: the action index and label, whether the model or the fallback
    made it (``source``), why the fallback was used (``reason``, None for the model), and the
    model's scores (only when the model decided). When no action is allowed the action is
    -1 and the label ``none``."""

    action: int
    label: str
    source: str
    reason: str | None = None
    scores: list[float] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "label": self.label,
            "source": self.source,
            "reason": self.reason,
            "scores": self.scores,
        }


class ModelRunner:
    """``policy.onnx`` in an ONNX Runtime session: observations and masks in, actions and
    scores out. One thread per session call (lowest latency for single decisions)."""

    def __init__(self, bundle: Bundle, threads: int = 1) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        path = bundle.file("policy.onnx")
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own types for unreadable graphs
            raise BundleError(f"{path}: ONNX Runtime cannot load it: {exc}") from exc
        inputs = {i.name: i for i in self.session.get_inputs()}
        if set(inputs) != {"observation", "action_mask"}:
            raise BundleError(
                f"{path}: inputs are {sorted(inputs)}; expected observation and action_mask"
            )
        outputs = [o.name for o in self.session.get_outputs()]
        if sorted(outputs) != sorted(_OUTPUTS):
            raise BundleError(f"{path}: outputs are {outputs}; expected {' and '.join(_OUTPUTS)}")
        for name, kind in (("observation", "tensor(float)"), ("action_mask", "tensor(bool)")):
            if inputs[name].type != kind:
                raise BundleError(f"{path}: input {name} is {inputs[name].type}; expected {kind}")
        width = inputs["observation"].shape[1]
        if width != len(bundle.features):
            raise BundleError(
                f"{path}: the model takes {width} observation features but manifest.json "
                f"lists {len(bundle.features)}"
            )
        actions = inputs["action_mask"].shape[1]
        if actions != len(bundle.actions):
            raise BundleError(
                f"{path}: the model scores {actions} actions but manifest.json lists "
                f"{len(bundle.actions)}"
            )

    def run(
        self, obs: NDArray[np.float32], mask: NDArray[np.bool_]
    ) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
        feed = {
            "observation": np.asarray(obs, dtype=np.float32),
            "action_mask": np.asarray(mask, dtype=np.bool_),
        }
        action, scores = self.session.run(_OUTPUTS, feed)
        return action, scores


class Router:
    """Routes live states with a bundle's policy (see the module docstring).

    Args:
        bundle: a bundle folder or a loaded :class:`Bundle`.
        threads: ONNX Runtime intra-op threads.
    """

    def __init__(self, bundle: str | Path | Bundle, threads: int = 1) -> None:
        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle)
        self.live = self.bundle.live
        self.encoder = self.live.encoder
        self.model = ModelRunner(self.bundle, threads)
        self.labels = self.bundle.actions
        fb = self.bundle.manifest["fallback"]
        routes = self.live.routes
        try:
            self.fallback: Policy = make_policy(
                fb["policy"], routes, self.live.topology, **fb.get("params", {})
            )
        except Exception as exc:
            raise BundleError(
                f"{self.bundle.path}/manifest.json: fallback {fb.get('policy')!r}: {exc}"
            ) from exc
        self.fallback.reset(1)
        self._self_test()

    def replay_golden(self, lines: int | None = None) -> tuple[int, list[str], float]:
        """Route the bundle's golden states (the first ``lines``, or all): the number
        replayed, a message per line the model does not decide as recorded, and the largest
        difference between the router's observations and the recorded ones."""
        path = self.bundle.file("golden.jsonl")
        try:
            golden = [json.loads(t) for t in path.read_text().splitlines()[:lines] if t.strip()]
            states = [g["state"] for g in golden]
            want = [int(g["action"]) for g in golden]
            recorded = np.array([g["observation"] for g in golden], np.float32)
        except (ValueError, KeyError, TypeError) as exc:
            raise BundleError(f"{path}: unreadable golden line: {exc}") from exc
        if not golden:
            raise BundleError(f"{path}: no golden lines")
        try:
            got = self.decide_many(states)
            obs = self.live.parse(states).observation()
        except LiveStateError as exc:
            raise BundleError(f"{path}: {exc}") from exc
        wrong = [
            f"line {i + 1}: the router does not reproduce the recorded action {w} "
            f"({d.reason or f'action {d.action}'})"
            for i, (d, w) in enumerate(zip(got, want, strict=True))
            if d.source != "model" or d.action != w
        ]
        diff = float(np.abs(obs - recorded).max()) if recorded.shape == obs.shape else np.inf
        return len(golden), wrong, diff

    def _self_test(self, lines: int = 32) -> None:
        """Replay the first golden lines (BundleError unless the model decides each as
        recorded) and one state the fallback decides; this also warms both paths up, so
        the first real request does not pay for lazy initialisation."""
        _, wrong, _ = self.replay_golden(lines)
        if wrong:
            raise BundleError(f"{self.bundle.file('golden.jsonl')}: {wrong[0]}")
        self.decide({"request": {"input_tokens": 1024}})

    def act_view(
        self, view: Mapping[str, NDArray], mask: NDArray[np.bool_]
    ) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
        """The model's actions and scores on a batch of views (no fallback); the path
        ``evaluate.py --agent BUNDLE`` and the parity checks use."""
        return self.model.run(self.encoder.encode(view), mask)

    def decide(self, state: Mapping[str, Any]) -> Decision:
        """Route one live state (LiveStateError when it has no usable input length)."""
        return self.decide_many([state])[0]

    def decide_many(self, states: Sequence[Mapping[str, Any]]) -> list[Decision]:
        """Route a batch of live states in one model call."""
        parsed = self.live.parse(states)
        mask = parsed.mask
        reasons: list[str | None] = ["; ".join(p) if p else None for p in parsed.problems]
        chosen, score_rows, reasons = run_model(
            lambda: self.model.run(parsed.observation(), mask), reasons
        )
        return finish_decisions(
            self.labels, chosen, score_rows, reasons, mask, parsed.view, self.fallback
        )


def run_model(
    run: Callable[[], tuple[NDArray[np.int64], NDArray[np.float64]]], reasons: list[str | None]
) -> tuple[list[int], list[list[float]] | None, list[str | None]]:
    """``run()``'s actions and score rows as lists, with ``reasons``; if it raises (any
    runtime failure must still produce a decision), action 0, no scores and the failure as
    the reason of every decision that had none (the fallback then decides)."""
    try:
        actions, scores = run()
        return actions.tolist(), scores.tolist(), reasons
    except Exception as exc:
        failure = f"model failed: {type(exc).__name__}: {exc}"
        return [0] * len(reasons), None, [r or failure for r in reasons]


def finish_decisions(
    labels: Sequence[str],
    chosen: list[int],
    score_rows: list[list[float]] | None,
    reasons: list[str | None],
    mask: NDArray[np.bool_],
    view: Mapping[str, NDArray],
    fallback: Policy,
) -> list[Decision]:
    """The decisions of a batch: the model's choice where it had no problem (``reasons[i]``
    None) and chose an allowed action, else the ``fallback`` heuristic's on the view; action
    -1 (label ``none``) where nothing is allowed."""
    width = mask.shape[1]
    allowed = mask.tolist()
    for i, a in enumerate(chosen):
        if reasons[i] is not None:
            continue
        if not any(allowed[i]):
            reasons[i] = "no allowed action"
        elif not (0 <= a < width and allowed[i][a]):
            reasons[i] = f"model failed: chose forbidden action {a}"
    need = [i for i, r in enumerate(reasons) if r is not None and any(allowed[i])]
    if need:
        sub = {k: np.asarray(v)[need] for k, v in view.items()}
        try:
            picked = fallback.act(sub, mask[need]).tolist()
        except Exception as exc:  # a server fault, not the client's: say so plainly
            raise RuntimeError(f"fallback {fallback.name} failed: {exc}") from exc
        for i, a in zip(need, picked, strict=True):
            chosen[i] = a
    out = []
    for i, a in enumerate(chosen):
        if reasons[i] is None:
            rows = score_rows[i] if score_rows is not None else None
            out.append(Decision(a, labels[a], "model", None, rows))
        elif any(allowed[i]):
            out.append(Decision(a, labels[a], "fallback", reasons[i]))
        else:  # nothing can be chosen: say so rather than name a forbidden route
            out.append(Decision(-1, "none", "fallback", reasons[i]))
    return out


class BundlePolicy(Policy):
    """A bundle's model as a routing :class:`~prfaas_env.policies.Policy` on simulator views
    (``evaluate.py --agent BUNDLE``): the same encoder and ONNX graph a deployed router runs,
    with no fallback (simulator views are complete)."""

    def __init__(self, router: Router, routes: RouteTable, label: str) -> None:
        super().__init__(routes, router.live.topology)
        self.router = router
        self.name = label

    def act(self, view: Mapping[str, NDArray], mask: NDArray[np.bool_]) -> NDArray[np.int64]:
        full = self.router.live.mask(view)
        full[:, : mask.shape[1]] &= mask
        actions, _ = self.router.act_view(view, full)
        return np.asarray(actions, np.int64)
