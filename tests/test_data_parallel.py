"""Data-parallel training (compute.data_parallel): two gloo processes under torchrun on the CPU
train the adapter one process trains with the same global batch, resume a killed run, and a rank
that fails fails the job with its error in the log."""

import numpy as np
import pytest
from arena_pref.logs import setup_logging
from arena_pref.train import trainer
from test_train import SETTINGS, adapter_weights, run, tokens  # noqa: F401 (a fixture)

pytestmark = pytest.mark.slow  # each run starts two processes that import torch and transformers

# plain SGD without clipping, dropout 0: Adam or clipping would hide a wrongly scaled gradient
SGD = {**SETTINGS["train"], "optimizer": "sgd", "lr": 0.5, "max_grad_norm": 1e9, "batch_size": 2}


def settings(processes, **train):
    """Global step 2 rows x 2 accumulation steps: on one process, or shared by two."""
    compute = {"data_parallel": {"gpus": processes}} if processes > 1 else {}
    return {**SETTINGS, "quantization": "none", "compute": compute, "train": {**SGD, "grad_accum": 2, **train}}


def assert_same_adapters(first, second, atol):
    a, b = adapter_weights(first), adapter_weights(second)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(b[k].numpy(), a[k].numpy(), rtol=0, atol=atol, err_msg=k)
    assert any(np.abs(a[k].numpy()).max() > 0 for k in a if "lora_B" in k)  # it did train


def test_two_processes_train_what_one_does_packed_in_bfloat16(tiny_backbone_dir, tokens, tmp_path):  # noqa: F811
    """Packed token-budget batches in bfloat16 mixed precision, as the GPU presets train (accelerate
    wraps the model's forward for it; the padded float32 case: the resume test below)."""
    train = {"packing": True, "max_tokens_per_batch": 40}
    setup_logging(tmp_path / "job.log")
    one = run(tiny_backbone_dir, tokens, tmp_path / "one", settings={**settings(1, **train), "dtype": "bfloat16"})
    two = run(tiny_backbone_dir, tokens, tmp_path / "two", settings={**settings(2, **train), "dtype": "bfloat16"})
    assert two["processes"] == 2 and one["processes"] == 1 and two["steps"] == one["steps"]
    # the ranks add the two batches' float32 gradients in another order than one process does
    np.testing.assert_allclose(two["step_losses"], one["step_losses"], rtol=1e-4)
    assert_same_adapters(tmp_path / "one/a/adapter", tmp_path / "two/a/adapter", atol=1e-4)
    logged = (tmp_path / "job.log").read_text()
    assert (
        "data-parallel training on 2 processes" in logged and "INFO [rank 0] arena_pref.train.trainer: step" in logged
    )


def test_a_killed_run_resumes_on_two_processes(tiny_backbone_dir, tokens, tmp_path, monkeypatch):  # noqa: F811
    """Padded float32 batches. Every rank is killed right after checkpoint 4, in the second epoch
    (3 steps an epoch; as a node failure would); the rerun resumes all ranks from it, with that
    epoch's batch order, and ends with the uninterrupted single-process adapter."""
    setup_logging(tmp_path / "job.log")
    one = run(tiny_backbone_dir, tokens, tmp_path / "one", settings=settings(1))
    assert one["steps"] == 6 and one["epochs"] == 2
    monkeypatch.setenv(trainer.KILL_AFTER_CHECKPOINT, "4")
    with pytest.raises(RuntimeError, match="data-parallel training failed"):
        run(tiny_backbone_dir, tokens, tmp_path / "two", settings=settings(2))
    assert not (tmp_path / "two/a/adapter").exists() and (tmp_path / "two/ckpt/checkpoint-4").is_dir()
    assert not (tmp_path / "two/ckpt.ddp").exists()  # the failed launch removed its hand-over file
    monkeypatch.delenv(trainer.KILL_AFTER_CHECKPOINT)
    two = run(tiny_backbone_dir, tokens, tmp_path / "two", settings=settings(2))
    assert two["resumed_from"].endswith("checkpoint-4") and two["steps_this_run"] == one["steps"] - 4
    assert not (tmp_path / "two/ckpt.ddp").exists()
    np.testing.assert_allclose(two["step_losses"], one["step_losses"], rtol=1e-5)
    assert_same_adapters(tmp_path / "one/a/adapter", tmp_path / "two/a/adapter", atol=1e-5)


def test_a_failing_rank_fails_the_job_with_its_error_in_the_log(tiny_backbone_dir, tokens, tmp_path, monkeypatch):  # noqa: F811
    from arena_pref.train.data_parallel import FAIL_RANK

    setup_logging(tmp_path / "job.log")
    monkeypatch.setenv(FAIL_RANK, "1")
    with pytest.raises(RuntimeError, match="data-parallel training failed"):
        run(tiny_backbone_dir, tokens, tmp_path / "two", settings=settings(2))
    logged = (tmp_path / "job.log").read_text()
    assert "ERROR [rank 1] arena_pref.train.data_parallel: rank 1 of 2 failed" in logged
    assert f"RuntimeError: {FAIL_RANK}=1: rank 1 fails on purpose" in logged
    assert not (tmp_path / "two/a/adapter").exists()
