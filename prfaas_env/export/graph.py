"""A trained policy as one self-contained torch module, and its ONNX and TorchScript files.

:class:`PolicyGraph` takes what a router has at hand, the encoder's observation vector (before
normalisation) and the action mask, and returns the greedy action and the raw scores:

    inputs   observation  float32 [batch, features]   ObservationEncoder output
             action_mask  bool    [batch, actions]    True where the action is allowed
    outputs  action       int64   [batch]             argmax of the allowed scores
             scores       float32 [batch, actions]    log-probabilities (PPO, MaskablePPO)
                                                      or Q-values (DQN), before masking

The training run's observation normalisation ``clip((x - mean) / sqrt(var + eps), -c, c)`` is
folded into the graph, so hosts feed encoder output directly. A row whose mask allows nothing
returns action 0; routers check the mask before trusting the action.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from prfaas_env.export.policy import SCORE_KINDS, Normalizer

ONNX_OPSET = 17
INPUT_NAMES = ("observation", "action_mask")
OUTPUT_NAMES = ("action", "scores")


class PolicyGraph(nn.Module):
    """Normalisation + the policy's scoring network + masked argmax (see the module docstring).

    Args:
        scoring: a torch module mapping normalised observations to scores
            (:meth:`prfaas_env.export.policy.TrainedPolicy.scoring_module`).
        normalizer: the observation normaliser (``mean`` None: identity).
        size: observation features.
        score_kind: ``"log_probabilities"`` or ``"q_values"`` (recorded in the manifest).
        dict_observation: the policy reads the ``{"observation", "action_mask"}`` form.
    """

    def __init__(
        self,
        scoring: nn.Module,
        normalizer: Normalizer,
        size: int,
        score_kind: str,
        dict_observation: bool,
    ) -> None:
        super().__init__()
        if score_kind not in SCORE_KINDS:
            raise ValueError(f"score_kind: {score_kind!r}; allowed: {', '.join(SCORE_KINDS)}")
        mean, var = normalizer.mean, normalizer.var
        m = np.zeros(size) if mean is None else np.asarray(mean, np.float64)
        s = (
            np.ones(size)
            if var is None
            else np.sqrt(np.asarray(var, np.float64) + normalizer.epsilon)
        )
        if m.shape != (size,) or s.shape != (size,):
            raise ValueError(
                f"normalizer: statistics of shape {m.shape} for {size} observation features"
            )
        self.register_buffer("mean", torch.as_tensor(m, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(s, dtype=torch.float32))
        self.clip = float(normalizer.clip) if mean is not None else float("inf")
        self.dict_observation = dict_observation
        self.scoring = scoring.cpu().eval()
        self.score_kind = score_kind
        self.size = size

    def forward(
        self, observation: torch.Tensor, action_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        z = (observation - self.mean) / self.std
        if self.clip != float("inf"):
            z = torch.clamp(z, -self.clip, self.clip)
        x: Any = (
            {"observation": z, "action_mask": action_mask.float()} if self.dict_observation else z
        )
        scores = self.scoring(x)
        allowed = torch.where(action_mask, scores, torch.full_like(scores, float("-inf")))
        return torch.argmax(allowed, dim=1), scores


def _example(graph: PolicyGraph, actions: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.zeros(2, graph.size), torch.ones(2, actions, dtype=torch.bool)


def write_onnx(graph: PolicyGraph, actions: int, path: Path) -> None:
    """Export ``graph`` to ONNX (opset :data:`ONNX_OPSET`, float32, dynamic batch) at ``path``
    with torch's exporter, quietly; raises RuntimeError if the file is not at that opset."""
    batch = torch.export.Dim("batch", min=1)
    export_onnx(
        graph,
        _example(graph, actions),
        path,
        list(INPUT_NAMES),
        list(OUTPUT_NAMES),
        ({0: batch}, {0: batch}),
    )


def export_onnx(
    module: torch.nn.Module,
    example: tuple[torch.Tensor, ...],
    path: Path,
    inputs: list[str],
    outputs: list[str],
    dynamic_shapes: tuple[dict[int, Any], ...],
) -> None:
    """``module`` (in eval mode) as ONNX at ``path`` with torch's exporter, quietly, checked
    by ONNX's checker; RuntimeError if the file is above opset :data:`ONNX_OPSET`."""
    import onnx

    with (
        warnings.catch_warnings(),
        contextlib.redirect_stdout(io.StringIO()),
        _quiet("torch.onnx", "torch.export", "onnxscript"),
    ):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(),
            example,
            str(path),
            input_names=inputs,
            output_names=outputs,
            opset_version=ONNX_OPSET,
            dynamo=True,
            dynamic_shapes=dynamic_shapes,
            external_data=False,
            verbose=False,
        )
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    opsets = {o.domain or "ai.onnx": o.version for o in proto.opset_import}
    if opsets.get("ai.onnx", 0) > ONNX_OPSET:
        raise RuntimeError(f"{path}: exported at opset {opsets['ai.onnx']} > {ONNX_OPSET}")


def write_torchscript(graph: PolicyGraph, actions: int, path: Path) -> None:
    """Trace ``graph`` to TorchScript at ``path`` (no data-dependent control flow, so a trace
    is the whole function)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(graph, _example(graph, actions), check_trace=False)
        torch.jit.save(traced, str(path))


@contextlib.contextmanager
def _quiet(*names: str) -> Any:
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, lv in zip(loggers, levels, strict=True):
            lg.setLevel(lv)
