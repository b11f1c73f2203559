"""GPU and model catalogs: shipped entries, derived quantities, user files, bad input."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest

from prfaas_env.architecture import get_model, model_names, register_models
from prfaas_env.errors import ConfigError, UnknownNameError
from prfaas_env.hardware import get_gpu, gpu_names, register_gpus

MIB = 2**20
# arXiv 2604.15039 Table 5: prompt tokens -> KV cache MiB (prfaas-1t-hybrid)
TABLE5_KV_MIB = {1024: 190.8, 8192: 308.9, 32768: 701.3, 131072: 2316.3}


def test_required_gpus_present_with_sources():
    for name in ("h100-sxm", "h200-sxm", "h20", "b200", "a100-80gb", "l40s"):
        g = get_gpu(name)
        assert g.bf16_tflops > 0 and g.hbm_gb > 0 and g.hbm_bandwidth_tbps > 0
        assert g.nvlink_gbps > 0 and g.nic_gbps > 0
        assert g.source.strip()


def test_gpu_aliases_and_case():
    assert get_gpu("h200").name == "h200-sxm"
    assert get_gpu("H100").name == "h100-sxm"


def test_h20_spec_sheet_figures():
    g = get_gpu("h20")
    assert (g.bf16_tflops, g.fp8_tflops, g.hbm_gb, g.hbm_bandwidth_tbps) == (148, 296, 96, 4.0)


def test_unknown_gpu_lists_known_names():
    with pytest.raises(UnknownNameError) as exc:
        get_gpu("h900")
    msg = str(exc.value)
    assert "h900" in msg
    for name in gpu_names():
        assert name in msg


def test_unknown_model_lists_known_names():
    with pytest.raises(UnknownNameError) as exc:
        get_model("gpt-5")
    for name in model_names():
        assert name in str(exc.value)


@pytest.mark.parametrize("name", [n for n in model_names() if get_model(n).published_total_b])
def test_parameter_counts_match_published(name):
    m = get_model(name)
    assert m.total_params / 1e9 == pytest.approx(m.published_total_b, rel=0.05)
    if m.published_active_b:
        assert m.active_params / 1e9 == pytest.approx(m.published_active_b, rel=0.20)


def test_required_architectures_present():
    kinds = {n: {g.attention.type for g in get_model(n).groups} for n in model_names()}
    assert kinds["llama-3.1-70b"] == {"gqa"}
    assert kinds["deepseek-v3"] == {"mla"} and kinds["kimi-k2"] == {"mla"}
    assert kinds["kimi-linear-48b-a3b"] == {"mla", "linear"}
    assert kinds["prfaas-1t-hybrid"] == {"mla", "linear"}


def test_kv_per_token_from_architecture():
    # Llama 70B: 80 layers x (K and V) x 8 KV heads x 128 dims x 2 bytes
    assert get_model("llama-3.1-70b").kv_bytes_per_token == 80 * 2 * 8 * 128 * 2
    # DeepSeek-V3 MLA: 61 layers x (512 latent + 64 rope) x 2 bytes, no per-request state
    ds = get_model("deepseek-v3")
    assert ds.kv_bytes_per_token == 61 * 576 * 2 and ds.state_bytes_per_request == 0
    # Kimi Linear: only its 7 MLA layers grow with tokens; 20 KDA layers keep 32x128x128 fp32
    kl = get_model("kimi-linear-48b-a3b")
    assert kl.kv_bytes_per_token == 7 * 576 * 2
    assert kl.state_bytes_per_request == 20 * 32 * 128 * 128 * 4


@pytest.mark.parametrize("tokens,mib", sorted(TABLE5_KV_MIB.items()))
def test_prfaas_model_reproduces_table5_kv(tokens, mib):
    kv = float(get_model("prfaas-1t-hybrid").kv_bytes_for(tokens)) / MIB
    assert abs(kv / mib - 1) <= 0.02


def test_sliding_window_caps_kv(tmp_path):
    f = tmp_path / "m.yaml"
    f.write_text(
        textwrap.dedent("""
        models:
          tiny-swa:
            hidden_size: 1024
            vocab_size: 32000
            weight_bytes: 2
            kv_bytes: 2
            attention:
              local: {type: swa, num_heads: 8, num_kv_heads: 2, head_dim: 128, window: 4096}
              full: {type: gqa, num_heads: 8, num_kv_heads: 2, head_dim: 128}
            mlp:
              ffn: {type: dense, intermediate_size: 4096}
            layers:
              - {count: 3, attention: local, mlp: ffn}
              - {count: 1, attention: full, mlp: ffn}
    """)
    )
    assert register_models(f) == ["tiny-swa"]
    m = get_model("tiny-swa")
    per_layer = 2 * 2 * 128 * 2
    kv = m.kv_bytes_for(np.array([1000, 10000]))
    assert kv[0] == 4 * per_layer * 1000
    assert kv[1] == per_layer * 10000 + 3 * per_layer * 4096
    # attention pairs are capped by the window too
    _, attn_long = m.prefill_flops(10000)
    _, attn_full = get_model("tiny-swa").prefill_flops(4096)
    assert attn_long > attn_full


def test_user_gpu_file(tmp_path):
    f = tmp_path / "gpus.yaml"
    f.write_text(
        textwrap.dedent("""
        gpus:
          my-gpu:
            bf16_tflops: 500
            fp8_tflops: 1000
            hbm_gb: 64
            hbm_bandwidth_tbps: 2.5
            nvlink_gbps: 200
            nic_gbps: 200
            architecture: hopper
            source: my datasheet
    """)
    )
    assert register_gpus(f) == ["my-gpu"]
    assert get_gpu("my-gpu").peak_flops(1) == 1000e12


@pytest.mark.parametrize(
    "body,needle",
    [
        ("gpus:\n  g:\n    bf16_tflops: 1\n", "missing key(s)"),
        (
            "gpus:\n  g: {bf16_tflops: -1, hbm_gb: 1, hbm_bandwidth_tbps: 1, nvlink_gbps: 1, "
            "nic_gbps: 1, source: s}\n",
            "gpus.g.bf16_tflops: -1 is out of range",
        ),
        (
            "gpus:\n  g: {bf16_tflops: 1, hbm_gb: 1, hbm_bandwidth_tbps: 1, nvlink_gbps: 1, "
            "nic_gbps: 1, source: s, colour: red}\n",
            "unknown key(s) colour",
        ),
        ("gpus:\n  g: [1, 2\n", "invalid YAML"),
    ],
)
def test_bad_gpu_file_names_file_and_key(tmp_path, body, needle):
    f = tmp_path / "bad.yaml"
    f.write_text(body)
    with pytest.raises(ConfigError) as exc:
        register_gpus(f)
    assert str(f) in str(exc.value) and needle in str(exc.value)


def test_bad_model_file_names_key(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text(
        textwrap.dedent("""
        models:
          m:
            hidden_size: 1024
            vocab_size: 100
            weight_bytes: 2
            kv_bytes: 2
            attention:
              a: {type: flash, num_heads: 8}
            mlp:
              f: {type: dense, intermediate_size: 10}
            layers: [{count: 1, attention: a, mlp: f}]
    """)
    )
    with pytest.raises(ConfigError) as exc:
        register_models(f)
    assert "models.m.attention.a.type" in str(exc.value) and "gqa" in str(exc.value)


def test_undefined_layer_block_is_an_error(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text(
        textwrap.dedent("""
        models:
          m:
            hidden_size: 1024
            vocab_size: 100
            weight_bytes: 2
            kv_bytes: 2
            attention: {a: {type: gqa, num_heads: 8, num_kv_heads: 8, head_dim: 128}}
            mlp: {f: {type: dense, intermediate_size: 10}}
            layers: [{count: 1, attention: b, mlp: f}]
    """)
    )
    with pytest.raises(ConfigError, match=r"layers\[0\]\.attention: 'b' not defined"):
        register_models(f)


def test_user_names_are_case_insensitive(tmp_path):
    f = tmp_path / "gpus.yaml"
    f.write_text(
        "gpus:\n  My-GPU: {bf16_tflops: 100, hbm_gb: 10, hbm_bandwidth_tbps: 1, "
        "nvlink_gbps: 10, nic_gbps: 10, source: s, aliases: [MINE]}\n"
    )
    register_gpus(f)
    assert get_gpu("My-GPU").name == "My-GPU" and get_gpu("mine").name == "My-GPU"
