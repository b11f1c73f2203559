"""The cost-model command line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from prfaas_env.costmodel.__main__ import main

ARGS = [
    "--gpu",
    "h200",
    "--model",
    "prfaas-1t-hybrid",
    "--gpus-per-instance",
    "8",
    "--tokens",
    "1024,8192,32768,131072",
]


def test_json_records(capsys):
    assert main([*ARGS, "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [r["tokens"] for r in records] == [1024, 8192, 32768, 131072]
    for r in records:
        assert {"tokens", "prefill_time_s", "kv_bytes"} <= set(r)
        assert r["prefill_time_s"] > 0 and r["kv_bytes"] > 0
    assert abs(records[-1]["prefill_time_s"] / 7.40 - 1) < 0.10


def test_table_output(capsys):
    assert main(ARGS) == 0
    out = capsys.readouterr().out
    assert "prefill s" in out and "KV MiB" in out and "KV Gbps" in out and "decode ms @64" in out
    assert "measured: arXiv 2604.15039 Table 5" in out


def test_unknown_gpu_exit_code_and_message(capsys):
    assert main(["--gpu", "h900", "--model", "prfaas-1t-hybrid"]) == 2
    err = capsys.readouterr().err
    assert "unknown GPU 'h900'" in err and "h20" in err


def test_bad_tokens_flag():
    with pytest.raises(SystemExit, match="--tokens"):
        main(["--gpu", "h20", "--model", "kimi-k2", "--tokens", "12,abc"])


def test_module_entry_point_runs():
    res = subprocess.run(
        [sys.executable, "-m", "prfaas_env.costmodel", *ARGS, "--json"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert len(json.loads(res.stdout)) == 4
