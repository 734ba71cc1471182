"""Model parallel (``compute.model_parallel``): the device map of a model split over GPUs, and a
split model's logits, training and prediction against the unsplit model's.

A CPU has one device, so the split runs here over two CPU "devices" (:class:`OneOfTwoCpus`):
transformers sees two devices in the map and dispatches the model with accelerate's hooks as it
does over two GPUs (a hook per piece, moving its inputs to its device), and the Trainer treats the
model as model-parallel. What this cannot show is a tensor left on the wrong GPU: on the CPU every
device is the same memory.
"""

import numpy as np
import pandas as pd
import pytest
import torch
from arena_pref import settings
from arena_pref.errors import InputError
from arena_pref.models import loading, placement
from arena_pref.models.pooling import classify, packed_inputs, padded_inputs
from arena_pref.predict import inference
from arena_pref.tools import bench
from arena_pref.train import trainer
from test_train import arch_tokens, assert_same_trained_adapters, sgd_settings
from workflow_helpers import model_settings, planned_resources, snakemake, write_config

GIB = 2**30


class OneOfTwoCpus(str):
    """``"cpu"`` as one of two distinct devices of a device map: equal only to itself, so a map
    over two of them has two devices, as over two GPUs (transformers dispatches the model with
    accelerate's hooks, a hook per piece; the Trainer sees a model-parallel model), and neither is
    the string ``"cpu"`` that accelerate reads as "offloaded to the CPU". Tensors moved to it go to
    the CPU."""

    def __eq__(self, other):
        return self is other

    def __ne__(self, other):
        return self is not other

    def __hash__(self):
        return id(self)


TWO_CPUS = [OneOfTwoCpus("cpu"), OneOfTwoCpus("cpu")]
KEY = "models.gemma2_9b.compute.model_parallel"


def gemma2_9b_config():
    from transformers import Gemma2Config

    return Gemma2Config(**bench.GEMMA2_9B, num_labels=loading.NUM_LABELS, pad_token_id=0)


def layer_names(placed):
    return [n for n in placed if n.startswith("model.layers.")]


@pytest.mark.parametrize("quantization", ["none", "4bit"])
def test_gemma2_9b_over_two_16gb_gpus(quantization):
    """Gemma-2-9B (its real shape, on the meta device) over two 16 GiB GPUs in float16 and in 4-bit:
    every decoder layer whole on one GPU, the embedding on the first, norm and head on the last,
    nothing on the CPU or disk, each GPU under its limit by transformers' own weight accounting,
    and the weights balanced to within one decoder layer."""
    config = gemma2_9b_config()
    limits = {0: 16 * GIB, 1: 16 * GIB}
    placed = placement.device_map(config, quantization=quantization, dtype="float16", limits=limits, key=KEY)
    model, quantizer = placement.skeleton(config, quantization=quantization, dtype="float16")
    sizes = placement.module_bytes(model, quantizer)
    assert layer_names(placed) == [f"model.layers.{i}" for i in range(42)]  # each whole, in order
    assert set(placed.values()) == {0, 1}
    assert placed["model.embed_tokens"] == 0 and placed["model.norm"] == placed["score"] == 1
    used = placement.device_bytes(placed, sizes)
    layer = sizes["model.layers.0"]
    assert sum(used.values()) == sizes[""]
    assert all(used[d] <= 0.9 * limits[d] for d in used)
    assert abs(used[0] - used[1]) <= layer
    on_first = sum(placed[n] == 0 for n in layer_names(placed))
    # balanced by the bytes each GPU holds: the first GPU's embedding (1.8 GB, 16-bit in either case)
    # stands for as many layers as it weighs, the rest split evenly
    embedding_layers = sizes["model.embed_tokens"] / layer
    assert abs((42 - on_first) - (on_first + embedding_layers)) <= 2
    if quantization == "none":
        assert sizes[""] > 17 * GIB and 18 <= on_first <= 21  # too big for one T4; 19 / 23 layers
    else:
        assert sizes[""] < 7 * GIB and on_first >= 10


def test_a_model_too_large_for_its_gpus_stops_naming_the_setting():
    with pytest.raises(InputError) as err:
        placement.device_map(
            gemma2_9b_config(), quantization="none", dtype="float16", limits={0: 8 * GIB, 1: 8 * GIB}, key=KEY
        )
    message = str(err.value)
    assert message.startswith(f"config {KEY}: the weights of this model need 17.") and "\n" not in message
    assert "2 GPUs hold 8.0 + 8.0 GiB" in message and "max_memory_gib" in message


def test_whole_layers_that_do_not_fit_are_refused_not_offloaded():
    """Enough memory in sum, but no cut in whole layers fits: an error, never the CPU or disk."""
    config = gemma2_9b_config()
    model, _ = placement.skeleton(config, quantization="none", dtype="float16")
    total = placement.module_bytes(model, None)[""]
    with pytest.raises(InputError, match=r"do not fit 2 GPUs in whole layers \(GPU \d would hold"):
        placement.device_map(
            config, quantization="none", dtype="float16", key=KEY, limits={0: int(total * 0.9), 1: int(total * 0.1) + 1}
        )


def test_pieces_are_cut_in_forward_order_by_their_share():
    sizes = {"embed": 4, "l0": 2, "l1": 2, "l2": 2, "l3": 2, "head": 0}
    assert placement.partition(sizes, {0: 10, 1: 10}) == {"embed": 0, "l0": 0, "l1": 1, "l2": 1, "l3": 1, "head": 1}
    # a GPU with twice the room gets twice the share
    assert placement.partition(sizes, {0: 10, 1: 20}) == {"embed": 0, "l0": 1, "l1": 1, "l2": 1, "l3": 1, "head": 1}


def parallel(**changes):
    return settings.ModelParallel(**{"key": KEY, "gpus": 2, "max_memory_gib": None, "reserve_gib": 3.0, **changes})


def test_device_limits_default_to_the_memory_less_the_reserve():
    assert placement.device_limits(parallel(), [16 * GIB, 16 * GIB]) == {0: 13 * GIB, 1: 13 * GIB}
    assert placement.device_limits(parallel(max_memory_gib=15.0), [16 * GIB] * 2) == {0: 15 * GIB, 1: 15 * GIB}
    with pytest.raises(InputError, match=rf"config {KEY}\.reserve_gib: 20\.0 GiB is more than a GPU's 16\.0 GiB"):
        placement.device_limits(parallel(reserve_gib=20.0), [16 * GIB] * 2)


def test_the_job_map_needs_the_gpus_and_loads_whole_without_any(caplog):
    load_as = loading.loading_with(quantization="4bit", dtype="float16")
    assert placement.job_device_map("unused", None, load_as, devices=["cuda:0", "cuda:1"]) is None
    assert placement.job_device_map("unused", parallel(), load_as, devices=["cpu"]) is None
    assert "no GPU in this job: the model is loaded whole on cpu" in caplog.text
    with pytest.raises(InputError, match=rf"config {KEY}\.gpus: 2 GPUs, and this job sees 1 \(cuda:0\)"):
        placement.job_device_map("unused", parallel(), load_as, devices=["cuda:0"])


def test_a_job_splits_over_its_gpus_by_their_memory(tmp_path, monkeypatch, caplog):
    """The map a job computes from its GPUs' total memory (less the reserve), over the first
    ``gpus`` of the GPUs it sees, with those GPUs put in; the log names the layers each got."""
    from types import SimpleNamespace

    caplog.set_level("INFO", logger="arena_pref.models.placement")
    gemma2_9b_config().save_pretrained(tmp_path)  # config.json: all the map reads of a backbone
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: SimpleNamespace(total_memory=15 * GIB))
    fp16 = loading.loading_with(dtype="float16")
    placed = placement.job_device_map(tmp_path, parallel(), fp16, devices=["cuda:0", "cuda:1", "cuda:2"])
    assert placed["model.embed_tokens"] == "cuda:0" and placed["score"] == "cuda:1"
    assert set(placed.values()) == {"cuda:0", "cuda:1"}
    assert (
        f"{KEY}: layers placed on cuda:0 layers 0-18 (+ model.embed_tokens); cuda:1 layers 19-41 "
        "(+ model.norm, model.rotary_emb, score)"
    ) in caplog.text
    with pytest.raises(
        InputError,
        match=rf"config {KEY}: the weights of this model need 17\.2 GiB \(float16\) and "
        r"2 GPUs hold 5\.0 \+ 5\.0 GiB",
    ):
        placement.job_device_map(tmp_path, parallel(reserve_gib=10.0), fp16, devices=["cuda:0", "cuda:1"])


# --------------------------------------------------------------------------- a tiny model, split


def tiny_parallel(backbone, quantization):
    """A model-parallel setting that splits the tiny backbone over two devices: each may hold a
    little over half of its weights (quantizing keeps 10% free)."""
    model, quantizer = placement.skeleton(modeling_config(backbone), quantization=quantization, dtype="float32")
    total = placement.module_bytes(model, quantizer)[""]
    share = max(0.65 * total, 1.2 * placement.module_bytes(model, quantizer)["model.embed_tokens"] / 0.9)
    return parallel(max_memory_gib=share / GIB)


def modeling_config(backbone):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(backbone, num_labels=loading.NUM_LABELS)


def split_map(backbone, quantization):
    """The map the GPU path computes (placement.split_map), over two CPU devices."""
    return placement.split_map(
        backbone,
        tiny_parallel(backbone, quantization),
        loading.loading_with(quantization=quantization),  # float32
        devices=TWO_CPUS,
        totals=[0, 0],
    )


@pytest.mark.parametrize("quantization", ["none", "4bit"])
def test_a_split_tiny_model_gives_the_unsplit_logits(tiny_backbone_dir, quantization):
    """map -> load -> forward: the tiny Gemma-2 loaded with a computed two-device map is dispatched
    with accelerate's hooks, and its logits, padded and packed, are the unsplit model's."""
    device_map = split_map(tiny_backbone_dir, quantization)
    assert len(set(device_map.values())) == 2 and device_map["model.embed_tokens"] is TWO_CPUS[0]
    split = loading.load_model(
        tiny_backbone_dir, loading.loading_with(quantization=quantization), device_map=device_map
    )
    whole = loading.load_model(tiny_backbone_dir, loading.loading_with(quantization=quantization))
    assert len(set(split.hf_device_map.values())) == 2
    assert hasattr(split.model.layers[0], "_hf_hook") and hasattr(split.score, "_hf_hook")
    seqs = [[2, 5, 6, 7, 8, 9], [2, 9, 10], [2, 11, 12, 13]]
    ids, mask = padded_inputs(seqs, 6, 0)
    packed, positions, lengths = packed_inputs(seqs)
    with torch.no_grad():
        for kw in (
            dict(input_ids=ids, attention_mask=mask),
            dict(input_ids=packed, position_ids=positions, lengths=lengths),
        ):
            torch.testing.assert_close(classify(split, **kw), classify(whole, **kw), rtol=0, atol=1e-5)


def train_settings(quantization, split):
    compute = {"model_parallel": {"gpus": 2}} if split else {}
    return model_settings(**sgd_settings(quantization, packing=True, gradient_checkpointing=True), compute=compute)


def run_training(backbone, tokens, out, model):
    cache, rows = tokens
    return trainer.train_fold(
        backbone=backbone,
        tokens=cache,
        targets=rows,
        settings=model.training,
        options=model.options,
        ckpt_dir=out / "ckpt",
        adapter_dir=out / "adapter",
        metrics_path=out / "metrics.json",
        threads=1,
    )


@pytest.fixture
def split_on_two_cpus(monkeypatch):
    """Jobs of a model-parallel model split it over two CPU devices as over two GPUs (the map
    placement.split_map computes for them); records the maps loaded."""
    maps = []

    def job_device_map(backbone, parallel, load_as, *, devices):
        if parallel is None:
            return None
        maps.append(split_map(backbone, load_as.quantization))
        return maps[-1]

    monkeypatch.setattr(trainer, "job_device_map", job_device_map)
    monkeypatch.setattr(placement, "job_device_map", job_device_map)
    return maps


@pytest.fixture
def trainers(monkeypatch):
    """The Trainers train_fold makes."""
    made, make = [], trainer._trainer

    def record(*args, **kw):
        made.append(make(*args, **kw))
        return made[-1]

    monkeypatch.setattr(trainer, "_trainer", record)
    return made


@pytest.mark.parametrize("quantization", ["none", "4bit"])
def test_lora_training_of_a_split_model_matches_the_unsplit(
    tiny_backbone_dir, tmp_path, split_on_two_cpus, trainers, quantization
):
    """Two SGD steps of LoRA (packed rows, gradient checkpointing) on the split model: the Trainer
    leaves the dispatched model where it is, and the step losses and the trained adapter (a
    function of the gradients) are the unsplit model's."""
    tokens = arch_tokens(tiny_backbone_dir)
    whole = run_training(tiny_backbone_dir, tokens, tmp_path / "whole", train_settings(quantization, False))
    split = run_training(tiny_backbone_dir, tokens, tmp_path / "split", train_settings(quantization, True))
    assert len(split_on_two_cpus) == 1  # the split run loaded the split map (the whole one none)
    assert [t.is_model_parallel for t in trainers] == [False, True]  # left where it is, no DataParallel
    assert not trainers[1].place_model_on_device and trainers[1].args.n_gpu == 1
    np.testing.assert_allclose(split["step_losses"], whole["step_losses"], rtol=0, atol=1e-5)
    assert_same_trained_adapters(tmp_path / "whole/adapter", tmp_path / "split/adapter")


@pytest.mark.parametrize("method", ["packed", "sorted_dynamic"])
def test_prediction_of_a_split_model_runs_in_one_process(
    tiny_backbone_dir, tmp_path, split_on_two_cpus, monkeypatch, method
):
    """A model-parallel job predicts every batch in its own process with the split model (no
    worker per device), and gets the unsplit model's probabilities."""
    tokens = arch_tokens(tiny_backbone_dir)
    run_training(tiny_backbone_dir, tokens, tmp_path / "whole", train_settings("none", False))
    model = model_settings(
        quantization="none",
        dtype="float32",
        compute={"model_parallel": {"gpus": 2}},
        predict={"method": method, "max_tokens_per_batch": 64, "batch_size": 3},
    )

    def no_workers(*args, **kw):
        raise AssertionError("a split model must not be shared out to worker processes")

    monkeypatch.setattr(inference, "_predict_in_workers", no_workers)
    kw = dict(
        backbone=tiny_backbone_dir,
        adapter_dir=tmp_path / "whole/adapter",
        tokens=tokens[0],
        settings=model.prediction,
        tta=True,
        devices=["cpu", "cpu"],
    )
    split = inference.predict_on_devices(**kw, options=model.options)
    assert len(split_on_two_cpus) == 1
    whole = inference.predict_on_devices(**{**kw, "devices": ["cpu"]})
    pd.testing.assert_frame_equal(split, whole, rtol=0, atol=1e-5)


# --------------------------------------------------------------------------- jobs and GPUs


@pytest.mark.slow  # compiles, spawns processes or runs Snakemake: make test, not test-fast
def test_jobs_of_a_split_model_claim_its_gpus(tmp_path):
    """Every train, oof and infer job of a model-parallel model declares its GPUs (resources gpu=2,
    so ``-j2 --resources gpu=2`` runs one such job at a time), as does the time estimate, which
    times it split; the other models' jobs keep one GPU for training and compute.predict_gpus
    for prediction. A data-parallel model's training jobs claim its GPUs, its prediction jobs not;
    over two nodes, its training jobs alone carry the SLURM plugin's multi-node layout."""
    write_config(
        tmp_path,
        **{
            "models.tiny_gemma2.compute": {"model_parallel": {"gpus": 2}},
            "models.tiny_llama.compute": {"data_parallel": {"nodes": 2, "gpus": 1}},
            "models.tiny_llama.train.grad_accum": 2,
        },
    )
    proc = snakemake(
        tmp_path, "-j2", "results/submission.csv", "results/time_estimate.json", "--resources", "gpu=2", "-n"
    )
    gpu, layout = {}, {}
    for rule, wildcards, resources in planned_resources(proc):
        if "gpu" in resources:
            gpu.setdefault((rule, wildcards.get("model")), set()).add(int(resources["gpu"]))
        multi_node = tuple(resources.get(k) for k in ("nodes", "tasks", "mpi", "tasks_per_gpu"))
        layout.setdefault((rule, wildcards.get("model")), set()).add(multi_node)
    assert layout.pop(("train", "tiny_llama")) == {("2", "2", "srun", "0")}
    assert set().union(*layout.values()) == {(None, None, None, None)}
    assert {k: v for k, v in gpu.items() if k[1] == "tiny_gemma2"} == {
        ("train", "tiny_gemma2"): {2},
        ("oof", "tiny_gemma2"): {2},
        ("infer", "tiny_gemma2"): {2},
    }
    assert gpu[("train", "tiny_llama")] == {2}
    assert gpu[("oof", "tiny_llama")] == gpu[("infer", "tiny_llama")] == gpu[("train", "minilm")] == {1}
    assert gpu[("oof", "minilm")] == gpu[("infer", "minilm")] == {1}
    assert gpu[("time_estimate", None)] == {2}


def test_the_readme_example_is_a_valid_config():
    """docs/gpu.md's Gemma-2-9B float16 example (2x T4) passes the config checks as written."""
    import yaml
    from workflow_helpers import REPO

    section = (REPO / "docs" / "gpu.md").read_text().split("## Models too large for one GPU")[1]
    example = yaml.safe_load(section.split("```yaml\n")[1].split("```")[0])["models"]["gemma2_9b_fp16"]
    model = settings.model_config(example, name="gemma2_9b_fp16")
    assert model.options.model_parallel.gpus == 2 and model.training.loading.quantization == "none"
