"""LoRA modifiers on the one loaded base: exact against merged weights, switched without reusing
another adapter's KV cache, bad files refused by name without bringing the app down."""

from __future__ import annotations

import dataclasses
import os
import subprocess

import gguf
import numpy as np
import pytest

from models.demo import MODIFIERS, DemoSpec, lora_tensors, write_lora, write_model
from models.engine import Engine

SPEC = dataclasses.replace(DemoSpec(), weight_type="f32")
SYSTEM = {"role": "system", "content": "You are a test."}


@pytest.fixture(scope="module")
def f32_set(tmp_path_factory):
    """An F32 base, its three adapters, and for each adapter the base with it merged in (scale 0.5)."""
    root = tmp_path_factory.mktemp("f32")
    write_model(root / "base.gguf", SPEC, "base")
    for name in MODIFIERS:
        write_lora(root / f"{name}.gguf", SPEC, name)
        write_model(root / f"merged-{name}.gguf", SPEC, "base", merge=(name, 0.5))
    return root


@pytest.fixture(scope="module")
def switching_engine(f32_set):
    return Engine(f32_set / "base.gguf", f32_kv_cache=True,
                  modifiers={n: (f32_set / f"{n}.gguf", 0.5) for n in MODIFIERS})


def greedy(engine, messages, modifier=None, n=24):
    *pieces, stats = engine.generate(messages, max_tokens=n, modifier=modifier)
    return "".join(pieces), stats


@pytest.mark.parametrize("name", MODIFIERS)
def test_adapter_output_equals_the_merged_weights(f32_set, switching_engine, name):
    merged = Engine(f32_set / f"merged-{name}.gguf", f32_kv_cache=True)
    tokens = merged.fit([SYSTEM, {"role": "user", "content": "write a function that sums a list"}], 8)[0]
    ours = switching_engine.next_token_logits(tokens, modifier=name)
    reference = merged.next_token_logits(tokens)
    plain = switching_engine.next_token_logits(tokens, modifier=None)
    scale = np.abs(reference).max()
    assert np.abs(ours - reference).max() / scale < 1e-4
    assert np.abs(plain - reference).max() / scale > 1e-2  # the adapter really changes the output
    messages = [SYSTEM, {"role": "user", "content": "hello"}]
    assert greedy(switching_engine, messages, name)[0] == greedy(merged, messages)[0]


def test_switching_base_code_base_code_reasoning_matches_fresh_runs(f32_set, switching_engine):
    routes = [None, "code", None, "code", "reasoning"]
    messages = [SYSTEM]
    for turn, route in enumerate(routes):
        messages.append({"role": "user", "content": f"question {turn}: the model writes code"})
        reply, stats = greedy(switching_engine, messages, route)
        fresh = Engine(f32_set / "base.gguf", f32_kv_cache=True,
                       modifiers={route: (f32_set / f"{route}.gguf", 0.5)} if route else None)
        fresh.reply_tokens.update(switching_engine.reply_tokens)  # earlier replies as the tokens they were
        fresh_reply, fresh_stats = greedy(fresh, messages, route)
        assert (reply, stats.adapter) == (fresh_reply, route), f"turn {turn} on {route}"
        assert fresh_stats.reused_tokens == 0
        if turn >= 2:  # this route has seen the start of the conversation: only the rest is new
            assert 0 < stats.reused_tokens < stats.prompt_tokens
        messages.append({"role": "assistant", "content": reply})


def _rss_kb() -> int:
    """Resident memory now (ps works on Linux and macOS alike)."""
    return int(subprocess.run(["ps", "-o", "rss=", "-p", str(os.getpid())], capture_output=True, text=True,
                              check=True).stdout)


def test_switching_many_times_leaks_no_memory(switching_engine):
    messages = [SYSTEM, {"role": "user", "content": "hi"}]
    routes = [None, *MODIFIERS]
    for i in range(40):  # warm-up: every route's cache and graph allocated
        greedy(switching_engine, messages, routes[i % 4], n=4)
    before = _rss_kb()
    for i in range(400):
        greedy(switching_engine, messages, routes[i % 4], n=4)
    grown_kb = _rss_kb() - before
    assert grown_kb < 4096, f"RSS grew {grown_kb} kB over 400 switches"


# -- bad adapter files: each refused by name, the engine runs without it ---------------------

def _rewrite(src, dst, *, arch="llama", alpha=None, drop=None, rename=None, spec=SPEC):
    """Write a variant of the code adapter."""
    w = gguf.GGUFWriter(dst, arch=arch)
    w.add_type(gguf.GGUFType.ADAPTER)
    w.add_string(gguf.Keys.Adapter.TYPE, "lora")
    if alpha is None:
        w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(spec.lora_rank))
    elif alpha != "missing":
        w.add_string(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    for name, array in lora_tensors(spec, "code").items():
        if name == drop:
            continue
        w.add_tensor(rename.get(name, name) if rename else name, array)
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()


BAD_ADAPTERS = {
    "wrong shapes": (lambda src, dst: _rewrite(src, dst, spec=dataclasses.replace(SPEC, n_embd=128, n_ff=352)),
                     "wrong base model"),
    "wrong architecture": (lambda src, dst: _rewrite(src, dst, arch="qwen2"), "architecture 'qwen2'"),
    "missing tensor": (lambda src, dst: _rewrite(src, dst, drop="blk.0.attn_q.weight.lora_b"), "not its pair"),
    "tensor not in base": (lambda src, dst: _rewrite(src, dst, rename={
        "blk.0.attn_q.weight.lora_a": "blk.99.attn_q.weight.lora_a",
        "blk.0.attn_q.weight.lora_b": "blk.99.attn_q.weight.lora_b"}), "does not have"),
    "alpha as text": (lambda src, dst: _rewrite(src, dst, alpha="sixteen"), "alpha is of type STRING"),
    "alpha missing": (lambda src, dst: _rewrite(src, dst, alpha="missing"), "alpha is missing"),
    "missing file": (lambda src, dst: None, "not found"),
    "a directory": (lambda src, dst: dst.mkdir(), "not a file"),
    "not a GGUF": (lambda src, dst: dst.write_bytes(b"\x00" * 1000), "not a GGUF"),
    "truncated": (lambda src, dst: dst.write_bytes(src.read_bytes()[: src.stat().st_size // 2]), "corrupt or truncated"),
    "a model, not an adapter": (lambda src, dst: write_model(dst, SPEC, "draft"), "not a LoRA adapter"),
}


@pytest.mark.parametrize("case", BAD_ADAPTERS)
def test_a_bad_adapter_is_refused_by_name_and_the_rest_still_work(f32_set, tmp_path, case):
    make, reason = BAD_ADAPTERS[case]
    bad = tmp_path / "bad-code.gguf"
    make(f32_set / "code.gguf", bad)
    engine = Engine(f32_set / "base.gguf", modifiers={"code": (bad, 1.0), "reasoning": (f32_set / "reasoning.gguf", 1.0)})
    assert list(engine.modifiers.failed) == ["code"] and engine.modifiers.names == ["reasoning"]
    assert str(bad) in engine.modifiers.failed["code"] and reason in engine.modifiers.failed["code"]
    assert greedy(engine, [SYSTEM, {"role": "user", "content": "hi"}], "reasoning", n=4)[1].tokens == 4
    with pytest.raises(ValueError, match="no modifier 'code'"):
        greedy(engine, [SYSTEM, {"role": "user", "content": "hi"}], "code", n=4)


def test_a_truncated_adapter_says_so_without_the_readers_own_words(f32_set, tmp_path):
    """Its reason quoted numpy ("cannot reshape array of size …") before saying what was wrong."""
    bad = tmp_path / "code.gguf"
    BAD_ADAPTERS["truncated"][0](f32_set / "code.gguf", bad)
    reason = Engine(f32_set / "base.gguf", modifiers={"code": (bad, 1.0)}).modifiers.failed["code"]
    assert "reshape" not in reason and "array" not in reason
    assert f"{bad.stat().st_size:,} bytes" in reason and "again" in reason
