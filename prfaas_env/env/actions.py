"""Checking the actions handed to ``step``: whole numbers naming an action, one per env."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray


def _allowed(labels: Sequence[str]) -> str:
    return (
        f"allowed: 0..{len(labels) - 1} ({', '.join(f'{i} = {x}' for i, x in enumerate(labels))})"
    )


def check_actions(actions: Any, num_envs: int, labels: Sequence[str]) -> NDArray[np.int64]:
    """``actions`` as an int64 array of shape ``(num_envs,)``, or ValueError naming the
    argument, the env, the value and the allowed actions.

    Accepted: one whole number per env in ``[0, len(labels))``, as integers or as floats
    without a fractional part (shape ``(num_envs,)``, or ``(num_envs, 1)``). Refused:
    fractions (1.5 is not truncated to 1), NaN, infinities, booleans, other shapes and
    values outside the range.
    """
    a = actions if type(actions) is np.ndarray else np.asarray(actions)
    if a.shape != (num_envs,):
        if a.shape == (num_envs, 1):
            a = a[:, 0]
        else:
            raise ValueError(
                f"actions: expected one action per env, shape ({num_envs},); got shape "
                f"{a.shape}: {_short(actions)}"
            )
    kind = a.dtype.kind
    if kind == "f":
        whole = np.isfinite(a) & (a == np.floor(a))
        if not whole.all():
            e = int(np.argmin(whole))
            raise ValueError(
                f"actions: env {e}: {a[e].item()!r} is not a whole number; {_allowed(labels)}"
            )
    elif kind not in "iu":
        raise ValueError(
            f"actions: expected whole numbers, got dtype {a.dtype}: {_short(actions)}; "
            f"{_allowed(labels)}"
        )
    if a.size and (a.min() < 0 or a.max() >= len(labels)):
        e = int(np.flatnonzero((a < 0) | (a >= len(labels)))[0])
        raise ValueError(f"actions: env {e}: {a[e].item()!r} is not an action; {_allowed(labels)}")
    return a.astype(np.int64, copy=False)


def check_action(action: Any, labels: Sequence[str]) -> int:
    """One action of a single env as an int, or ValueError (see :func:`check_actions`)."""
    if type(action) is int and 0 <= action < len(labels):
        return action
    a = np.asarray(action)
    if a.shape not in ((), (1,)):
        raise ValueError(
            f"action: expected one whole number, got shape {a.shape}: {_short(action)}; "
            f"{_allowed(labels)}"
        )
    try:
        return int(check_actions(a.reshape(1), 1, labels)[0])
    except ValueError as exc:
        msg = (
            str(exc).replace("actions: env 0: ", "action: ", 1).replace("actions: ", "action: ", 1)
        )
        raise ValueError(msg) from None


def _short(x: Any) -> str:
    text = repr(x)
    return text if len(text) <= 60 else text[:60] + "..."
