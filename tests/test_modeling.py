"""The real QLoRA code path on CPU: tiny Gemma-2 in 4-bit NF4 through bitsandbytes, LoRA, save/load."""

import numpy as np
import pandas as pd
import pytest
import torch
from arena_pref.data.token_cache import tokenize_frame
from arena_pref.models import batching, loading
from arena_pref.models.batching import plan_batches
from arena_pref.predict import inference, prediction_files
from arena_pref.predict.inference import run_batches
from workflow_helpers import model_settings

LORA = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"], "layers_to_transform": [1]}


def frame(n=6):
    return pd.DataFrame(
        {
            "id": np.arange(n) + 100,
            "prompt": [[f"what is rust {i}?"] for i in range(n)],
            "response_a": [["the answer about rust is long " * (1 + i % 3)] for i in range(n)],
            "response_b": [["stars", None] if i % 2 else ["tea is complete"] for i in range(n)],
        }
    )


@pytest.mark.parametrize(
    "quantization,layer_type", [("4bit", "Linear4bit"), ("8bit", "Linear8bitLt"), ("none", "Linear")]
)
def test_load_quantized(tiny_backbone_dir, quantization, layer_type):
    tok = loading.load_tokenizer(tiny_backbone_dir)
    model = loading.load_model(
        tiny_backbone_dir, loading.loading_with(quantization=quantization), pad_token_id=tok.pad_token_id
    )
    assert type(model.model.layers[0].self_attn.q_proj).__name__ == layer_type
    assert model.config.num_labels == 3


def test_lora_adapter_round_trip(tiny_backbone_dir, tmp_path):
    """LoRA on chosen layers + the score head; save_pretrained then PeftModel gives identical logits."""
    torch.manual_seed(0)
    tok = loading.load_tokenizer(tiny_backbone_dir)
    model = loading.load_model(
        tiny_backbone_dir, loading.loading_with(quantization="4bit"), pad_token_id=tok.pad_token_id
    )
    model = loading.attach_lora(model, model_settings(lora=LORA).training.lora)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("layers.1.self_attn.q_proj.lora_A" in n for n in trainable)
    assert not any("layers.0." in n for n in trainable)  # layers_to_transform respected
    assert any("score" in n for n in trainable)  # the head is trained in full
    # one training step so the adapter differs from its initialisation
    ids = torch.tensor([tok("what is rust? the answer")["input_ids"]])
    out = model(input_ids=ids, labels=torch.tensor([2]))
    out.loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p -= 0.5 * p.grad
    model.eval()
    with torch.no_grad():
        before = model(input_ids=ids).logits
    model.save_pretrained(tmp_path / "adapter")
    loaded = loading.load_for_inference(
        tiny_backbone_dir,
        tmp_path / "adapter",
        loading.loading_with(quantization="4bit"),
        pad_token_id=tok.pad_token_id,
    )
    with torch.no_grad():
        after = loaded(input_ids=ids).logits
    torch.testing.assert_close(after, before, rtol=0, atol=1e-5)


def test_dynamic_padding_matches_one_row_batches(tiny_backbone_dir):
    """Length-sorted padded batches give each row the probabilities it gets alone, in input order."""
    tok = loading.load_tokenizer(tiny_backbone_dir)
    model = loading.load_model(tiny_backbone_dir, pad_token_id=tok.pad_token_id)
    model.eval()
    cache = tokenize_frame(frame(), tok, strategy="per_part", max_length=64)
    seqs = list(cache["input_ids"])
    assert len({len(s) for s in seqs}) > 1
    lengths = [len(s) for s in seqs]
    batched = run_batches(
        model, seqs, plan_batches(lengths, method="sorted_dynamic", batch_size=4), pad_token_id=tok.pad_token_id
    )
    single = run_batches(
        model, seqs, plan_batches(lengths, method="sorted_dynamic", batch_size=1), pad_token_id=tok.pad_token_id
    )
    np.testing.assert_allclose(batched, single, atol=1e-5)
    np.testing.assert_allclose(batched.sum(axis=1), 1, atol=1e-6)


def order_forward(model, sequences, batch, **kw):
    """Says 'the answer shown first wins' when token 0 comes first, 'second wins' otherwise."""
    first = torch.tensor([float(sequences[i][0] == 0) for i in batch.rows])
    return torch.stack([3 * first, 3 * (1 - first), torch.zeros_like(first)], dim=1)


@pytest.mark.parametrize("method", ["fixed", "sorted_dynamic", "token_budget", "packed"])
def test_tta_maps_swapped_prediction_back(method):
    tokens = pd.DataFrame({"id": [5, 6], "input_ids": [[0, 1], [1, 0, 1]], "input_ids_swap": [[1, 0], [0, 1, 1]]})
    seqs = inference.sequences_of(tokens, tta=True)
    batches = batching.plan_batches([len(s) for s in seqs], method=method, batch_size=2, max_tokens=4, n_pairs=2)
    probs = inference.run_batches(None, seqs, batches, pad_token_id=9, forward=order_forward)
    out = prediction_files.frame_from_probs(tokens, probs, tta=True)
    assert out["id"].tolist() == [5, 6]
    # row 5: A shown first says A; swapped, B shown first says "second" = original A
    assert out.loc[0, "a"] > 0.9 and out.loc[0, "a_tta"] > 0.9
    assert out.loc[1, "b"] > 0.9 and out.loc[1, "b_tta"] > 0.9
    np.testing.assert_allclose(out[["a_tta", "b_tta", "tie_tta"]].sum(axis=1), 1)


def fake_gpu(monkeypatch, name="Tesla T4", capability=(7, 5)):
    """What torch.cuda says about a GPU, for checks that run before any CUDA work."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)


def test_bfloat16_on_a_gpu_without_bf16_tensor_cores_stops_with_one_line(tiny_backbone_dir, monkeypatch):
    """torch reports bf16 as supported on a T4 and emulates it, several times slower than fp16:
    such a job stops before loading anything, unless emulation is allowed explicitly."""
    from arena_pref.errors import InputError

    fake_gpu(monkeypatch)
    with pytest.raises(InputError, match=r"dtype bfloat16 on Tesla T4 \(compute capability 7\.5\).*float16"):
        loading.load_model(tiny_backbone_dir, loading.loading_with(dtype="bfloat16"), device="cuda:0")
    loading.check_dtype_supported("bfloat16", "cuda:0", allow_emulation=True)  # allowed: no error
    loading.check_dtype_supported("float16", "cuda:0")
    fake_gpu(monkeypatch, "NVIDIA A100-SXM4-80GB", (8, 0))
    loading.check_dtype_supported("bfloat16", "cuda:0")


def test_flash_attention_falls_back_with_the_reason(tiny_backbone_dir, monkeypatch, caplog):
    """attn_implementation flash_attention_2 where flash-attn cannot run: the model's default
    attention, and a warning that says why."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(tiny_backbone_dir)
    model = loading.load_model(
        tiny_backbone_dir, loading.loading_with(attn_implementation="flash_attention_2"), pad_token_id=0
    )
    assert model.config._attn_implementation == "eager"  # Gemma-2's default (softcapping)
    assert "flash_attention_2 is not used: it needs a CUDA GPU" in caplog.text
    assert loading.attention_implementation("auto", config, "cpu") is None
    assert loading.attention_implementation("eager", config, "cpu") == "eager"
    fake_gpu(monkeypatch)
    from importlib import metadata

    monkeypatch.setattr(metadata, "version", lambda name: "2.5.8")
    assert "compute capability 7.5" in loading.flash_attention_unavailable(config, "cuda:0")
    fake_gpu(monkeypatch, "NVIDIA H100 80GB HBM3", (9, 0))
    assert "no logit softcapping" in loading.flash_attention_unavailable(config, "cuda:0")
    monkeypatch.setattr(metadata, "version", lambda name: "2.8.3")
    assert loading.flash_attention_unavailable(config, "cuda:0") is None
    assert loading.attention_implementation("flash_attention_2", config, "cuda:0") == "flash_attention_2"

    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", missing)
    assert "not installed" in loading.flash_attention_unavailable(config, "cuda:0")


def test_softcap_switch_drops_gemma2_softcapping_and_runs_sdpa(tiny_backbone_dir, caplog):
    """attention_softcap: false loads Gemma-2 without its attention logit softcapping and runs SDPA
    (which transformers refuses for Gemma-2 only because SDPA cannot softcap): the same function as
    eager attention without softcapping, and a different one from the softcapped model."""
    from arena_pref.models import pooling

    caplog.set_level("INFO", logger="arena_pref")
    capped = loading.load_model(tiny_backbone_dir, pad_token_id=0).eval()
    plain = loading.load_model(tiny_backbone_dir, loading.loading_with(attention_softcap=False), pad_token_id=0).eval()
    assert plain.config._attn_implementation == "sdpa" and plain.config.attn_logit_softcapping is None
    assert "attention softcapping off" in caplog.text
    assert capped.config.attn_logit_softcapping == 50.0
    with torch.no_grad():  # scores past the cap, so that softcapping changes the function
        for model in (capped, plain):
            for name, param in model.named_parameters():
                if "q_proj" in name or "k_proj" in name:
                    param.mul_(40)
    ids = torch.randint(5, 300, (3, 30), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        sdpa = pooling.classify(plain, input_ids=ids, attention_mask=mask)
        plain.config._attn_implementation = "eager"
        eager = pooling.classify(plain, input_ids=ids, attention_mask=mask)
        softcapped = pooling.classify(capped, input_ids=ids, attention_mask=mask)
    torch.testing.assert_close(sdpa, eager, rtol=0, atol=1e-5)
    assert (softcapped - eager).abs().max() > 1e-3
    # SDPA named explicitly loads (transformers alone refuses it for Gemma-2); eager named stays eager
    named = loading.load_model(
        tiny_backbone_dir, loading.loading_with(attention_softcap=False, attn_implementation="sdpa"), pad_token_id=0
    )
    assert named.config._attn_implementation == "sdpa" and named.config.attn_logit_softcapping is None
    kept = loading.load_model(
        tiny_backbone_dir, loading.loading_with(attention_softcap=False, attn_implementation="eager"), pad_token_id=0
    )
    assert kept.config._attn_implementation == "eager" and kept.config.attn_logit_softcapping is None


def test_liger_kernels_apply_on_a_gpu_where_installed(tiny_backbone_dir, monkeypatch, caplog):
    """liger-kernel's fused layers replace the model's own where the package is installed and the
    job runs on a GPU, and are skipped with the reason logged elsewhere (a stand-in liger module:
    its Triton kernels need CUDA)."""
    import sys
    import types

    caplog.set_level("INFO", logger="arena_pref")
    model = loading.load_model(tiny_backbone_dir, pad_token_id=0)
    assert "liger-kernel not used: its Triton kernels need a CUDA GPU" in caplog.text
    calls = []
    stand_in = types.ModuleType("liger_kernel.transformers")
    stand_in.apply_liger_kernel_to_gemma2 = lambda **kw: calls.append(kw)
    monkeypatch.setitem(sys.modules, "liger_kernel", types.ModuleType("liger_kernel"))
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers", stand_in)
    loading.apply_liger(model, "cuda:0")
    assert calls == [dict(rope=True, rms_norm=True, cross_entropy=False, fused_linear_cross_entropy=False, model=model)]
    model.config.model_type = "unknown_family"
    assert "no kernels for unknown_family" in loading.liger_unavailable(model, "cuda:0")
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers", None)
    assert "not installed" in loading.liger_unavailable(model, "cuda:0")
