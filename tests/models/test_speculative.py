"""Speculative decoding with the demo draft: the same tokens as plain decoding, for every draft
length, with and without a LoRA modifier, past n_batch and up to the context limit.

Exactly the same where llama.cpp's CPU kernels give a batch of tokens the numbers they give one
token: quantized weights, as real model sets ship (Q8_0 here: its activations are quantized the
same way for one row or many). So these tests run on the demo set written in Q8_0, with rank-32
adapters so their LoRA B quantizes too. On F16 or F32 weights (the shipped demo set) a batch rounds
differently on some CPUs (up to 2.5e-3 in the logits on an AMD EPYC), and a near-tie between two
tokens can go the other way: the draft then changes a reply there, as a different thread count or
machine would."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import llama_cpp
import numpy as np
import pytest

from models import demo
from models.demo import DemoSpec, write_model
from models.engine import Engine
from models.errors import ModelFileError

SYSTEM = {"role": "system", "content": "You are a test."}
PROMPTS = ["write a function", "why is the sky blue? " * 3, "hello", "plan every Monday email " * 40]


QUANTIZED = dataclasses.replace(DemoSpec(), weight_type="q8_0", lora_rank=32)


@pytest.fixture(scope="module")
def quantized_set(tmp_path_factory) -> dict[str, Path]:
    """The demo base, draft and code modifier in Q8_0 (module docstring)."""
    folder = tmp_path_factory.mktemp("demo-q8_0")
    for role in ("base", "draft", "code"):
        demo.write_role(folder / f"{role}.gguf", QUANTIZED, role)
    return {role: folder / f"{role}.gguf" for role in ("base", "draft", "code")}


@pytest.fixture(scope="module")
def pair(quantized_set):
    """(plain, speculative) engines on the demo base, n_batch 64 so long prompts span batches."""
    mods = {"code": (quantized_set["code"], 1.0)}
    return (Engine(quantized_set["base"], n_batch=64, modifiers=mods),
            Engine(quantized_set["base"], n_batch=64, modifiers=mods, draft=quantized_set["draft"]))


def run(engine, prompt, **kw):
    *pieces, stats = engine.generate([SYSTEM, {"role": "user", "content": prompt}], **kw)
    return "".join(pieces), stats


@pytest.mark.parametrize("length", [1, 2, 4, 8, 16, None])
@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_output_is_identical_for_every_draft_length(pair, prompt, length):
    plain, spec = pair
    expected, plain_stats = run(plain, prompt, max_tokens=160)
    got, stats = run(spec, prompt, max_tokens=160, draft_length=length)
    assert got == expected
    assert stats.tokens == plain_stats.tokens and stats.stop_reason == plain_stats.stop_reason
    assert 0 <= stats.draft_accepted <= stats.draft_proposed
    if length:
        assert stats.draft_proposed > 0


@pytest.mark.parametrize("length", [2, 8, None])
def test_identical_with_a_lora_modifier_active(pair, length):
    plain, spec = pair
    expected, _ = run(plain, "convert this to rust", max_tokens=120, modifier="code")
    got, stats = run(spec, "convert this to rust", max_tokens=120, modifier="code", draft_length=length)
    assert got == expected and stats.adapter == "code"
    assert stats.draft_proposed > 0 or length is None  # adaptive: drafting may stop where it does not pay
    assert expected != run(plain, "convert this to rust", max_tokens=120)[0]  # the modifier is in effect


def test_the_quantized_set_decodes_a_batch_as_it_decodes_one_token(quantized_set):
    """What the exactness above rests on: each row of a batch has the logits the same token gets
    decoded alone after the same prefix."""
    batch, alone = Engine(quantized_set["base"], n_ctx=256), Engine(quantized_set["base"], n_ctx=256)
    tokens = batch.tokenize("convert this to rust please, and make it fast and safe")
    for engine in (batch, alone):
        engine._decode(tokens[:-8], 0, 0)
    batch._decode(tokens[-8:], len(tokens) - 8, 0, all_logits=True)
    rows = np.ctypeslib.as_array(batch.ctx.get_logits(), shape=(8, batch.n_vocab)).copy()
    for i, token in enumerate(tokens[-8:]):
        alone._decode([token], len(tokens) - 8 + i, 0)
        assert np.array_equal(np.ctypeslib.as_array(alone.ctx.get_logits(), shape=(1, alone.n_vocab))[0], rows[i])


def test_sampling_draws_the_same_tokens_as_plain_sampling(pair):
    plain, spec = pair
    for seed in range(3):
        expected, _ = run(plain, "tell me a story", max_tokens=100, temperature=0.8, seed=seed)
        got, stats = run(spec, "tell me a story", max_tokens=100, temperature=0.8, seed=seed, draft_length=4)
        assert got == expected and stats.draft_proposed > 0


def test_identical_up_to_the_context_limit(quantized_set):
    plain = Engine(quantized_set["base"], n_ctx=256)
    spec = Engine(quantized_set["base"], n_ctx=256, draft=quantized_set["draft"])
    for length in (3, 16):
        expected, plain_stats = run(plain, "go on and on", max_tokens=1000)
        got, stats = run(spec, "go on and on", max_tokens=1000, draft_length=length)
        assert got == expected and stats.stop_reason == plain_stats.stop_reason
        assert stats.prompt_tokens + stats.tokens <= 257


def test_draft_can_be_switched_off_per_call(pair):
    _, spec = pair
    _, stats = run(spec, "hello", max_tokens=40, use_draft=False)
    assert stats.draft_proposed == stats.draft_accepted == 0


def test_the_drafts_prompt_batches_take_the_engines_batch_threads(demo_set, monkeypatch):
    """The draft catches up on the prompt (a reopened chat, another visitor's, the turns since its
    last proposal) between the first token and the second, when nothing else runs: a batch there is
    compute-bound and splits across the router's core too, as the base's prompt batches do. What a
    step leaves behind (the last proposal, the base's token) and its proposals, a token at a time,
    stay on the engine's threads, as the base's verify batches do."""
    engine = Engine(demo_set["base"], n_ctx=512, n_threads=1, batch_threads=2, draft=demo_set["draft"])
    batches = []
    decode = engine.draft._decode
    ctx = engine.draft.ctx.ctx
    monkeypatch.setattr(engine.draft, "_decode", lambda tokens, start: batches.append(
        (len(tokens), llama_cpp.llama_n_threads(ctx), llama_cpp.llama_n_threads_batch(ctx))) or decode(tokens, start))
    *_, stats = engine.generate([SYSTEM, {"role": "user", "content": "plan every Monday email " * 10}],
                                max_tokens=24, draft_length=4)
    assert stats.draft_proposed > 0
    (prompt, threads, batch_threads), *proposals = batches
    assert prompt > 40 and (threads, batch_threads) == (1, 2)
    behind = {(t, b) for n, t, b in proposals if n > 1}  # llama.cpp decodes single tokens on n_threads
    assert behind == {(1, 1)}


def test_a_draft_with_another_vocabulary_size_is_refused_naming_both_files(demo_set, tmp_path):
    other = tmp_path / "big-vocab-draft.gguf"
    write_model(other, dataclasses.replace(DemoSpec(), min_vocab=2000), "draft")
    with pytest.raises(ModelFileError, match="vocabulary sizes differ") as err:
        Engine(demo_set["base"], draft=other)
    assert str(other) in str(err.value) and str(demo_set["base"]) in str(err.value)


def test_a_draft_with_different_token_texts_is_refused(demo_set, tmp_path, monkeypatch):
    tokens, scores, types = demo.vocabulary(DemoSpec())
    tokens = list(tokens)
    tokens[-1], tokens[-2] = tokens[-2], tokens[-1]  # same size, two texts swapped
    monkeypatch.setattr(demo, "vocabulary", lambda spec: (tokens, scores, types))
    other = tmp_path / "swapped-draft.gguf"
    write_model(other, DemoSpec(), "draft")
    with pytest.raises(ModelFileError, match=f"token {len(tokens) - 2} is"):
        Engine(demo_set["base"], draft=other)


def test_a_base_that_pads_its_vocabulary_past_the_draft_is_accepted(quantized_set, tmp_path):
    """Qwen2.5-7B pads its vocabulary 128 rows past the 0.5B draft's; the draft's tokens are all the
    base's, so speculative decoding works and replies equal plain decoding."""
    n_draft = len(demo.vocabulary(DemoSpec())[0])
    padded = tmp_path / "padded-base.gguf"
    write_model(padded, dataclasses.replace(QUANTIZED, min_vocab=n_draft + 100), "base")
    plain, spec = Engine(padded, n_ctx=512), Engine(padded, n_ctx=512, draft=quantized_set["draft"])
    text, stats = run(spec, "write a function", max_tokens=40, temperature=0.0)
    assert text == run(plain, "write a function", max_tokens=40, temperature=0.0)[0]
    assert stats.draft_proposed > 0
    too_padded = tmp_path / "too-padded-base.gguf"
    write_model(too_padded, dataclasses.replace(QUANTIZED, min_vocab=n_draft + 200), "base")
    with pytest.raises(ModelFileError, match="vocabulary sizes differ"):
        Engine(too_padded, n_ctx=512, draft=quantized_set["draft"])
