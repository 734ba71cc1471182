"""Batch planning, our pooling, padding-free packed prediction and sharding over devices."""

import os
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from arena_pref.models import batching, loading, pooling
from arena_pref.predict import inference
from arena_pref.tools import bench
from workflow_helpers import model_settings

# a small adapter whose random update clearly moves predictions
ADAPTER = dict(targets=("q_proj", "v_proj", "down_proj"), r=4, std=0.2, seed=1)


def arena_lengths(n, seed=0, cap=2048):
    rng = np.random.default_rng(seed)
    return np.minimum(rng.lognormal(np.log(700), 0.9, n).astype(int) + 8, cap)


@pytest.mark.parametrize("method", batching.METHODS)
@pytest.mark.parametrize("n_pairs", [0, 50])
def test_every_sequence_planned_exactly_once(method, n_pairs):
    lengths = arena_lengths(100 if n_pairs == 0 else 2 * n_pairs)
    batches = batching.plan_batches(
        lengths, method=method, batch_size=8, max_tokens=4096, max_length=2048, n_pairs=n_pairs
    )
    rows = np.concatenate([b.rows for b in batches])
    assert sorted(rows.tolist()) == list(range(len(lengths)))
    for b in batches:
        if method == "fixed":
            assert b.width == 2048
        elif method == "packed":
            assert b.width == 0
            assert lengths[b.rows].sum() <= 4096 or len(b.rows) == 1
        else:
            assert b.width == lengths[b.rows].max()
        if method == "token_budget":
            assert len(b.rows) * b.width <= 4096 or len(b.rows) == 1


@pytest.mark.parametrize("method", batching.METHODS)
def test_tta_twins_go_together_or_adjacent(method):
    n = 60
    lengths = np.concatenate([arena_lengths(n, seed=1), arena_lengths(n, seed=2)])
    batches = batching.plan_batches(lengths, method=method, batch_size=8, max_tokens=4096, max_length=2048, n_pairs=n)
    where = {int(i): k for k, b in enumerate(batches) for i in b.rows}
    assert all(abs(where[i] - where[i + n]) <= 1 for i in range(n))


def test_padding_efficiency_by_method():
    lengths = arena_lengths(400)
    eff = {
        m: batching.padding_efficiency(
            batching.plan_batches(lengths, method=m, batch_size=8, max_tokens=8192, max_length=2048), lengths
        )
        for m in batching.METHODS
    }
    assert eff["packed"] == 1.0
    assert eff["fixed"] < eff["sorted_dynamic"] < 1.0
    assert eff["token_budget"] > 0.95


def test_plan_rejects_unknown_method():
    with pytest.raises(ValueError, match="unknown prediction method 'magic'"):
        batching.plan_batches([3, 4], method="magic")


def test_shards_balanced_by_tokens():
    lengths = arena_lengths(2000)
    batches = batching.plan_batches(lengths, method="packed", max_tokens=8192)
    shards = batching.shard_batches(batches, lengths, 2)
    assert batching.shard_imbalance(shards, lengths) <= 0.02
    assert sorted(np.concatenate([b.rows for s in shards for b in s]).tolist()) == list(range(2000))


# --------------------------------------------------------------------------- real models


def random_sequences(n, low, high, vocab=(5, 300), seed=0, first=None, last=None):
    rng = np.random.default_rng(seed)
    seqs = []
    for _ in range(n):
        body = rng.integers(*vocab, size=rng.integers(low, high)).tolist()
        seqs.append(([first] if first is not None else []) + body + ([last] if last is not None else []))
    return seqs


def padded(seqs, pad):
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), pad)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    return ids, mask


@pytest.mark.parametrize("arch", ["gemma2", "llama"])
@pytest.mark.parametrize("quantization", ["none", "4bit"])
def test_last_token_pooling_matches_stock_head(request, arch, quantization):
    """Our body + last-token pooling + score head reproduces ``*ForSequenceClassification``."""
    path = request.getfixturevalue("tiny_backbone_dir" if arch == "gemma2" else "tiny_llama_dir")
    model = loading.load_model(path, loading.loading_with(quantization=quantization), pad_token_id=0).eval()
    ids, mask = padded(random_sequences(6, 3, 40), 0)
    with torch.no_grad():
        stock = model(input_ids=ids, attention_mask=mask).logits
        ours = pooling.classify(model, input_ids=ids, attention_mask=mask, pooling="auto")
    torch.testing.assert_close(ours, stock, rtol=0, atol=1e-6)


def test_cls_pooling_matches_stock_bert_head(minilm_dir):
    model = loading.load_model(minilm_dir).eval()
    ids, mask = padded(random_sequences(5, 3, 30, vocab=(1000, 20000), first=101, last=102), 0)
    with torch.no_grad():
        stock = model(input_ids=ids, attention_mask=mask).logits
        ours = pooling.classify(model, input_ids=ids, attention_mask=mask, pooling="cls")
    torch.testing.assert_close(ours, stock, rtol=0, atol=1e-6)
    assert pooling.resolve_pooling("auto", pooling.model_parts(model)) == "mean"


def _packed_vs_padded(model, seqs, pool):
    lengths = [len(s) for s in seqs]
    padded_probs = inference.run_batches(
        model, seqs, batching.plan_batches(lengths, method="sorted_dynamic", batch_size=4), pad_token_id=0, pooling=pool
    )
    packed_batches = batching.plan_batches(lengths, method="packed", max_tokens=150)
    assert max(len(b.rows) for b in packed_batches) > 2  # several sequences share a pass
    packed_probs = inference.run_batches(model, seqs, packed_batches, pad_token_id=0, pooling=pool)
    np.testing.assert_allclose(packed_probs, padded_probs, rtol=0, atol=1e-4)
    assert np.abs(padded_probs - padded_probs.mean(0)).max() > 1e-3  # rows really differ


@pytest.mark.parametrize("arch", ["gemma2", "llama"])
@pytest.mark.parametrize("quantization", ["none", "4bit"])
def test_packed_matches_padded_on_decoders(request, arch, quantization):
    path = request.getfixturevalue("tiny_backbone_dir" if arch == "gemma2" else "tiny_llama_dir")
    model = loading.load_model(path, loading.loading_with(quantization=quantization), pad_token_id=0).eval()
    _packed_vs_padded(model, random_sequences(20, 3, 60, seed=3), "auto")


@pytest.mark.parametrize("pool", ["mean", "cls"])
def test_packed_matches_padded_on_minilm(minilm_dir, pool):
    model = loading.load_model(minilm_dir).eval()
    torch.manual_seed(0)
    torch.nn.init.normal_(model.classifier.weight, std=0.5)  # a fresh head says little: sharpen it
    _packed_vs_padded(model, random_sequences(16, 3, 50, vocab=(1000, 20000), first=101, last=102, seed=4), pool)


@pytest.mark.slow  # compiles, spawns processes or runs Snakemake: make test, not test-fast
def test_two_cpu_workers_match_one(tiny_backbone_dir, tmp_path):
    """The several-device path (one spawned worker per device, shards merged by row) gives what
    one process gives; on a GPU machine the devices are cuda:0, cuda:1, ..."""
    model = loading.load_model(tiny_backbone_dir, pad_token_id=0)
    model = loading.attach_lora(model, model_settings().training.lora)
    model.save_pretrained(tmp_path / "adapter")
    n = 24
    seqs = random_sequences(2 * n, 3, 50, seed=5)
    tokens = pd.DataFrame({"id": np.arange(n) + 1000, "input_ids": seqs[:n], "input_ids_swap": seqs[n:]})
    settings = model_settings(
        quantization="none",
        dtype="float32",
        max_length=64,
        predict={"method": "packed", "batch_size": 4, "max_tokens_per_batch": 200},
    ).prediction
    kw = dict(
        backbone=str(tiny_backbone_dir),
        adapter_dir=tmp_path / "adapter",
        tokens=tokens,
        settings=settings,
        tta=True,
        threads=1,
    )
    one = inference.predict_on_devices(devices=["cpu"], **kw)
    import logging

    from arena_pref.logs import setup_logging

    handlers = logging.getLogger().handlers[:]
    setup_logging(tmp_path / "job.log")  # as a workflow script does
    try:
        two = inference.predict_on_devices(devices=["cpu", "cpu"], **kw)
    finally:
        logging.getLogger().handlers[:] = handlers
    assert two["id"].tolist() == tokens["id"].tolist()
    np.testing.assert_allclose(two.drop(columns="id").to_numpy(), one.drop(columns="id").to_numpy(), rtol=0, atol=1e-6)
    # the workers log into the job's log file too (what they loaded, their fallbacks, progress)
    log = (tmp_path / "job.log").read_text()
    assert log.count("loaded LlamaForSequenceClassification") + log.count("loaded Gemma2ForSequenceClassification") == 2
    assert "2 shards" in log


@pytest.mark.parametrize("which", ["tiny_backbone_dir", "tiny_llama_dir", "minilm_dir"])
def test_packed_rows_attend_per_sequence_not_row_squared(request, which, monkeypatch):
    """Without flash-attention, packed rows go through varlen.py's per-sequence attention (cost
    sum of length^2), never a (row x row) mask. It stays installed (a checkpointed layer recomputes
    in the backward pass, after the forward returned) and leaves padded forwards as they were."""
    from arena_pref.models import varlen

    model = loading.load_model(request.getfixturevalue(which), pad_token_id=0).eval()
    vocab = (1000, 20000) if which == "minilm_dir" else (5, 300)
    ids, mask = padded(random_sequences(4, 3, 30, vocab=vocab, seed=5), 0)
    with torch.no_grad():
        before = model(input_ids=ids, attention_mask=mask).logits
    seen = []
    real = varlen._segment_call
    monkeypatch.setattr(
        varlen, "_segment_call", lambda module, base, **kw: seen.append(kw["length"]) or real(module, base, **kw)
    )
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS as masks

    built = []
    for impl in ("eager", "sdpa"):
        monkeypatch.setitem(
            masks._global_mapping, impl, lambda *a, _f=masks[impl], **kw: built.append(kw) or _f(*a, **kw)
        )
    seqs = random_sequences(5, 3, 30, vocab=vocab, seed=6)
    packed_ids, positions, lengths = pooling.packed_inputs(seqs)
    with torch.no_grad():
        pooling.classify(model, input_ids=packed_ids, position_ids=positions, lengths=lengths)
    monkeypatch.undo()
    layers = model.config.num_hidden_layers
    assert sorted(seen) == sorted([len(s) for s in seqs] * layers)
    assert not built  # no attention mask over the packed row was built
    assert model.config._attn_implementation == varlen.NAME
    with torch.no_grad():
        after = model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(after, before, rtol=0, atol=1e-6)


def test_pair_pooling_packed_matches_padded_and_needs_segments(minilm_dir):
    """pooling 'pair' (mean over A's tokens minus mean over B's) gives the same probabilities
    padded and packed, and swapping which tokens count as A and B changes them."""
    model = loading.load_model(minilm_dir).eval()
    torch.manual_seed(0)
    torch.nn.init.normal_(model.classifier.weight, std=0.5)
    seqs = random_sequences(12, 10, 50, vocab=(1000, 20000), first=101, last=102, seed=7)
    segs = [[0] * 3 + [1] * ((len(s) - 3) // 2) + [2] * (len(s) - 3 - (len(s) - 3) // 2) for s in seqs]
    lengths = [len(s) for s in seqs]
    run = lambda method, sg: inference.run_batches(  # noqa: E731
        model,
        seqs,
        batching.plan_batches(lengths, method=method, batch_size=4, max_tokens=150),
        pad_token_id=0,
        pooling="pair",
        segments=sg,
    )
    by_padding, by_packing = run("sorted_dynamic", segs), run("packed", segs)
    np.testing.assert_allclose(by_packing, by_padding, rtol=0, atol=1e-4)
    mirrored = run("packed", [[{1: 2, 2: 1}.get(v, v) for v in s] for s in segs])
    assert np.abs(mirrored - by_packing).max() > 1e-3
    ids, mask = padded(seqs[:2], 0)
    with pytest.raises(ValueError, match="pooling 'pair' needs the segment ids"):
        pooling.classify(model, input_ids=ids, attention_mask=mask, pooling="pair")


@pytest.mark.parametrize("quantization,atol", [("none", 1e-4), ("4bit", 1e-4), ("8bit", 2e-3)])
def test_merged_lora_predicts_what_the_adapter_does(request, tmp_path, quantization, atol):
    """merge_lora: the dequantized base with the adapter folded in is the trained function
    (8-bit: to the int8 rounding of activations that LLM.int8 layers add and a merged model
    does not)."""
    path = request.getfixturevalue("tiny_llama_dir" if quantization == "8bit" else "tiny_backbone_dir")
    adapter = bench.random_adapter(path, tmp_path / "adapter", quantization=quantization, **ADAPTER)
    load_as = loading.loading_with(quantization=quantization)
    unmerged = loading.load_for_inference(path, adapter, load_as, pad_token_id=0)
    merged = loading.load_for_inference(path, adapter, load_as, pad_token_id=0, merge_lora=True)
    assert not any("lora" in name for name, _ in merged.named_parameters())
    assert {type(m).__name__ for m in merged.modules()}.isdisjoint({"Linear4bit", "Linear8bitLt"})
    seqs = random_sequences(16, 3, 60, seed=6)
    batches = batching.plan_batches([len(s) for s in seqs], method="packed", max_tokens=200)
    # the reference runs the 4-bit layers in train mode: in eval mode on CPUs with AVX512-BF16,
    # bitsandbytes repacks them for an inference kernel that computes in bf16 (docs/limitations.md)
    unmerged.train()
    reference = inference.run_batches(unmerged, seqs, batches, pad_token_id=0)
    got = inference.run_batches(merged, seqs, batches, pad_token_id=0)
    np.testing.assert_allclose(got, reference, rtol=0, atol=atol)
    base = loading.load_model(path, load_as, pad_token_id=0).train()
    without = inference.run_batches(base, seqs, batches, pad_token_id=0)
    assert np.abs(without - reference).max() > 1e-2  # the adapter changes predictions: it was merged


@pytest.fixture
def merge_4bit(tiny_backbone_dir, tmp_path):
    """Loads the 4-bit tiny backbone with a random adapter (made here) for inference with
    merge_lora, anew at each call (after a test's patches); keywords go to load_for_inference."""
    adapter = bench.random_adapter(tiny_backbone_dir, tmp_path / "adapter", quantization="4bit", **ADAPTER)

    def load(**kw):
        load_as = loading.loading_with(quantization="4bit")
        return loading.load_for_inference(tiny_backbone_dir, adapter, load_as, pad_token_id=0, merge_lora=True, **kw)

    return load


def test_merge_lora_falls_back_when_memory_is_short(merge_4bit, monkeypatch, caplog):
    monkeypatch.setattr(loading, "free_memory_bytes", lambda device: 1024)
    model = merge_4bit()
    assert hasattr(model, "peft_config")  # the unmerged adapter on the 4-bit base
    assert any(type(m.weight).__name__ == "Params4bit" for m in model.modules() if hasattr(m, "weight"))
    assert "predicting with the unmerged adapter" in caplog.text


@pytest.mark.slow  # compiles, spawns processes or runs Snakemake: make test, not test-fast
def test_compiled_backbone_predicts_what_eager_does(tiny_backbone_dir):
    """predict.compile: a torch.compile'd backbone matches eager (padded batches: the packed path's
    per-sequence attention loop recompiles per sequence count, slow to test on CPU)."""
    model = loading.load_model(tiny_backbone_dir, pad_token_id=0).eval()
    seqs = random_sequences(8, 3, 40, seed=7)
    batches = batching.plan_batches([len(s) for s in seqs], method="sorted_dynamic", batch_size=4)
    eager = inference.run_batches(model, seqs, batches, pad_token_id=0)
    loading.compile_backbone(model)
    body = pooling.model_parts(model).body
    assert body._compiled_call_impl is not None
    compiled = inference.run_batches(model, seqs, batches, pad_token_id=0)
    np.testing.assert_allclose(compiled, eager, rtol=0, atol=1e-5)


def test_packed_matches_fixed_padding_on_long_rows(tiny_backbone_dir):
    """Rows past Gemma-2's sliding window (1,024 tokens in this model) and rows padded far past
    their length: packed equals the fixed-width padded path in fp32. (The bench's 4-bit CPU run
    shows up to 4e-4 between these two: bitsandbytes' CPU 4-bit inference kernel computes in
    bf16, and its rounding depends on the batch shape; fp32 agrees to 1e-7.)"""
    model = loading.load_model(tiny_backbone_dir, pad_token_id=0).eval()
    assert model.config.sliding_window == 1024
    rng = np.random.default_rng(8)
    seqs = [[1] + rng.integers(5, 300, n - 1).tolist() for n in (2500, 1800, 1100, 300, 40, 700)]
    lengths = [len(s) for s in seqs]
    fixed = inference.run_batches(
        model, seqs, batching.plan_batches(lengths, method="fixed", batch_size=3, max_length=2600), pad_token_id=0
    )
    packed = inference.run_batches(
        model, seqs, batching.plan_batches(lengths, method="packed", max_tokens=3000), pad_token_id=0
    )
    np.testing.assert_allclose(packed, fixed, rtol=0, atol=1e-5)
    assert np.abs(fixed - fixed.mean(0)).max() > 1e-3


def test_packing_support_is_detected(tiny_backbone_dir, tiny_llama_dir, minilm_dir):
    for path in (tiny_backbone_dir, tiny_llama_dir, minilm_dir):
        assert pooling.packing_unsupported(loading.load_model(path, pad_token_id=0)) is None
    model = loading.load_model(tiny_llama_dir, pad_token_id=0)
    model.config._attn_implementation = "flex_attention"  # a block mask per pass (test_flex.py)
    assert pooling.packing_unsupported(model) is None
    model.config._attn_implementation = "paged|sdpa"
    assert "paged|sdpa" in pooling.packing_unsupported(model)


def test_packed_prediction_falls_back_to_token_budget(tiny_backbone_dir, monkeypatch, caplog):
    """A model that cannot run packed rows gets the same rows in token-budget batches."""
    model = loading.load_model(tiny_backbone_dir, pad_token_id=0).eval()
    seqs = random_sequences(20, 3, 50, seed=9)
    lengths = [len(s) for s in seqs]
    planned = batching.plan_batches(lengths, method="packed", max_tokens=200, n_pairs=10)
    packed = inference.run_batches(
        model, seqs, inference.batches_for_model(model, planned, lengths, 200), pad_token_id=0
    )
    monkeypatch.setattr(inference, "packing_unsupported", lambda model: "no attention interface")
    fallback_batches = inference.batches_for_model(model, planned, lengths, 200)
    assert "token-budget batches instead" in caplog.text
    assert all(b.width > 0 for b in fallback_batches)  # padded, not packed
    fallback = inference.run_batches(model, seqs, fallback_batches, pad_token_id=0)
    np.testing.assert_allclose(fallback, packed, rtol=0, atol=1e-4)


def test_merge_lora_falls_back_when_the_base_cannot_be_merged(merge_4bit, monkeypatch, caplog):
    def no_dequantize(*args, **kwargs):
        raise NotImplementedError("no dequantize for this quantizer")

    monkeypatch.setattr(loading, "_merge", no_dequantize)
    model = merge_4bit()
    assert hasattr(model, "peft_config")
    assert "cannot merge into the 4bit base" in caplog.text


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_pooling_finds_the_real_tokens_on_either_side(side):
    """'last' pools each row's last real token and 'cls' its first, however the batch is padded."""
    lengths = [5, 2, 7]
    width = 7
    mask = torch.zeros((3, width), dtype=torch.long)
    for row, n in enumerate(lengths):
        if side == "left":
            mask[row, width - n :] = 1
        else:
            mask[row, :n] = 1
    hidden = torch.arange(width, dtype=torch.float32)[None, :, None].expand(3, width, 2)  # position as value
    first = [width - n if side == "left" else 0 for n in lengths]
    last = [width - 1 if side == "left" else n - 1 for n in lengths]
    assert pooling._pool_padded(hidden, mask, "last")[:, 0].tolist() == last
    assert pooling._pool_padded(hidden, mask, "cls")[:, 0].tolist() == first
    means = [float(np.mean(range(lo, hi + 1))) for lo, hi in zip(first, last)]
    np.testing.assert_allclose(pooling._pool_padded(hidden, mask, "mean")[:, 0].numpy(), means)


@pytest.mark.parametrize("arch", ["gemma2", "llama"])
def test_left_padded_batches_give_right_padded_logits(request, arch):
    """A decoder batch padded on the left (as Gemma's and Llama's tokenizers pad) classifies as the
    same batch padded on the right."""
    path = request.getfixturevalue("tiny_backbone_dir" if arch == "gemma2" else "tiny_llama_dir")
    model = loading.load_model(path, pad_token_id=0).eval()
    seqs = random_sequences(5, 3, 40, seed=11)
    right_ids, right_mask = padded(seqs, 0)
    left_ids, left_mask = torch.zeros_like(right_ids), torch.zeros_like(right_mask)
    for row, s in enumerate(seqs):
        left_ids[row, right_ids.shape[1] - len(s) :] = torch.tensor(s)
        left_mask[row, right_ids.shape[1] - len(s) :] = 1
    with torch.no_grad():
        right = pooling.classify(model, input_ids=right_ids, attention_mask=right_mask)
        left = pooling.classify(model, input_ids=left_ids, attention_mask=left_mask)
    torch.testing.assert_close(left, right, rtol=0, atol=1e-5)


def _count_host_reads(monkeypatch):
    """Calls of Tensor.tolist / Tensor.item (each a device sync on a GPU), counted."""
    calls = {"tolist": 0, "item": 0}
    for name in calls:
        real = getattr(torch.Tensor, name)

        def counting(self, *a, _name=name, _real=real, **kw):
            calls[_name] += 1
            return _real(self, *a, **kw)

        monkeypatch.setattr(torch.Tensor, name, counting)
    return calls


@pytest.mark.parametrize("which", ["tiny_backbone_dir", "tiny_llama_dir"])
def test_packed_forward_reads_boundaries_to_the_host_once(request, which, monkeypatch):
    """The packed boundaries reach every layer as host ints: one read per batch, not one per layer
    (on a GPU each read waits for the device)."""
    model = loading.load_model(request.getfixturevalue(which), pad_token_id=0).eval()
    seqs = random_sequences(6, 3, 30, seed=12)
    ids, positions, lengths = pooling.packed_inputs(seqs)
    with torch.no_grad():
        pooling.classify(model, input_ids=ids, position_ids=positions, lengths=lengths)  # warm-up
        calls = _count_host_reads(monkeypatch)
        pooling.classify(model, input_ids=ids, position_ids=positions, lengths=lengths)
    assert calls["tolist"] <= 1 and calls["item"] == 0, calls


def test_packed_sdpa_segments_run_causal_kernels_without_masks(tiny_llama_dir, monkeypatch):
    """SDPA models (Llama) attend per packed sequence with is_causal and no mask, so SDPA's flash
    and memory-efficient kernels can run; eager models (Gemma-2: softcapping) get their causal
    masks sliced from one cached mask."""
    from arena_pref.models import varlen
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    model = loading.load_model(tiny_llama_dir, pad_token_id=0).eval()
    assert model.config._attn_implementation == "sdpa"
    seen = []
    real = ALL_ATTENTION_FUNCTIONS["sdpa"]
    monkeypatch.setitem(
        ALL_ATTENTION_FUNCTIONS._global_mapping,
        "sdpa",
        lambda module, q, k, v, mask, **kw: (
            seen.append((mask, kw.get("is_causal"))),
            real(module, q, k, v, mask, **kw),
        )[1],
    )
    seqs = random_sequences(5, 3, 30, seed=13)
    ids, positions, lengths = pooling.packed_inputs(seqs)
    with torch.no_grad():
        pooling.classify(model, input_ids=ids, position_ids=positions, lengths=lengths)
    assert len(seen) == 5 * model.config.num_hidden_layers
    assert all(mask is None and causal is True for mask, causal in seen)
    a = varlen.causal_mask(40, window=None, dtype=torch.float32, device="cpu")
    b = varlen.causal_mask(12, window=None, dtype=torch.float32, device="cpu")
    assert b.untyped_storage().data_ptr() == a.untyped_storage().data_ptr()  # one cached mask serves all lengths
    expected = torch.triu(torch.full((12, 12), torch.finfo(torch.float32).min), diagonal=1)
    torch.testing.assert_close(b[0, 0], expected)
    windowed = varlen.causal_mask(6, window=2, dtype=torch.float32, device="cpu")[0, 0]
    assert (windowed == 0).sum(1).tolist() == [1, 2, 2, 2, 2, 2]


@pytest.mark.parametrize("which", ["tiny_backbone_dir", "tiny_llama_dir"])
def test_flash_attention_gets_the_packed_boundaries(request, which, monkeypatch):
    """With attn_implementation flash_attention_2, packed rows hand the varlen kernel cu_seq_lens
    and max_length explicitly (transformers would otherwise re-derive them from the position ids
    in every layer). flash-attn does not run on a CPU: a stand-in kernel with its calling
    convention checks the arguments and computes per-sequence attention."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    path = request.getfixturevalue(which)
    reference = loading.load_model(path, loading.loading_with(attn_implementation="eager"), pad_token_id=0).eval()
    model = loading.load_model(path, loading.loading_with(attn_implementation="eager"), pad_token_id=0).eval()
    eager = sys.modules[type(model.model.layers[0].self_attn).__module__].eager_attention_forward
    calls = []

    def flash_stand_in(
        module, q, k, v, mask, *, cu_seq_lens_q, cu_seq_lens_k, max_length_q, max_length_k, sliding_window=None, **kw
    ):
        assert mask is None and cu_seq_lens_q.dtype == torch.int32 and torch.equal(cu_seq_lens_q, cu_seq_lens_k)
        bounds = cu_seq_lens_q.tolist()
        assert max_length_q == max_length_k == max(np.diff(bounds))
        calls.append(bounds)
        kw.pop("position_ids", None)
        out = []
        for s, e in zip(bounds[:-1], bounds[1:]):
            causal = torch.triu(torch.full((e - s, e - s), torch.finfo(q.dtype).min), diagonal=1)[None, None]
            out.append(eager(module, q[:, :, s:e], k[:, :, s:e], v[:, :, s:e], causal, **kw)[0])
        return torch.cat(out, dim=1), None

    monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS._global_mapping, "flash_attention_2", flash_stand_in)
    model.config._attn_implementation = "flash_attention_2"
    seqs = random_sequences(6, 3, 40, seed=14)
    lengths = [len(s) for s in seqs]
    batches = batching.plan_batches(lengths, method="packed", max_tokens=120)
    packed = inference.run_batches(model, seqs, batches, pad_token_id=0)
    padded_probs = inference.run_batches(
        reference, seqs, batching.plan_batches(lengths, method="sorted_dynamic"), pad_token_id=0
    )
    np.testing.assert_allclose(packed, padded_probs, rtol=0, atol=1e-5)
    assert len(calls) == len(batches) * model.config.num_hidden_layers


def test_float16_overflow_stops_with_the_model_and_fold_named(tiny_backbone_dir, tmp_path):
    """Logits past float16's range (65504) become inf and the probabilities NaN: the job stops
    with one line naming the model and fold, and writes nothing."""
    from arena_pref import atomic, steps
    from arena_pref.errors import InputError
    from safetensors.torch import load_file, save_file

    adapter = bench.random_adapter(tiny_backbone_dir, tmp_path / "adapter", quantization="none", **ADAPTER)
    weights = load_file(str(adapter / "adapter_model.safetensors"))
    save_file(
        {k: v * 1e6 if "score" in k else v for k, v in weights.items()}, str(adapter / "adapter_model.safetensors")
    )
    n = 6
    seqs = random_sequences(2 * n, 3, 30, seed=15)
    atomic.write_parquet(
        pd.DataFrame({"id": np.arange(n), "input_ids": seqs[:n], "input_ids_swap": seqs[n:]}), tmp_path / "test.parquet"
    )
    model = model_settings(
        quantization="none", dtype="float16", max_length=64, predict={"method": "packed", "max_tokens_per_batch": 128}
    )
    out = tmp_path / "fold3.parquet"
    with pytest.raises(
        InputError,
        match=r"model 'gemma_t4', fold3 \(test\): \d+ of 12 sequences got "
        r"non-finite probabilities.*float16 overflows",
    ):
        steps.infer(
            model="gemma_t4",
            part="fold3",
            tokens_parquet=tmp_path / "test.parquet",
            backbone=tiny_backbone_dir,
            adapter=adapter,
            settings=model.prediction,
            options=model.options,
            tta=True,
            out=out,
            threads=1,
        )
    assert not out.exists()


def test_each_prediction_worker_sees_only_its_own_gpu(monkeypatch):
    """With several GPUs each worker process is pinned to its device before anything in it starts
    CUDA (CUDA_VISIBLE_DEVICES set by the pool's initializer): no worker opens a context on GPU 0.
    CUDA does not run here: the pool is replaced by one that runs initializer and task in turn in
    this process, and the task reports what it saw."""
    import concurrent.futures

    assert inference.worker_device("cuda:1", "4,7") == ("7", "cuda:0")
    assert inference.worker_device("cuda:0", "4,7") == ("4", "cuda:0")
    assert inference.worker_device("cuda:1", None) == ("1", "cuda:0")
    assert inference.worker_device("cpu", "4,7") == (None, "cpu")

    class InProcessPool:
        """A worker's environment is its own: restored once its task has run."""

        def __init__(self, workers, mp_context, initializer, initargs):
            self.parent_env = dict(os.environ)
            initializer(*initargs)

        def submit(self, fn, *args):
            future = concurrent.futures.Future()
            future.set_result(fn(*args))
            os.environ.clear()
            os.environ.update(self.parent_env)
            return future

        def shutdown(self, cancel_futures):
            pass

    seen = []
    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", InProcessPool)
    monkeypatch.setattr(
        inference,
        "_predict_share",
        lambda trained, dev, seqs, segs, shard, threads: (
            seen.append((os.environ["CUDA_VISIBLE_DEVICES"], dev)),
            (np.array([], dtype=np.int64), np.zeros((0, 3)), 0.0),
        )[1],
    )
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,7")
    inference._predict_in_workers(None, ["cuda:0", "cuda:1"], [[], []], seqs=[], segs=None, threads=1)
    assert seen == [("4", "cuda:0"), ("7", "cuda:0")]


def test_merge_lora_memory_check_counts_the_activations_of_a_pass(tiny_backbone_dir, merge_4bit, monkeypatch, caplog):
    """Free memory that holds the dequantized weights but not also the activations of one forward
    pass of the configured token budget keeps the unmerged adapter."""
    base = loading.load_model(tiny_backbone_dir, loading.loading_with(quantization="4bit"), pad_token_id=0)
    weights = loading._dequantized_extra_bytes(base, torch.float32)
    activations = loading.activation_bytes(base.config, tokens=4096, longest=1024, dtype="float32")
    assert activations > weights > 0
    monkeypatch.setattr(loading, "free_memory_bytes", lambda device: int(1.2 * weights))
    small_pass = merge_4bit(batch_tokens=1, longest=1)
    assert not hasattr(small_pass, "peft_config")  # weights fit, a one-token pass too: merged
    big_pass = merge_4bit(batch_tokens=4096, longest=1024)
    assert hasattr(big_pass, "peft_config")
    assert "for the activations of 4096 tokens per pass" in caplog.text


def test_failed_merge_frees_the_half_converted_model_before_reloading(merge_4bit, monkeypatch):
    import weakref

    first, alive_at_reload = [], []
    real_load = loading.load_model

    def load(*args, **kwargs):
        if first:
            alive_at_reload.append(first[0]() is not None)
        model = real_load(*args, **kwargs)
        first.append(weakref.ref(model))
        return model

    def failing_merge(model, adapter_dir, *, quantization):
        model.dequantize()  # converts layers, then fails: the model is half converted
        raise RuntimeError("dequantize failed half-way")

    monkeypatch.setattr(loading, "load_model", load)
    monkeypatch.setattr(loading, "_merge", failing_merge)
    model = merge_4bit()
    assert alive_at_reload == [False]
    assert any(type(m.weight).__name__ == "Params4bit" for m in model.modules() if hasattr(m, "weight"))


@pytest.mark.slow  # compiles, spawns processes or runs Snakemake: make test, not test-fast
def test_workflow_scripts_let_spawned_workers_start(tmp_path):
    """Several-GPU prediction spawns worker processes, and spawn re-imports the parent's main file:
    the workflow script itself, since Snakemake's preamble points ``__file__`` at it, without the
    ``snakemake`` object. A script that ran its main at import would break every such pool."""
    import subprocess
    import sys

    from workflow_helpers import REPO

    for script in sorted((REPO / "workflow" / "scripts").glob("*.py")):
        generated = tmp_path / f"snakemake_{script.name}"
        generated.write_text(
            f"__real_file__ = __file__; __file__ = {str(script)!r}\n"  # what Snakemake's preamble does
            "import multiprocessing, os\n"
            "from concurrent.futures import ProcessPoolExecutor\n"
            "if __name__ == '__main__':\n"
            "    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context('spawn')) as pool:\n"
            "        print('worker', pool.submit(os.getpid).result())\n"
        )
        proc = subprocess.run(
            [sys.executable, str(generated)],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "PYTHONPATH": str(REPO / "workflow")},
        )
        assert proc.returncode == 0 and "worker" in proc.stdout, (script.name, proc.stderr[-2000:])


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_unmerged_adapters_predict_in_the_compute_dtype(tiny_backbone_dir, tmp_path, monkeypatch, dtype):
    """An unmerged adapter's LoRA factors are cast to the compute dtype (peft would keep them in
    fp32 and cast every LoRA layer's input): probabilities stay within 5e-3 of fp32 factors on the
    same 16-bit base."""
    adapter = bench.random_adapter(tiny_backbone_dir, tmp_path / "adapter", quantization="none", **ADAPTER)
    load_as = loading.loading_with(dtype=dtype)
    model = loading.load_for_inference(tiny_backbone_dir, adapter, load_as, pad_token_id=0)
    lora = {p.dtype for n, p in model.named_parameters() if ".lora_" in n}
    assert lora == {loading.torch_dtype(dtype)}
    monkeypatch.setattr(loading, "adapters_to", lambda model, dtype: None)
    fp32_factors = loading.load_for_inference(tiny_backbone_dir, adapter, load_as, pad_token_id=0)
    assert {p.dtype for n, p in fp32_factors.named_parameters() if ".lora_" in n} == {torch.float32}
    seqs = random_sequences(16, 3, 60, seed=6)
    batches = batching.plan_batches([len(s) for s in seqs], method="packed", max_tokens=200)
    got = inference.run_batches(model, seqs, batches, pad_token_id=0)
    reference = inference.run_batches(fp32_factors, seqs, batches, pad_token_id=0)
    np.testing.assert_allclose(got, reference, rtol=0, atol=5e-3)
