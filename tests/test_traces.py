"""Trace readers: shipped Mooncake traces, windows, Azure CSV, bad input, JSONL round trip."""

from __future__ import annotations

import gzip
import json
import math
import re
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from prfaas_env.errors import ConfigError
from prfaas_env.sim.traces import (
    BLOCK_TOKENS,
    Trace,
    TraceWarning,
    load_azure_csv,
    load_mooncake_jsonl,
    load_trace,
    shipped_traces,
)

SHARED_TRACES = Path(__file__).resolve().parents[2] / "shared" / "data" / "traces" / "mooncake"
DATA_DIR = Path(__file__).resolve().parents[1] / "prfaas_env" / "traces" / "data"

# Measured on the shipped files: rows, last arrival (s), mean input and output tokens.
SHIPPED = {
    "mooncake-conversation": ("mooncake_conversation.jsonl.gz", 12_031, 3536.999, 12035.06, 342.62),
    "mooncake-synthetic": ("mooncake_synthetic.jsonl.gz", 3_993, 1022.025, 15325.48, 149.12),
}
SOURCE_FILES = {
    "mooncake_conversation.jsonl.gz": "conversation_trace.jsonl",
    "mooncake_synthetic.jsonl.gz": "synthetic_trace.jsonl",
}


@pytest.fixture(scope="module")
def conversation() -> Trace:
    return load_trace("mooncake-conversation")


@pytest.fixture(scope="module")
def synthetic() -> Trace:
    return load_trace("mooncake-synthetic")


def row(ts: float, n_in: int = 100, n_out: int = 10, ids: list[int] | None = None) -> dict:
    """A valid Mooncake row (hash ids default to 0, 1, ... of the right length)."""
    need = -(-n_in // BLOCK_TOKENS)
    return {
        "timestamp": ts,
        "input_length": n_in,
        "output_length": n_out,
        "hash_ids": list(range(need)) if ids is None else ids,
    }


def write_lines(path: Path, lines: list[str | bytes]) -> Path:
    data = b"".join((ln if isinstance(ln, bytes) else ln.encode()) + b"\n" for ln in lines)
    path.write_bytes(data)
    return path


def at(path: Path, line: int) -> str:
    """Regex matching the ``path:line: `` prefix of a line error."""
    return re.escape(f"{path}:{line}: ")


# --- shipped traces ---------------------------------------------------------------------------


def test_shipped_names():
    assert shipped_traces() == sorted(SHIPPED)


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_trace_loads(name, conversation, synthetic):
    trace = conversation if name == "mooncake-conversation" else synthetic
    file_name, rows, last_s, mean_in, mean_out = SHIPPED[name]
    assert len(trace) == rows
    assert trace.name == name and trace.source == name
    assert trace.skipped == 0 and trace.block_tokens == 512 and trace.has_prefix_info
    assert trace.arrival_s.dtype == np.float64 and trace.input_tokens.dtype == np.int64
    assert trace.arrival_s[0] == 0.0 and np.all(np.diff(trace.arrival_s) >= 0)
    assert trace.duration_s == pytest.approx(last_s)
    assert trace.input_tokens.mean() == pytest.approx(mean_in, abs=0.01)
    assert trace.output_tokens.mean() == pytest.approx(mean_out, abs=0.01)
    assert trace.input_tokens.min() >= 1 and trace.output_tokens.min() >= 1

    with gzip.open(DATA_DIR / file_name, "rt", encoding="utf-8") as fh:
        first = json.loads(fh.readline())
    assert trace.input_tokens[0] == first["input_length"]
    assert trace.output_tokens[0] == first["output_length"]
    assert trace.blocks(0).tolist() == first["hash_ids"]

    off = trace.block_offsets
    assert off.shape == (rows + 1,) and off[0] == 0 and off[-1] == trace.block_ids.size
    expected = (trace.input_tokens + BLOCK_TOKENS - 1) // BLOCK_TOKENS
    assert np.array_equal(np.diff(off), expected)
    assert [len(trace.blocks(i)) for i in (0, rows // 2, -1)] == [
        expected[0],
        expected[rows // 2],
        expected[-1],
    ]


def test_shipped_spans(conversation, synthetic):
    assert 58 * 60 < conversation.duration_s < 60 * 60
    assert 16.5 * 60 < synthetic.duration_s < 17.5 * 60


@pytest.mark.skipif(not SHARED_TRACES.is_dir(), reason="source traces not available")
@pytest.mark.parametrize("shipped", sorted(SOURCE_FILES))
def test_shipped_copy_is_byte_identical(shipped):
    with gzip.open(DATA_DIR / shipped, "rb") as fh:
        assert fh.read() == (SHARED_TRACES / SOURCE_FILES[shipped]).read_bytes()
    assert (DATA_DIR / "LICENSE-APACHE").read_bytes() == (
        SHARED_TRACES / "LICENSE-APACHE"
    ).read_bytes()


def test_shipped_trace_loads_by_path_and_format():
    path = DATA_DIR / "mooncake_synthetic.jsonl.gz"
    trace = load_trace(path)
    assert len(trace) == 3_993 and trace.name == "mooncake_synthetic"
    assert trace.source == str(path)
    with pytest.raises(ConfigError, match="in mooncake format, not azure"):
        load_trace("mooncake-synthetic", format="azure")


# --- window -----------------------------------------------------------------------------------


def test_window_counts_and_rebasing(conversation):
    t = conversation.arrival_s
    w = conversation.window(600, 1200)
    inside = (t >= 600) & (t < 1200)
    assert len(w) == int(inside.sum())
    assert w.name == "mooncake-conversation[600s,1200s)"
    assert np.allclose(w.arrival_s, t[inside] - 600)
    assert w.arrival_s[0] >= 0 and w.arrival_s[-1] < 600
    first = int(np.argmax(inside))
    assert np.array_equal(w.input_tokens, conversation.input_tokens[inside])
    assert np.array_equal(w.blocks(0), conversation.blocks(first))
    assert np.array_equal(w.blocks(len(w) - 1), conversation.blocks(first + len(w) - 1))
    assert w.block_offsets[0] == 0 and w.block_offsets[-1] == w.block_ids.size

    rest = conversation.window(2400)
    assert len(rest) == int((t >= 2400).sum()) and rest.name.endswith("[2400s,end)")
    assert len(conversation.window(0, 2400)) + len(rest) == len(conversation)
    assert conversation.window(0).arrival_s.tolist() == t.tolist()


def test_window_keeps_leading_gap(tmp_path):
    p = write_lines(tmp_path / "t.jsonl", [json.dumps(row(ts)) for ts in (0, 5000, 7000)])
    w = load_mooncake_jsonl(p).window(1.0, 6.0)
    assert w.arrival_s.tolist() == [4.0] and w.duration_s == 0.0


def test_window_errors(conversation):
    with pytest.raises(ConfigError, match=r"no requests arrive in window \[4000s,5000s\)"):
        conversation.window(4000, 5000)
    with pytest.raises(ConfigError, match="start_s must be >= 0"):
        conversation.window(-1, 10)
    with pytest.raises(ConfigError, match="end_s must be > start_s"):
        conversation.window(10, 10)
    with pytest.raises(ConfigError, match="end_s must be > start_s"):
        conversation.window(10, 5)


def test_blocks_index_errors(synthetic):
    assert np.array_equal(synthetic.blocks(-1), synthetic.blocks(len(synthetic) - 1))
    with pytest.raises(IndexError):
        synthetic.blocks(len(synthetic))


# --- Mooncake bad input -----------------------------------------------------------------------

GOOD = json.dumps(row(0, 1000, 20))
BAD_LINES = [
    ("not json", "not valid JSON"),
    ("[1, 2]", "expected a JSON object, got list"),
    ('"text"', "expected a JSON object, got str"),
    (
        '{"timestamp": 5, "input_length": 10, "output_length": 2}',
        r"missing field\(s\) hash_ids; required: timestamp, input_length, output_length, hash_ids",
    ),
    (
        json.dumps(row(5) | {"input_length": "10"}),
        "input_length must be a positive integer, got '10'",
    ),
    (
        json.dumps(row(5) | {"input_length": True}),
        "input_length must be a positive integer, got True",
    ),
    (
        json.dumps(row(5) | {"input_length": 10.0}),
        "input_length must be a positive integer, got 10.0",
    ),
    (json.dumps(row(5) | {"input_length": 0}), "input_length must be a positive integer, got 0"),
    (json.dumps(row(5) | {"input_length": -5}), "input_length must be a positive integer, got -5"),
    (json.dumps(row(5) | {"input_length": 10**30}), "input_length must be a positive integer"),
    (json.dumps(row(5, n_out=0)), "output_length must be a positive integer, got 0"),
    (json.dumps(row(5, n_out=-1)), "output_length must be a positive integer, got -1"),
    (json.dumps(row(5) | {"output_length": None}), "output_length must be a positive integer"),
    (json.dumps(row(5, ids="abc")), "hash_ids must be a list of integers, got str"),
    (json.dumps(row(5, ids=["a"])), r"hash_ids\[0\] must be an integer, got 'a'"),
    (json.dumps(row(5, 600, ids=[1, True])), r"hash_ids\[1\] must be an integer, got True"),
    (json.dumps(row(5, ids=[1.5])), r"hash_ids\[0\] must be an integer, got 1.5"),
    (json.dumps(row(5, ids=[2**70])), "hash_ids must fit in a signed 64-bit integer"),
    (
        json.dumps(row(5, 1000, ids=[1, 2, 3])),
        r"hash_ids has 3 entries but input_length 1000 needs ceil\(1000/512\) = 2",
    ),
    (json.dumps(row(5, 10, ids=[])), r"hash_ids has 0 entries"),
    (json.dumps(row(-1)), "timestamp must be a finite number >= 0"),
    (json.dumps(row(math.nan)), "timestamp must be a finite number >= 0 .*got nan"),
    (json.dumps(row(math.inf)), "timestamp must be a finite number >= 0 .*got inf"),
    (GOOD.replace('"timestamp": 0', '"timestamp": 1e400'), "timestamp must be a finite number"),
    (json.dumps(row("5")), "timestamp must be a finite number >= 0 .*got '5'"),
    (json.dumps(row(False)), "timestamp must be a finite number >= 0 .*got False"),
    (b'{"timestamp": 0, "x": "\xff"}', "not valid UTF-8"),
]


@pytest.mark.parametrize(("bad", "message"), BAD_LINES)
def test_mooncake_bad_line_raises_with_path_and_line(tmp_path, bad, message):
    p = write_lines(tmp_path / "bad.jsonl", [GOOD, "", bad, GOOD])
    with pytest.raises(ConfigError, match=at(p, 3) + message):
        load_mooncake_jsonl(p)


@pytest.mark.parametrize(("bad", "message"), BAD_LINES)
def test_mooncake_bad_line_skipped(tmp_path, bad, message):
    p = write_lines(tmp_path / "bad.jsonl", [GOOD, "", bad, "   ", GOOD])
    with pytest.warns(TraceWarning, match=re.escape(f"{p}: skipped 1 malformed line(s)")):
        trace = load_trace(p, on_error="skip")
    assert len(trace) == 2 and trace.skipped == 1
    assert trace.input_tokens.tolist() == [1000, 1000]


def test_skip_counts_several_lines_and_warns_once(tmp_path):
    p = write_lines(tmp_path / "t.jsonl", [GOOD, "x", json.dumps(row(1, n_out=0)), "[]", GOOD])
    with pytest.warns(TraceWarning) as record:
        trace = load_mooncake_jsonl(p, on_error="skip")
    assert trace.skipped == 3 and len(trace) == 2
    assert len(record) == 1
    assert "skipped 3 malformed line(s) (first line 2: not valid JSON" in str(record[0].message)


def test_no_valid_rows(tmp_path):
    p = write_lines(tmp_path / "t.jsonl", ["x", json.dumps(row(1, n_out=0))])
    with pytest.raises(ConfigError, match=re.escape(f"{p}: no valid requests (2 malformed")):
        load_mooncake_jsonl(p, on_error="skip")


@pytest.mark.parametrize("content", [b"", b"\n\n  \n", b"\xef\xbb\xbf"])
def test_empty_file(tmp_path, content):
    p = tmp_path / "empty.jsonl"
    p.write_bytes(content)
    with pytest.raises(ConfigError, match=re.escape(f"{p}: no requests (the file is empty)")):
        load_mooncake_jsonl(p)
    with pytest.raises(ConfigError, match=re.escape(f"{p}: no requests")):
        load_azure_csv(p)


def test_missing_file_and_not_a_file(tmp_path):
    p = tmp_path / "nope.jsonl"
    for load in (load_mooncake_jsonl, load_azure_csv, load_trace):
        with pytest.raises(ConfigError, match=re.escape(f"{p}: file not found")):
            load(p)
    with pytest.raises(ConfigError, match="shipped traces: mooncake-conversation, mooncake-syn"):
        load_trace(p)
    with pytest.raises(ConfigError, match=re.escape(f"{tmp_path}: not a file")):
        load_mooncake_jsonl(tmp_path)


def test_unknown_shipped_name():
    with pytest.raises(ConfigError, match=r"mooncake-chat: file not found.*shipped traces: moon"):
        load_trace("mooncake-chat")


def test_bad_options(tmp_path):
    p = write_lines(tmp_path / "t.jsonl", [GOOD])
    with pytest.raises(ConfigError, match="on_error must be one of raise, skip; got 'ignore'"):
        load_mooncake_jsonl(p, on_error="ignore")
    with pytest.raises(ConfigError, match="unsorted must be one of raise, sort; got 'keep'"):
        load_azure_csv(p, unsorted="keep")
    with pytest.raises(ConfigError, match="on_error must be one of raise, skip"):
        load_trace(p, on_error="warn")
    with pytest.raises(ConfigError, match="format must be one of azure, mooncake; got 'csv'"):
        load_trace(p, format="csv")
    with pytest.raises(ConfigError, match="block_tokens must be a positive integer, got 0"):
        load_mooncake_jsonl(p, block_tokens=0)


def test_format_detection(tmp_path):
    p = write_lines(tmp_path / "trace.txt", [GOOD])
    with pytest.raises(
        ConfigError,
        match=re.escape(f"{p}: cannot tell the trace format") + ".*"
        "pass format= one of azure, mooncake",
    ):
        load_trace(p)
    assert len(load_trace(p, format="mooncake")) == 1
    gz = tmp_path / "trace.JSONL.GZ"
    gz.write_bytes(gzip.compress(p.read_bytes()))
    assert len(load_trace(gz)) == 1


def test_unsorted_raise_names_line(tmp_path):
    p = write_lines(tmp_path / "t.jsonl", [json.dumps(row(ts)) for ts in (0, 10, 10, 5, 3)])
    with pytest.raises(ConfigError, match=at(p, 4) + "timestamp 5 is earlier than 10 on line 3"):
        load_mooncake_jsonl(p)


def test_unsorted_sort_is_stable_and_moves_blocks(tmp_path):
    rows = [
        row(3000, 600, 1, [30, 31]),
        row(1000, 100, 2, [10]),
        row(2000, 1100, 3, [20, 21, 22]),
        row(1000, 100, 4, [11]),
    ]
    p = write_lines(tmp_path / "t.jsonl", [json.dumps(r) for r in rows])
    trace = load_mooncake_jsonl(p, unsorted="sort")
    assert trace.arrival_s.tolist() == [0.0, 0.0, 1.0, 2.0]
    assert trace.output_tokens.tolist() == [2, 4, 3, 1]
    assert [trace.blocks(i).tolist() for i in range(4)] == [[10], [11], [20, 21, 22], [30, 31]]
    assert trace.input_tokens.tolist() == [100, 100, 1100, 600]


def test_gzip_bom_crlf_and_truncated_gzip(tmp_path):
    lines = [json.dumps(row(ts, 700, 3)) for ts in (100, 250)]
    data = ("\ufeff" + "\r\n".join(lines) + "\r\n").encode()
    gz = tmp_path / "t.jsonl.gz"
    gz.write_bytes(gzip.compress(data))
    trace = load_mooncake_jsonl(gz)
    assert trace.arrival_s.tolist() == [0.0, 0.15] and trace.name == "t"
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(gz.read_bytes()[:-12])
    with pytest.raises(ConfigError, match=re.escape(str(cut)) + ".*corrupt or truncated"):
        load_mooncake_jsonl(cut)


def test_extra_fields_ignored_and_float_timestamps(tmp_path):
    p = write_lines(tmp_path / "t.jsonl", [json.dumps(row(1.5) | {"x": 1}), json.dumps(row(4))])
    assert load_mooncake_jsonl(p, name="mine").arrival_s.tolist() == [0.0, 0.0025]


def test_trace_constructor_checks_invariants():
    ok = dict(
        name="t",
        arrival_s=[0.0, 1.0],
        input_tokens=[1, 2],
        output_tokens=[1, 1],
        block_offsets=[0, 1, 2],
        block_ids=[5, 6],
        block_tokens=512,
    )
    assert len(Trace(**ok)) == 2
    for key, value, message in [
        ("arrival_s", [1.0, 0.0], "non-decreasing"),
        ("input_tokens", [0, 2], ">= 1"),
        ("block_offsets", [0, 1], "n \\+ 1"),
        ("block_offsets", [0, 3, 2], "non-decreasing"),
        ("block_tokens", 0, "positive integer"),
    ]:
        with pytest.raises(ConfigError, match=message):
            Trace(**(ok | {key: value}))


# --- Azure CSV --------------------------------------------------------------------------------

AZURE_HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens"


def test_azure_bom_fractions_and_relative_times(tmp_path):
    lines = [
        AZURE_HEADER,
        "2023-11-16 23:59:58.6805900,4808,10",
        "2023-11-16 23:59:58.6805901,3180,8",
        "",
        "2023-11-16 23:59:59,110,27",
        "2023-11-17 00:00:01.25,7433,1",
    ]
    p = tmp_path / "code.csv"
    p.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode() + b"\r\n")
    trace = load_trace(p)
    assert trace.name == "code" and trace.source == str(p)
    assert np.allclose(trace.arrival_s, [0.0, 1e-7, 0.31941, 2.56941], rtol=0, atol=1e-9)
    assert trace.arrival_s[1] > 0
    assert trace.input_tokens.tolist() == [4808, 3180, 110, 7433]
    assert trace.output_tokens.tolist() == [10, 8, 27, 1]
    assert not trace.has_prefix_info and trace.block_ids.size == 0
    assert trace.block_offsets.tolist() == [0] * 5 and trace.blocks(2).size == 0

    gz = tmp_path / "code.csv.gz"
    gz.write_bytes(gzip.compress(p.read_bytes()))
    assert np.array_equal(load_trace(gz).arrival_s, trace.arrival_s)


AZURE_ROW = "2023-11-16 18:15:46.6805900,100,10"
AZURE_BAD = [
    ("2023-11-16 18:15:47.1,5", r"expected 3 columns \(TIMESTAMP,ContextTokens,GeneratedTokens\)"),
    ("2023-11-16 18:15:47.1,5,5,5", "expected 3 columns .*got 4"),
    ("yesterday,5,5", "TIMESTAMP must look like 2023-11-16 18:15:46.6805900, got 'yesterday'"),
    ("2023-11-16 18:15:47.12a,5,5", "TIMESTAMP must look like"),
    ("2023-11-16 25:15:47.1,5,5", "TIMESTAMP must look like"),
    ("2023-11-16 18:15:47+01:00,5,5", "TIMESTAMP must look like"),
    ("2023-11-16 18:15:47.1,five,5", "ContextTokens must be a positive integer, got 'five'"),
    ("2023-11-16 18:15:47.1,5.0,5", "ContextTokens must be a positive integer, got '5.0'"),
    ("2023-11-16 18:15:47.1,-3,5", "ContextTokens must be a positive integer, got '-3'"),
    ("2023-11-16 18:15:47.1,5,0", "GeneratedTokens must be a positive integer, got '0'"),
    ("2023-11-16 18:15:47.1,5,", "GeneratedTokens must be a positive integer, got ''"),
]


@pytest.mark.parametrize(("bad", "message"), AZURE_BAD)
def test_azure_bad_row(tmp_path, bad, message):
    p = write_lines(tmp_path / "t.csv", [AZURE_HEADER, AZURE_ROW, bad, AZURE_ROW])
    with pytest.raises(ConfigError, match=at(p, 3) + message):
        load_azure_csv(p)
    with pytest.warns(TraceWarning, match="skipped 1 malformed"):
        trace = load_azure_csv(p, on_error="skip")
    assert trace.skipped == 1 and len(trace) == 2


@pytest.mark.parametrize(
    "first", [AZURE_ROW, "TIMESTAMP,Context,Generated", "TIMESTAMP,ContextTokens"]
)
def test_azure_header_required(tmp_path, first):
    p = write_lines(tmp_path / "t.csv", ["", first, AZURE_ROW])
    match = at(p, 2) + "expected the header TIMESTAMP,ContextTokens,GeneratedTokens, got"
    for on_error in ("raise", "skip"):
        with pytest.raises(ConfigError, match=match):
            load_azure_csv(p, on_error=on_error)


def test_azure_header_only(tmp_path):
    p = write_lines(tmp_path / "t.csv", [AZURE_HEADER])
    with pytest.raises(ConfigError, match=re.escape(f"{p}: no requests")):
        load_azure_csv(p)


def test_azure_unsorted(tmp_path):
    lines = [AZURE_HEADER, "2023-11-16 18:00:02.5,1,1", "2023-11-16 18:00:01.0,2,2"]
    p = write_lines(tmp_path / "t.csv", lines)
    with pytest.raises(ConfigError, match=at(p, 3) + "timestamp '2023-11-16 18:00:01.0' is earl"):
        load_azure_csv(p)
    trace = load_azure_csv(p, unsorted="sort")
    assert trace.arrival_s.tolist() == [0.0, 1.5] and trace.input_tokens.tolist() == [2, 1]


# --- properties -------------------------------------------------------------------------------


@st.composite
def mooncake_rows(draw) -> list[dict]:
    n = draw(st.integers(1, 25))
    t = draw(st.integers(0, 10**9))
    rows = []
    for _ in range(n):
        t += draw(st.integers(0, 5_000))
        n_in = draw(st.integers(1, 4_000))
        need = -(-n_in // BLOCK_TOKENS)
        ids = draw(st.lists(st.integers(-(2**63), 2**63 - 1), min_size=need, max_size=need))
        rows.append(row(t, n_in, draw(st.integers(1, 4_000)), ids))
    return rows


@given(rows=mooncake_rows(), compress=st.booleans())
def test_jsonl_round_trip(rows, compress):
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / ("t.jsonl.gz" if compress else "t.jsonl")
        p.write_bytes(gzip.compress(data) if compress else data)
        trace = load_trace(p)
    ts = np.array([r["timestamp"] for r in rows], dtype=np.float64)
    assert np.array_equal(trace.arrival_s, (ts - ts[0]) / 1000.0)
    assert trace.input_tokens.tolist() == [r["input_length"] for r in rows]
    assert trace.output_tokens.tolist() == [r["output_length"] for r in rows]
    assert [trace.blocks(i).tolist() for i in range(len(trace))] == [r["hash_ids"] for r in rows]
    assert trace.block_ids.tolist() == [h for r in rows for h in r["hash_ids"]]


@given(cut=st.floats(0.0, 1100.0, exclude_min=True))
def test_windows_partition_the_trace(synthetic, cut):
    t = synthetic.arrival_s
    n_head = int((t < cut).sum())
    if n_head == 0 or n_head == len(synthetic):
        return
    head, tail = synthetic.window(0.0, cut), synthetic.window(cut)
    assert len(head) + len(tail) == len(synthetic)
    assert np.array_equal(np.concatenate([head.block_ids, tail.block_ids]), synthetic.block_ids)
    assert np.allclose(np.concatenate([head.arrival_s, tail.arrival_s + cut]), t)
