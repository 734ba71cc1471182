"""The benchmarks behind `make bench` run end to end at toy sizes (their numbers are not tested:
speed targets live in the JSON they write, not in timed tests)."""

import pytest
import torch
from arena_pref.tools import bench

SMALL_GEMMA2 = {
    **bench.TINY_GEMMA2,
    "vocab_size": 512,
    "sliding_window": 256,
    "final_logit_softcapping": 30.0,
    "max_position_embeddings": 512,
}
METHODS = {"fixed", "sorted_dynamic", "token_budget", "packed"}


@pytest.mark.slow  # compiles, spawns processes or runs Snakemake: make test, not test-fast
def test_inference_bench_compares_methods_and_the_merged_adapter():
    result = bench.bench_inference(rows=10, max_length=2048, budget=4096, pack_budget=2048, threads=1)
    methods = result["methods"]
    assert set(methods) == METHODS | {"packed_merged"}
    assert methods["packed"]["padding_efficiency"] == 1.0
    assert methods["fixed"]["padding_efficiency"] < methods["sorted_dynamic"]["padding_efficiency"]
    assert all(m["tokens_per_s"] > 0 for m in methods.values())
    # same rows, same probabilities, whatever the batching (fp32 merge of a 4-bit base: to bf16
    # kernel rounding on CPUs with AVX512-BF16)
    assert all(m["max_abs_diff_vs_first"] < 5e-3 for k, m in methods.items() if k != "fixed")
    assert methods["packed_merged"]["model"] == "merged"
    assert result["best"]["method"] in methods


def test_gpu_bench_reports_fraction_of_peak_per_precision(caplog):
    """The workflow's prediction path: adapter attached, merged and unmerged, flash-attention where
    it runs (not on a CPU: the model's default attention, logged)."""
    result = bench.bench_gpu(
        rows=6,
        max_length=128,
        budget=512,
        pack_budget=512,
        dtype="float32",
        shape=SMALL_GEMMA2,
        peak_tflops=1.0,
        threads=1,
    )
    assert set(result["by_precision"]) == {"float32", "4bit"}
    for run in result["by_precision"].values():
        assert set(run["methods"]) == METHODS | {"packed_merged"}
        assert run["methods"]["packed_merged"]["merged"] is True
        assert run["attention"] == "eager"
        for m in run["methods"].values():
            expected = 2 * result["setup"]["non_embedding_parameters"] * m["tokens_per_s"] / 1e12
            assert m["fraction_of_bf16_peak"] == pytest.approx(expected)
        assert run["methods"]["packed_merged"]["max_abs_diff_vs_first"] < 5e-3
    assert result["setup"]["parameters"] > result["setup"]["non_embedding_parameters"]
    assert "flash_attention_2 is not used" in caplog.text


def test_gpu_bench_records_out_of_memory_and_goes_on(monkeypatch):
    real, calls = bench.time_method, []

    def short_of_memory(model, seqs, batches, **kw):
        calls.append(1)
        if len(calls) == 2:  # the second method: sorted_dynamic
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real(model, seqs, batches, **kw)

    monkeypatch.setattr(bench, "time_method", short_of_memory)
    result = bench.bench_gpu(
        rows=6,
        max_length=128,
        budget=512,
        pack_budget=512,
        dtype="float32",
        shape=SMALL_GEMMA2,
        peak_tflops=1.0,
        quantizations=("4bit",),
        threads=1,
    )
    methods = result["by_precision"]["4bit"]["methods"]
    assert methods["sorted_dynamic"]["error"].startswith("out of memory")
    assert all("tokens_per_s" in m for k, m in methods.items() if k != "sorted_dynamic")
    best = result["by_precision"]["4bit"]["best"]
    assert best["method"] in methods and best["speedup_vs_sorted_dynamic"] is None


def test_random_model_is_saved_in_shards(tmp_path):
    """Saving shard by shard keeps a 9B model's host-memory cost to one shard at a time."""
    bench.random_gemma2(tmp_path / "model", shape=SMALL_GEMMA2, dtype=torch.float32, max_shard_size="100KB")
    assert len(list((tmp_path / "model").glob("model-*.safetensors"))) > 3
    assert (tmp_path / "model" / "model.safetensors.index.json").exists()


def test_gpu_bench_command_honours_quantization_and_threads(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(bench, "bench_gpu", lambda **kw: seen.update(kw) or {"by_precision": {}})
    bench.main(["gpu", "--quantization", "4bit", "--threads", "3", "--out", str(tmp_path / "gpu.json")])
    assert seen["quantizations"] == ("4bit",) and seen["threads"] == 3


def test_gpu_peak_table_matches_specific_names_first():
    assert bench.peak_bf16_flops("NVIDIA H100 PCIe") == 756e12
    assert bench.peak_bf16_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert bench.peak_bf16_flops("NVIDIA H200") == 989e12
    assert bench.peak_bf16_flops("NVIDIA L40S") == 362e12
    assert bench.peak_bf16_flops("NVIDIA L4") == 121e12
    assert bench.peak_bf16_flops("Tesla T4") is None  # no bf16: pass --peak-tflops


def test_training_bench_runs_baseline_and_ours():
    result = bench.bench_training(rows=16, max_length=128, batch_size=4, threads=1)
    assert set(result["methods"]) == {
        "hf_trainer_padded",
        "ours_length_grouped",
        "ours_packed",
        "ours_packed_token_budget",
    }
    assert all(m["tokens_per_s"] > 0 for m in result["methods"].values())


@pytest.mark.slow  # compiles, spawns processes or runs Snakemake: make test, not test-fast
def test_compile_bench_compares_eager_and_compiled_passes():
    # packed passes only: compiling costs about 25 s a method on 2 cores; test_predict compiles
    # padded passes, and make gpu-check's CPU mode compiles a merged packed one
    result = bench.bench_compile(rows=6, max_length=128, budget=512, pack_budget=256, threads=1, methods=("packed",))
    assert set(result["methods"]) == {"packed"} and set(bench.COMPILED_METHODS) == {"token_budget", "packed"}
    for method in result["methods"]:
        entry = result["methods"][method]
        assert set(entry) == {"eager", "compiled_first_pass", "compiled_second_pass"}
        assert entry["compiled_second_pass"]["max_abs_diff_vs_eager"] < 1e-5
