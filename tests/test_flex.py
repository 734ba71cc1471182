"""flex_attention over packed passes (flexmask.py): one attention call per layer, block masks from
the pass's boundaries, passes of one size so the kernel compiles once; and the run-time choice of
attention (modeling.attention_implementation)."""

import numpy as np
import pytest
import torch
from arena_pref.models import batching, flexmask, loading, pooling
from arena_pref.predict import inference
from arena_pref.settings import Lora
from arena_pref.tools import gpu_check

WINDOW = 8  # Gemma-2's sliding window, shorter than most test sequences


def tiny_model(arch, seed=0):
    """A tiny random classifier whose attention is sharp enough for softcapping (Gemma-2) to bite,
    with a sliding window shorter than the sequences."""
    return gpu_check.sharp_tiny_model(arch, window=WINDOW, seed=seed).eval()


def use(model, impl):
    model.config._attn_implementation = impl
    return model


def sequences(n=9, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(3, 300, int(k)).tolist() for k in rng.integers(2, 60, n)]


def per_sequence_eager(model, seqs):
    use(model, "eager")
    return torch.cat(
        [pooling.classify(model, input_ids=torch.tensor([s]), attention_mask=torch.ones(1, len(s))) for s in seqs]
    )


def flex_packed(model, seqs, pack_to):
    use(model, flexmask.NAME)
    ids, positions, lengths = pooling.packed_inputs(seqs)
    return pooling.classify(model, input_ids=ids, position_ids=positions, lengths=lengths, pack_to=pack_to)


def dense_reference(q, k, v, lo, softcap):
    i = torch.arange(len(lo))
    allowed = (i[None] <= i[:, None]) & (i[None] >= lo[:, None])
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    scores = softcap * torch.tanh(scores / softcap)
    return torch.softmax(scores.masked_fill(~allowed, -torch.inf), -1) @ v


UNCOMPILED = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")


def dense_allowed(lo, hi):
    i = torch.arange(len(lo))
    return (i[None] >= lo[:, None]) & (i[None] <= hi[:, None])


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("window", [None, 1, 40, 127, 128, 129])
def test_block_tables_are_the_dense_masks_blocks(causal, window):
    """The tables built from ``lo`` and ``hi`` alone list exactly the blocks with an allowed pair
    (``some``) and those whose every pair is allowed (``every``), for random layouts: sequences of
    one token, sequences across block edges, a pass filled to a block edge, filler."""
    rng = np.random.default_rng(0 if window is None else window)
    for trial in range(12):
        size = 128 * int(rng.integers(2, 6))
        total = size if trial == 0 else int(rng.integers(1, size + 1))
        cuts = np.unique(rng.integers(1, total, int(rng.integers(0, 12)))) if total > 1 else []
        bounds = (0, *map(int, cuts), total)
        lo, hi = flexmask.token_bounds(bounds, size, causal=causal, window=window if causal else None)
        some, every = flexmask.block_tables(lo, hi)
        blocks = dense_allowed(lo, hi).reshape(size // 128, 128, size // 128, 128)
        assert torch.equal(some, blocks.any(3).any(1)), (bounds, window)
        assert torch.equal(every, blocks.all(3).all(1)), (bounds, window)
        assert torch.equal(dense_allowed(lo, hi)[total:, total:], torch.eye(size - total, dtype=torch.bool))


@UNCOMPILED
@pytest.mark.parametrize("window", [None, 40])
def test_block_mask_is_each_sequence_causal_and_windowed(window):
    """Attention through the BlockMask gives what the dense mask gives, filler included, and skips
    the blocks no token needs."""
    from torch.nn.attention.flex_attention import flex_attention

    bounds, size = (0, 5, 130, 300, 301, 700), 1024
    lo, hi = flexmask.token_bounds(bounds, size, window=window)
    assert lo[699] == (max(301, 699 - window + 1) if window else 301) and lo[800] == hi[800] == 800  # filler
    mask = flexmask.block_mask(lo, hi, "cpu")
    q, k, v = (torch.randn(1, 2, size, 16, generator=torch.Generator().manual_seed(i)) for i in range(3))
    out = flex_attention(q, k, v, block_mask=mask, score_mod=lambda s, b, h, qi, ki: 3 * torch.tanh(s / 3))
    torch.testing.assert_close(out, dense_reference(q, k, v, lo, 3.0), rtol=0, atol=1e-5)
    blocks = mask.to_dense()
    assert blocks.sum() < blocks.numel() / 2  # sparse: filler and other sequences' blocks skipped


def test_pass_sizes_are_a_few_buckets_of_the_budget():
    """Passes are padded to the next quarter of the budget (whole blocks): at most four sizes per
    job, filler under a quarter of the budget."""
    assert [flexmask.pass_size(n, 16384) for n in (1, 4096, 4097, 16000)] == [4096, 4096, 8192, 16384]
    assert {flexmask.pass_size(n, 1000) for n in range(1, 1001)} == {256, 512, 768, 1024}
    assert flexmask.pass_size(37) == 128 and flexmask.pass_size(900, 300) == 1024  # past the budget: more
    ids, positions = flexmask.pad_pass(torch.tensor([[5, 6, 7]]), torch.tensor([[0, 1, 0]]), 6)
    assert ids.tolist() == [[5, 6, 7, 0, 0, 0]] and positions.tolist() == [[0, 1, 0, 0, 0, 0]]


def test_flex_packed_encoder_passes_attend_both_ways_within_each_sequence(minilm_dir):
    """Encoders (MiniLM) under flex: each sequence attends to all of itself, not causally."""
    model = loading.load_model(minilm_dir).eval()
    seqs = [[101, *s, 102] for s in sequences(7, seed=5)]
    with torch.no_grad():
        alone = torch.cat(
            [pooling.classify(model, input_ids=torch.tensor([s]), attention_mask=torch.ones(1, len(s))) for s in seqs]
        )
        packed = flex_packed(model, seqs, pack_to=512)
    torch.testing.assert_close(packed, alone, rtol=0, atol=1e-5)


@pytest.mark.parametrize("arch", ["gemma2", "llama"])
def test_flex_packed_pass_equals_per_sequence_eager(arch):
    """One compiled flex_attention call per layer over a packed pass padded to its budget equals
    running every sequence alone with eager attention (Gemma-2: softcapping and a sliding window
    shorter than the sequences), in fp32."""
    model = tiny_model(arch)
    seqs = sequences()
    with torch.no_grad():
        reference = per_sequence_eager(model, seqs)
        packed = flex_packed(model, seqs, pack_to=384)
    torch.testing.assert_close(packed, reference, rtol=0, atol=1e-5)
    assert (reference - reference.mean(0)).abs().max() > 1e-3  # the rows really differ


@UNCOMPILED
def test_flex_lora_gradients_equal_per_sequence_eager(monkeypatch):
    """LoRA and head gradients through a packed flex pass equal the per-sequence eager ones.

    torch refuses flex_attention's backward on a CPU (its fused kernels are GPU-only), so this
    runs flex's reference implementation (uncompiled, the device check lifted): it checks the
    block masks, the filler, the softcap and the window under autograd; the compiled kernel's
    backward is checked on a GPU (``arena_pref.tools.gpu_check``)."""
    import torch.nn.attention.flex_attention as fa
    from transformers.integrations import flex_attention as hf_flex

    monkeypatch.setattr(fa, "_validate_device", lambda *a: None)
    monkeypatch.setattr(
        hf_flex,
        "compile_friendly_flex_attention",
        lambda q, k, v, training=False, **kw: fa.flex_attention(q, k, v, **kw),
    )
    lora = Lora(
        r=4, alpha=8, dropout=0.0, target_modules=("q_proj", "k_proj", "v_proj", "o_proj"), layers_to_transform=None
    )
    model = loading.attach_lora(tiny_model("gemma2"), lora)
    with torch.no_grad():  # a non-zero B so that every LoRA factor gets a gradient
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    seqs, targets = sequences(6, seed=1), torch.arange(6) % 3

    def grads(logits):
        model.zero_grad()
        torch.nn.functional.cross_entropy(logits, targets).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    flex = grads(flex_packed(model, seqs, pack_to=256))
    eager = grads(per_sequence_eager(model, seqs))
    assert any("lora_A" in n for n in eager) and any("score" in n for n in eager)
    for name in eager:
        torch.testing.assert_close(flex[name], eager[name], rtol=0, atol=1e-5, msg=name)


def one_bucket_passes(seqs, pack_to):
    """Packed passes of up to a quarter of ``pack_to`` tokens (one bucket: one pass size) whose
    totals fall in different 128-token blocks, so that a pass padded to its own length in whole
    blocks would compile more than once."""
    lengths = [len(s) for s in seqs]
    batches = batching.plan_batches(lengths, method="packed", max_tokens=pack_to // 4)
    totals = [int(np.sum(np.array(lengths)[b.rows])) for b in batches]
    assert len(batches) >= 3 and len({len(b.rows) for b in batches}) > 1
    assert len({-(-t // flexmask.BLOCK) for t in totals}) > 1
    assert {flexmask.pass_size(t, pack_to) for t in totals} == {pack_to // 4}
    return batches


def test_flex_compiles_once_over_passes_of_different_contents():
    """Prediction passes of different sequence counts and lengths, padded to the job's budget:
    flex_attention is compiled once per pass size, not once per pass."""
    from torch._dynamo.utils import counters

    model = tiny_model("llama")
    seqs = sequences(40, seed=2)
    batches = one_bucket_passes(seqs, pack_to=2048)
    use(model, flexmask.NAME)
    inference.run_batches(model, seqs, batches[:1], pad_token_id=0, pack_to=2048)
    compiled = counters["stats"]["unique_graphs"]
    assert compiled >= 1
    probs = inference.run_batches(model, seqs, batches, pad_token_id=0, pack_to=2048)
    assert counters["stats"]["unique_graphs"] == compiled
    reference = per_sequence_eager(model, seqs).softmax(-1).detach().numpy()
    np.testing.assert_allclose(probs, reference, rtol=0, atol=1e-5)


def fake_gpu(monkeypatch, capability, installed=()):
    from importlib import metadata

    def version(name):
        if name in installed:
            return "4.0.0"
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: f"GPU {capability}")
    monkeypatch.setattr(metadata, "version", version)


@pytest.mark.parametrize(
    "capability,installed,training,expected",
    [
        ((9, 0), ("flash-attn-4",), False, "flash_attention_4"),
        ((9, 0), ("flash-attn-4",), True, None),  # FA4's and flex's backward: unverified on a GPU
        ((9, 0), ("flash_attn",), True, "flash_attention_2"),
        ((9, 0), (), False, "flex_attention"),
        ((8, 0), ("flash_attn",), False, "flash_attention_2"),
        ((7, 5), (), False, None),  # a T4: the model's default attention
    ],
)
def test_fastest_attention_by_gpu(monkeypatch, caplog, capability, installed, training, expected):
    caplog.set_level("INFO", logger="arena_pref")
    config = tiny_model("gemma2").config
    fake_gpu(monkeypatch, capability, installed)
    assert loading.attention_implementation("fastest", config, "cuda:0", training=training) == expected
    assert "attn_implementation fastest:" in caplog.text
    assert loading.attention_implementation("fastest", config, "cpu") is None
    split = loading.attention_implementation("fastest", config, "cuda:0", training=training, split=True)
    assert split == (None if expected == "flex_attention" else expected)


def test_flex_falls_back_where_it_cannot_run(caplog):
    """flex_attention has no backward on a CPU, and its masks are built on one device: such jobs
    use the model's default attention, and the log says why."""
    config = tiny_model("gemma2").config
    assert loading.attention_implementation("flex_attention", config, "cpu") == "flex_attention"
    assert loading.attention_implementation("flex_attention", config, "cpu", training=True) is None
    assert "no flex_attention backward pass on cpu" in caplog.text
    assert loading.attention_implementation("flex_attention", config, "cpu", split=True) is None
    assert "split over several devices" in caplog.text
    assert loading.attention_implementation("flash_attention_4", config, "cpu") is None


def test_compiled_backbone_on_flex_passes_compiles_once():
    """predict.compile on packed flex passes: the whole backbone compiles with static shapes once,
    and later passes of other contents reuse it."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    model = use(tiny_model("gemma2"), flexmask.NAME)
    seqs = sequences(40, seed=2)
    batches = one_bucket_passes(seqs, pack_to=2048)
    reference = per_sequence_eager(model, seqs).softmax(-1).detach().numpy()
    use(model, flexmask.NAME)
    loading.compile_backbone(model, packed=True)
    inference.run_batches(model, seqs, batches[:1], pad_token_id=0, pack_to=2048)
    compiled = counters["stats"]["unique_graphs"]
    assert compiled >= 1
    with torch._dynamo.config.patch(error_on_recompile=True):
        probs = inference.run_batches(model, seqs, batches, pad_token_id=0, pack_to=2048)
    assert counters["stats"]["unique_graphs"] == compiled
    np.testing.assert_allclose(probs, reference, rtol=0, atol=1e-5)


def test_masks_follow_each_family_s_layer_types_and_window():
    """Gemma-2: a mask per layer type, windowed on sliding layers; Mistral (no layer types, a
    window, ``use_sliding_window`` unset): one windowed mask; Qwen2 with the window off: none."""
    from transformers import Gemma2Config, MistralConfig, Qwen2Config

    bounds, size = (0, 300), 384

    def first_key(mask, q=299):  # the first key block query ``q`` may see
        return int(mask.to_dense()[0, 0, q // flexmask.BLOCK].nonzero()[0])

    gemma = flexmask.packed_masks(Gemma2Config(sliding_window=128), bounds, size, "cpu")
    assert set(gemma) == {"full_attention", "sliding_attention"}
    assert first_key(gemma["full_attention"]) == 0 and first_key(gemma["sliding_attention"]) == 1
    assert first_key(flexmask.packed_masks(MistralConfig(sliding_window=128), bounds, size, "cpu")) == 1
    qwen = flexmask.packed_masks(Qwen2Config(sliding_window=128, use_sliding_window=False), bounds, size, "cpu")
    assert first_key(qwen["full_attention"]) == 0
