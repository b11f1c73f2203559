"""evaluate.py: outputs, intervals, and refusals of bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from prfaas_env.evaluation import interval
from prfaas_env.sim.engine import RESULT_METRICS

ROOT = Path(__file__).resolve().parents[1]


def _main():  # evaluate.py is a script at the repository root
    import importlib.util

    spec = importlib.util.spec_from_file_location("evaluate_cli", ROOT / "evaluate.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


def test_evaluate_writes_results_for_every_policy_and_seed(tmp_path: Path, capsys) -> None:
    out = tmp_path / "eval"
    code = _main()(
        [
            "--policies",
            "prfaas_threshold,always_local",
            "--seeds",
            "2",
            "--decisions",
            "60",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0
    recs = json.loads((out / "results.json").read_text())
    assert [(r["policy"], r["seed"]) for r in recs] == [
        ("prfaas_threshold", 0),
        ("prfaas_threshold", 1),
        ("always_local", 0),
        ("always_local", 1),
    ]
    keys = set(RESULT_METRICS)
    assert keys <= set(recs[0])
    assert recs[0]["offload_fraction"] > 0 and recs[2]["offload_fraction"] == 0
    assert (out / "results.csv").read_text().count("\n") == 5
    assert (out / "ttft_cdf.png").stat().st_size > 1000
    assert "prfaas_threshold" in capsys.readouterr().out


def test_evaluate_refuses_bad_input(tmp_path: Path, capsys) -> None:
    main = _main()
    assert main(["--policies", "oracle", "--no-progress"]) == 2
    assert "known policies: " in capsys.readouterr().err
    tmp_path.mkdir(exist_ok=True)
    assert main(["--policies", "random", "--out", str(tmp_path), "--no-progress"]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["--config", "nowhere.yaml", "--no-progress"]) == 2
    assert "shipped configs" in capsys.readouterr().err


def test_interval_uses_student_t() -> None:
    mean, half = interval(np.array([1.0, 2.0, 3.0]))
    assert mean == 2.0 and half == pytest.approx(4.303 * 1.0 / math.sqrt(3))
    assert interval(np.array([5.0])) == (5.0, 0.0)
    assert math.isnan(interval(np.array([np.nan]))[0])


def test_router_parameters_come_from_the_config(tmp_path: Path, capsys) -> None:
    import yaml

    d = yaml.safe_load((ROOT / "configs" / "paper_prfaas.yaml").read_text())
    d["policies"] = {"prfaas_threshold": {"threshold_tokens": 1, "cache_rule": "scarce"}}
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(d))
    out = tmp_path / "o"
    args = [
        "--config",
        str(cfg),
        "--policies",
        "prfaas_threshold",
        "--seeds",
        "1",
        "--decisions",
        "30",
        "--out",
        str(out),
        "--no-progress",
    ]
    assert _main()(args) == 0
    rec = json.loads((out / "results.json").read_text())[0]
    assert rec["offload_fraction"] == 1.0  # t = 1 token: everything offloads
    d["policies"] = {"prfaas_threshold": {"threshhold": 5}}
    cfg.write_text(yaml.safe_dump(d))
    assert _main()([*args, "--force"]) == 2
    err = capsys.readouterr().err
    assert "policies.prfaas_threshold" in err and "threshhold" in err
