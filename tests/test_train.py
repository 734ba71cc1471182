import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from arena_pref.data.token_cache import tokenize_frame
from arena_pref.models import loading
from arena_pref.train import targets, trainer
from safetensors.torch import load_file
from workflow_helpers import model_settings

SETTINGS = {
    "quantization": "4bit",
    "dtype": "float32",
    "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"], "layers_to_transform": None},
    "train": {
        "epochs": 2,
        "batch_size": 4,
        "grad_accum": 1,
        "lr": 1e-3,
        "warmup_steps": 1,
        "optimizer": "adamw_8bit",
        "save_steps": 2,
        "logging_steps": 1,
        "seed": 0,
        "swap_augment": False,
    },
}


@pytest.fixture
def tokens(tiny_backbone_dir):
    n = 12
    df = pd.DataFrame(
        {
            "id": np.arange(n),
            "prompt": [[f"what is rust {i}?"] for i in range(n)],
            "response_a": [["the answer about rust is long " * (1 + i % 3)] for i in range(n)],
            "response_b": [["stars"] for _ in range(n)],
        }
    )
    tok = loading.load_tokenizer(tiny_backbone_dir)
    return tokenize_frame(df, tok, strategy="per_part", max_length=48), targets.hard(np.arange(n) % 3)


def run(tiny_backbone_dir, tokens, tmp_path, settings=SETTINGS, name="a"):
    """Train with ``settings``: a model's mapping as in a config file."""
    cache, rows = tokens
    model = model_settings(**settings)
    return trainer.train_fold(
        backbone=tiny_backbone_dir,
        tokens=cache,
        targets=rows,
        settings=model.training,
        options=model.options,
        ckpt_dir=tmp_path / "ckpt",
        adapter_dir=tmp_path / name / "adapter",
        metrics_path=tmp_path / name / "metrics.json",
        threads=1,
    )


def adapter_weights(path):
    return load_file(str(path / "adapter_model.safetensors"))


def assert_same_trained_adapters(first, second, atol=1e-5):
    """The adapters in two directories hold the same tensors (to ``atol``), and training moved them."""
    a, b = adapter_weights(first), adapter_weights(second)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(b[k].numpy(), a[k].numpy(), rtol=0, atol=atol, err_msg=k)
    assert any(np.abs(a[k].numpy()).max() > 0 for k in a if "lora_B" in k)  # it did train


def test_train_saves_adapter_and_metrics(tiny_backbone_dir, tokens, tmp_path):
    metrics = run(tiny_backbone_dir, tokens, tmp_path)
    assert (tmp_path / "a" / "adapter" / "adapter_config.json").exists()
    weights = adapter_weights(tmp_path / "a" / "adapter")
    assert any("lora_A" in k for k in weights) and any("score" in k for k in weights)
    saved = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert saved["steps"] == 6 and saved["n_sequences"] == 12
    assert saved["tokens_per_s_this_run"] > 0 and saved["peak_memory_mb"] > 0
    assert len(saved["step_losses"]) == 6 and saved["train_loss"] == pytest.approx(np.mean(saved["step_losses"]))
    assert metrics["resumed_from"] is None and metrics["steps_this_run"] == 6
    assert saved["optimizer"] == "adamw_torch"  # 8-bit AdamW needs a GPU: logged fallback on CPU


@pytest.mark.parametrize("batching", ["rows", "token_budget_packed"])
def test_resume_continues_from_last_checkpoint_and_matches(tiny_backbone_dir, tokens, tmp_path, batching):
    """A job killed after its step-4 checkpoint resumes there and ends with the same adapter,
    with fixed-row batches and with packed token-budget batches (which the Trainer skips by
    batch on resume)."""
    settings = SETTINGS
    if batching == "token_budget_packed":
        lengths = [len(s) for s in trainer.training_rows(tokens[0], tokens[1], False)[0]]
        budget = int(sum(lengths) / 3) + 1  # 3 batches an epoch: 6 steps as with 4 rows a batch
        settings = {**SETTINGS, "train": {**SETTINGS["train"], "packing": True, "max_tokens_per_batch": budget}}
        assert len(trainer.TokenBudgetBatchSampler(lengths, budget, packed=True, seed=0)) == 3
    uninterrupted = run(tiny_backbone_dir, tokens, tmp_path / "full", settings=settings)
    full = adapter_weights(tmp_path / "full" / "a" / "adapter")
    # simulate the kill: keep the checkpoints up to step 4 only
    run(tiny_backbone_dir, tokens, tmp_path / "killed", settings=settings)
    ckpt = tmp_path / "killed" / "ckpt"
    shutil.rmtree(ckpt / "checkpoint-6")
    assert (ckpt / "checkpoint-4").exists()
    metrics = run(tiny_backbone_dir, tokens, tmp_path / "killed", settings=settings, name="b")
    assert metrics["resumed_from"].endswith("checkpoint-4")
    assert_same_adapter(tmp_path / "killed" / "b" / "adapter", full)
    # the metrics of the resumed run are the uninterrupted run's; its rates cover its own 2 steps
    np.testing.assert_allclose(metrics["step_losses"], uninterrupted["step_losses"], rtol=0, atol=1e-6)
    assert metrics["train_loss"] == pytest.approx(uninterrupted["train_loss"], abs=1e-6)
    assert metrics["steps"] == 6 and metrics["steps_this_run"] == 2 and metrics["tokens_per_s_this_run"] > 0


def assert_same_adapter(path, expected, atol=1e-6):
    got = adapter_weights(path)
    assert got.keys() == expected.keys()
    for k in expected:
        np.testing.assert_allclose(got[k].numpy(), expected[k].numpy(), rtol=0, atol=atol, err_msg=k)


def test_checkpoints_of_other_settings_are_not_resumed(tiny_backbone_dir, tokens, tmp_path, caplog):
    run(tiny_backbone_dir, tokens, tmp_path)
    changed = {**SETTINGS, "train": {**SETTINGS["train"], "lr": 5e-4}}
    metrics = run(tiny_backbone_dir, tokens, tmp_path, settings=changed, name="b")
    assert metrics["resumed_from"] is None
    assert "were made from other settings: starting afresh" in caplog.text


def test_checkpoints_of_another_optimizer_are_not_resumed(tiny_backbone_dir, tokens, tmp_path, caplog, monkeypatch):
    """adamw_8bit runs as 32-bit AdamW where bitsandbytes' 8-bit optimizers cannot (a CPU): a
    checkpoint of one cannot resume the other, although the settings are the same."""
    run(tiny_backbone_dir, tokens, tmp_path)
    monkeypatch.setattr(trainer, "optimizer_name", lambda name: "sgd")  # another machine resolves it otherwise
    assert run(tiny_backbone_dir, tokens, tmp_path, name="b")["resumed_from"] is None
    assert "were made from other settings: starting afresh" in caplog.text


def test_checkpoints_of_other_tokens_are_not_resumed(tiny_backbone_dir, tmp_path, caplog):
    """Another max_length gives the same rows, ids, labels and training settings, but other token
    ids: the job starts afresh and trains what a fresh run trains (it used to "resume" from the
    old run's last checkpoint, train 0 steps and write the old adapter)."""
    run(tiny_backbone_dir, arch_tokens(tiny_backbone_dir, max_length=48), tmp_path / "rerun")
    shorter = arch_tokens(tiny_backbone_dir, max_length=40)
    metrics = run(tiny_backbone_dir, shorter, tmp_path / "rerun", name="b")
    assert metrics["resumed_from"] is None and metrics["steps_this_run"] == 6
    assert "were made from other tokens: starting afresh" in caplog.text
    run(tiny_backbone_dir, shorter, tmp_path / "fresh")
    assert_same_adapter(tmp_path / "rerun" / "b" / "adapter", adapter_weights(tmp_path / "fresh" / "a" / "adapter"))
    old = adapter_weights(tmp_path / "rerun" / "a" / "adapter")
    assert any(
        not np.allclose(old[k].numpy(), v.numpy())
        for k, v in adapter_weights(tmp_path / "fresh" / "a" / "adapter").items()
    )


def test_checkpoints_of_another_backbone_are_not_resumed(tiny_backbone_dir, tokens, tmp_path, caplog):
    run(tiny_backbone_dir, tokens, tmp_path)
    other = tmp_path / "other_backbone"
    shutil.copytree(tiny_backbone_dir, other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "rms_norm_eps": 1e-5}))
    assert run(other, tokens, tmp_path, name="b")["resumed_from"] is None
    assert "were made from other backbone: starting afresh" in caplog.text


def test_a_half_written_checkpoint_is_removed_and_the_last_complete_one_resumed(
    tiny_backbone_dir, tokens, tmp_path, caplog
):
    """A job killed while saving checkpoint-6 leaves a directory without trainer_state.json: the
    rerun removes it (logged), resumes from checkpoint-4 and ends as an uninterrupted run."""
    run(tiny_backbone_dir, tokens, tmp_path / "full")
    run(tiny_backbone_dir, tokens, tmp_path / "killed")
    ckpt = tmp_path / "killed" / "ckpt"
    shutil.rmtree(ckpt / "checkpoint-6")
    (ckpt / "checkpoint-6").mkdir()
    (ckpt / "checkpoint-6" / "adapter_model.safetensors").write_bytes(b"\0" * 100)  # cut off mid-write
    metrics = run(tiny_backbone_dir, tokens, tmp_path / "killed", name="b")
    assert metrics["resumed_from"].endswith("checkpoint-4")
    assert "checkpoint-6: incomplete" in caplog.text
    assert_same_adapter(tmp_path / "killed" / "b" / "adapter", adapter_weights(tmp_path / "full" / "a" / "adapter"))


def test_a_second_trainer_on_the_same_checkpoints_stops(tiny_backbone_dir, tokens, tmp_path):
    """An orphaned training job still writing checkpoints (say, left running by a killed snakemake)
    holds the lock: a second one stops with a clear message instead of writing beside it."""
    import subprocess
    import sys

    from arena_pref.errors import InputError

    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, sys, time; f = open(sys.argv[1], 'a+'); fcntl.flock(f, fcntl.LOCK_EX); "
            "f.write('4242'); f.flush(); print('locked', flush=True); time.sleep(120)",
            str(tmp_path / "ckpt.lock"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(InputError, match=r"another training job \(pid 4242\) is writing checkpoints to"):
            run(tiny_backbone_dir, tokens, tmp_path)
        assert not (tmp_path / "a" / "adapter").exists()
    finally:
        holder.kill()
        holder.wait()
    assert run(tiny_backbone_dir, tokens, tmp_path)["steps"] == 6  # the lock died with its holder


def test_swap_augment_mirrors_labels(tokens):
    cache, rows = tokens
    seqs, y, segs = trainer.training_rows(cache, rows, swap_augment=True)
    n = len(cache)
    assert len(seqs) == 2 * n
    assert list(y.labels[n:]) == [{0: 1, 1: 0, 2: 2}[v] for v in rows.labels]
    assert seqs[n] == list(cache["input_ids_swap"][0])


def test_length_grouped_sampler_is_a_function_of_seed_and_epoch():
    lengths = np.random.default_rng(0).integers(1, 100, size=40)
    s = trainer.LengthGroupedSampler(lengths, batch_size=2, seed=3, mega=4)
    first = list(s)
    assert sorted(first) == list(range(40))
    s.set_epoch(1)
    second = list(s)
    assert second != first
    s.set_epoch(0)
    assert list(s) == first
    # within each mega-batch of 8 rows, longest first
    for g in range(0, 40, 8):
        chunk = lengths[first[g : g + 8]]
        assert list(chunk) == sorted(chunk, reverse=True)


def test_gradient_accumulation_matches_one_big_batch(tiny_backbone_dir, tokens, tmp_path):
    """batch 2 x accumulation 2 takes the same steps as batch 4: our loss (own pooling and head)
    is scaled by the rows of the whole accumulated step, not once per micro-batch."""
    # plain SGD without clipping: Adam would hide a wrongly scaled gradient
    big = {
        **SETTINGS,
        "quantization": "none",
        "train": {**SETTINGS["train"], "epochs": 1, "optimizer": "sgd", "lr": 0.5, "max_grad_norm": 1e9},
    }
    small = {**big, "train": {**big["train"], "batch_size": 2, "grad_accum": 2}}
    run(tiny_backbone_dir, tokens, tmp_path / "big", settings=big)
    run(tiny_backbone_dir, tokens, tmp_path / "small", settings=small)
    a, b = adapter_weights(tmp_path / "big/a/adapter"), adapter_weights(tmp_path / "small/a/adapter")
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(b[k].numpy(), a[k].numpy(), rtol=0, atol=1e-5, err_msg=k)


def test_token_budget_sampler_covers_rows_within_budget():
    lengths = np.random.default_rng(0).integers(5, 200, size=60)
    for packed in (False, True):
        s = trainer.TokenBudgetBatchSampler(lengths, 400, packed=packed, seed=3)
        epochs = []
        for epoch in range(3):
            s.set_epoch(epoch)
            batches = list(s)
            epochs.append(batches)
            assert len(batches) == len(s)  # the Trainer's step count holds every epoch
            assert sorted(i for b in batches for i in b) == list(range(60))
            cost = [lengths[b].sum() if packed else len(b) * lengths[b].max() for b in batches]
            assert max(cost) <= 400 and cost[0] == max(cost)  # costliest first
            assert min(len(b) for b in batches) < max(len(b) for b in batches)  # rows vary by length
        assert epochs[0] != epochs[1]
        s.set_epoch(0)
        assert list(s) == epochs[0]  # a function of (seed, epoch): resumes see the same batches
    # a row longer than the budget goes alone
    s = trainer.TokenBudgetBatchSampler([500, 10, 10], 100, packed=True, seed=0)
    assert sorted(map(sorted, s)) == [[0], [1, 2]]


def test_token_budget_steps_weigh_rows_not_batches(tiny_backbone_dir, tokens, tmp_path):
    """One optimizer step over token-budget micro-batches of uneven row counts equals one step
    over all rows at once: the loss is scaled by the rows of the accumulated step."""
    base = {
        **SETTINGS,
        "quantization": "none",
        "train": {
            **SETTINGS["train"],
            "epochs": 1,
            "optimizer": "sgd",
            "lr": 0.5,
            "max_grad_norm": 1e9,
            "warmup_steps": 0,
            "batch_size": 12,
        },
    }
    seqs, _, _ = trainer.training_rows(tokens[0], tokens[1], False)
    budget = 3 * max(len(s) for s in seqs)
    n_batches = len(trainer.TokenBudgetBatchSampler([len(s) for s in seqs], budget, packed=False, seed=0))
    assert 2 < n_batches < 12
    budgeted = {**base, "train": {**base["train"], "max_tokens_per_batch": budget, "grad_accum": n_batches}}
    one = run(tiny_backbone_dir, tokens, tmp_path / "one", settings=base)
    many = run(tiny_backbone_dir, tokens, tmp_path / "many", settings=budgeted)
    assert one["steps"] == many["steps"] == 1
    assert_same_trained_adapters(tmp_path / "one/a/adapter", tmp_path / "many/a/adapter")


def test_packed_training_falls_back_to_padded_batches(tiny_backbone_dir, tokens, tmp_path, monkeypatch, caplog):
    padded = {
        **SETTINGS,
        "quantization": "none",
        "train": {**SETTINGS["train"], "epochs": 1, "optimizer": "sgd", "lr": 0.5, "max_grad_norm": 1e9},
    }
    run(tiny_backbone_dir, tokens, tmp_path / "padded", settings=padded)
    monkeypatch.setattr(trainer, "packing_unsupported", lambda model: "no attention interface")
    run(
        tiny_backbone_dir,
        tokens,
        tmp_path / "fallback",
        settings={**padded, "train": {**padded["train"], "packing": True}},
    )
    assert "padded batches instead" in caplog.text
    a, b = adapter_weights(tmp_path / "padded/a/adapter"), adapter_weights(tmp_path / "fallback/a/adapter")
    for k in a:
        np.testing.assert_allclose(b[k].numpy(), a[k].numpy(), rtol=0, atol=1e-6, err_msg=k)


# --------------------------------------------------------------------------- GPU presets' settings on CPU


def arch_tokens(path, n=12, max_length=48):
    """The tokens fixture's rows for any tiny backbone."""
    df = pd.DataFrame(
        {
            "id": np.arange(n),
            "prompt": [[f"what is rust {i}?"] for i in range(n)],
            "response_a": [["the answer about rust is long " * (1 + i % 3)] for i in range(n)],
            "response_b": [["stars " * (1 + i % 4)] for i in range(n)],
        }
    )
    cache = tokenize_frame(df, loading.load_tokenizer(path), strategy="per_part", max_length=max_length)
    return cache, targets.hard(np.arange(n) % 3)


def sgd_settings(quantization, **train_changes):
    """Two plain SGD steps (no clipping, no warm-up): the adapter after them is a function of the
    gradients, so equal adapters mean equal gradients. LoRA on attention and MLP."""
    return {
        **SETTINGS,
        "quantization": quantization,
        "lora": {**SETTINGS["lora"], "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "down_proj"]},
        "train": {
            **SETTINGS["train"],
            "epochs": 1,
            "batch_size": 6,
            "optimizer": "sgd",
            "lr": 0.5,
            "max_grad_norm": 1e9,
            "warmup_steps": 0,
            **train_changes,
        },
    }


@pytest.mark.parametrize("arch", ["gemma2", "llama"])
@pytest.mark.parametrize("quantization", ["none", "4bit"])
def test_packed_training_with_gradient_checkpointing_matches_padded(request, tmp_path, arch, quantization):
    """Checkpointed layers recompute in the backward pass, after the forward returned: they must
    attend per packed sequence then too. Packed + gradient checkpointing trains the adapter that
    padded batches without checkpointing train (fp32, to 1e-5)."""
    path = request.getfixturevalue("tiny_backbone_dir" if arch == "gemma2" else "tiny_llama_dir")
    tokens = arch_tokens(path)
    padded = sgd_settings(quantization)
    checkpointed = sgd_settings(quantization, packing=True, gradient_checkpointing=True)
    assert run(path, tokens, tmp_path / "padded", settings=padded)["steps"] == 2
    run(path, tokens, tmp_path / "ckpt", settings=checkpointed)
    assert_same_trained_adapters(tmp_path / "padded/a/adapter", tmp_path / "ckpt/a/adapter")


@pytest.mark.parametrize("quantization", ["4bit", "none"])
@pytest.mark.parametrize("packing", [True, False])
def test_bfloat16_training_runs_attention_in_bfloat16(tiny_backbone_dir, tmp_path, monkeypatch, quantization, packing):
    """dtype bfloat16 trains in mixed precision: attention gets bf16 queries under autocast, in the
    forward pass and in the gradient-checkpointing recompute (the body and head are called
    directly, outside the autocast accelerate wraps around ``model.forward``)."""
    from transformers.models.gemma2 import modeling_gemma2

    seen = []
    real = modeling_gemma2.eager_attention_forward

    def recording(module, query, *args, **kwargs):
        seen.append((query.dtype, torch.is_autocast_enabled("cpu"), torch.is_grad_enabled()))
        return real(module, query, *args, **kwargs)

    monkeypatch.setattr(modeling_gemma2, "eager_attention_forward", recording)
    settings = {
        **SETTINGS,
        "quantization": quantization,
        "dtype": "bfloat16",
        "train": {**SETTINGS["train"], "epochs": 1, "packing": packing, "gradient_checkpointing": True},
    }
    metrics = run(tiny_backbone_dir, tokens=arch_tokens(tiny_backbone_dir), tmp_path=tmp_path, settings=settings)
    assert np.isfinite(metrics["train_loss"]) and metrics["steps"] == 3
    assert seen and all(dtype == torch.bfloat16 and autocast for dtype, autocast, _ in seen), set(seen)
    layers, calls_per_layer = 2, 4 if packing else 1  # packed: once per sequence (4 rows a batch)
    assert len(seen) == 2 * 3 * layers * calls_per_layer  # forward and recompute of every layer


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_full_precision_base_trains_and_predicts_in_16_bit(tiny_backbone_dir, tmp_path, dtype):
    """quantization none with a 16-bit dtype: the head's trained copy (fp32) computes the logits,
    not the frozen 16-bit original peft keeps beside it."""
    from arena_pref.predict import inference

    settings = {**SETTINGS, "quantization": "none", "dtype": dtype, "train": {**SETTINGS["train"], "epochs": 1}}
    cache, labels = arch_tokens(tiny_backbone_dir)
    metrics = run(tiny_backbone_dir, (cache, labels), tmp_path, settings=settings)
    assert np.isfinite(metrics["train_loss"])
    prediction = model_settings(**settings, max_length=48, predict={"max_tokens_per_batch": 256}).prediction
    pred = inference.predict_on_devices(
        backbone=tiny_backbone_dir,
        adapter_dir=tmp_path / "a" / "adapter",
        tokens=cache,
        settings=prediction,
        tta=True,
        devices=["cpu"],
        threads=1,
    )
    probs = pred[["a", "b", "tie", "a_tta", "b_tta", "tie_tta"]].to_numpy()
    assert np.isfinite(probs).all()
    np.testing.assert_allclose(probs[:, :3].sum(1), 1, atol=1e-5)


def with_padding_side(backbone, side, tmp_path):
    """A copy of ``backbone`` whose tokenizer pads on ``side``."""
    copy = tmp_path / f"{side}_padding_backbone"
    shutil.copytree(backbone, copy)
    config = json.loads((copy / "tokenizer_config.json").read_text())
    (copy / "tokenizer_config.json").write_text(json.dumps({**config, "padding_side": side}))
    assert loading.load_tokenizer(copy).padding_side == side
    return copy


@pytest.mark.parametrize("pool", ["auto", "pair"])
@pytest.mark.parametrize("side", ["left", "right"])
def test_packed_training_matches_padded(tiny_backbone_dir, tmp_path, pool, side):
    """Padding-free packed batches train the same adapter as padded ones, with either pooling and
    whichever side the tokenizer pads on (Gemma's and Llama's pad on the left in transformers 5.x):
    padded batches pool the last real token and pair-pool the answers' own tokens."""
    backbone = with_padding_side(tiny_backbone_dir, side, tmp_path)
    tokens = arch_tokens(backbone, max_length=160)
    assert len({len(s) for s in tokens[0]["input_ids"]}) > 3  # batches need padding
    padded = {**sgd_settings("none"), "pooling": pool}
    packed = {**padded, "train": {**padded["train"], "packing": True}}
    run(backbone, tokens, tmp_path / "padded", settings=padded)
    run(backbone, tokens, tmp_path / "packed", settings=packed)
    assert_same_trained_adapters(tmp_path / "padded/a/adapter", tmp_path / "packed/a/adapter")


def test_distillation_trains_toward_the_teacher_and_the_labels_as_alpha_weighs_them(
    tiny_backbone_dir, tokens, tmp_path
):
    """alpha 1: the labels do not matter (permuted, or none at all as on pseudo-labelled rows) and
    the teacher's probabilities do; alpha 0: the teacher does not matter (plain training)."""
    cache, rows = tokens
    rng = np.random.default_rng(0)
    teacher, other = rng.dirichlet(np.ones(3), len(cache)), rng.dirichlet(np.ones(3), len(cache))
    n, settings = len(cache), sgd_settings("none")

    def adapter(name, labels, soft=None, alpha=None):
        t = targets.Targets(labels, soft, None if soft is None else np.full(n, float(alpha)))
        run(tiny_backbone_dir, (cache, t), tmp_path / name, settings=settings)
        return adapter_weights(tmp_path / name / "a" / "adapter")

    def same(a, b):
        return all(np.allclose(a[k].numpy(), b[k].numpy(), rtol=0, atol=1e-6) for k in a)

    soft = adapter("soft", rows.labels, teacher, 1.0)
    assert same(soft, adapter("permuted", rows.labels[::-1].copy(), teacher, 1.0))
    assert same(soft, adapter("unlabelled", np.full(n, targets.NO_LABEL), teacher, 1.0))
    assert not same(soft, adapter("other_teacher", rows.labels, other, 1.0))
    assert same(adapter("alpha0", rows.labels, teacher, 0.0), adapter("plain", rows.labels))
    assert not same(soft, adapter("plain_again", rows.labels))


@pytest.fixture
def reward_dir(tiny_backbone_dir, tmp_path):
    """A tiny random reward model: the tiny Gemma-2's body under a one-logit head, as Gemma-2
    reward models are saved (Gemma2ForSequenceClassification, num_labels 1), with its tokenizer."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    config = AutoConfig.from_pretrained(tiny_backbone_dir, num_labels=1)
    reward = AutoModelForSequenceClassification.from_config(config)
    base = AutoModelForSequenceClassification.from_pretrained(tiny_backbone_dir)
    reward.model.load_state_dict(base.model.state_dict())
    out = tmp_path / "reward"
    reward.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_backbone_dir).save_pretrained(out)
    return out


def test_a_reward_model_backbone_gets_a_fresh_three_class_head_and_keeps_its_body(reward_dir, tokens, tmp_path, caplog):
    """Some top-5 teams started from a reward model (a Gemma-2 with a one-logit head): its body is
    loaded, its head replaced by a fresh 3-class one (logged), trained in 4-bit QLoRA and saved with
    the adapter, so that prediction reads the trained head."""
    import logging

    caplog.set_level(logging.INFO, logger="arena_pref.models.loading")
    model = loading.load_model(reward_dir, device="cpu")
    saved = load_file(str(reward_dir / "model.safetensors"))
    assert saved["score.weight"].shape[0] == 1 and model.score.weight.shape[0] == 3
    body = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(model.state_dict()[body], saved[body])
    assert (
        "the backbone is a Gemma2ForSequenceClassification with a one-logit head (a reward model): a fresh "
        "3-class head replaces it" in caplog.text
    )
    assert run(reward_dir, tokens, tmp_path)["steps"] == 6
    cache, _ = tokens
    ids = torch.tensor([list(cache["input_ids"].iloc[0])])
    predicting = model_settings(**SETTINGS).prediction.loading
    pad = loading.load_tokenizer(reward_dir).pad_token_id
    first, second = (
        loading.load_for_inference(reward_dir, tmp_path / "a/adapter", predicting, pad_token_id=pad, device="cpu")
        for _ in range(2)
    )
    with torch.inference_mode():  # the trained head both times, not two fresh random ones
        assert torch.equal(first(input_ids=ids).logits, second(input_ids=ids).logits)
