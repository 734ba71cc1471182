"""The prepared GPU check (arena_pref.tools.gpu_check): its CPU mode through `make gpu-check`, its time
budget, and the device wheels."""

import json
import subprocess
import sys
import zipfile
from datetime import date

import pytest
from arena_pref.tools import gpu_check
from workflow_helpers import REPO


@pytest.mark.slow
def test_make_gpu_check_runs_every_part_in_cpu_mode(tmp_path):
    subprocess.run(
        ["make", "-s", "gpu-check", "GPU_CHECK_ARGS=--cpu", f"GPU_CHECK_OUT={tmp_path}"],
        cwd=REPO,
        check=True,
        timeout=900,
    )
    report = json.loads((tmp_path / f"{date.today().isoformat()}_cpu.json").read_text())
    assert {name: part["status"] for name, part in report["parts"].items()} == dict.fromkeys(gpu_check.PARTS, "ok")
    predict = report["parts"]["predict"]["result"]["by_precision"]["float32"]
    assert {
        "padded_eager",
        "packed_per_sequence",
        "packed_flex",
        "packed_flex_fp32_adapter",
        "packed_merged",
        "packed_merged_compiled",
    } <= set(predict)
    assert predict["packed_flex"]["attention"] == "flex_attention"
    assert all(entry["agrees"] for name, entry in predict.items() if name != "padded_eager")
    train = report["parts"]["train"]["result"]["methods"]
    assert set(train) == {"hf_trainer_padded", "ours_packed"} and all(m["tokens_per_s"] > 0 for m in train.values())
    assert train["ours_packed"]["attention"] == "eager" and train["ours_packed"]["train_loss"] > 0
    grads = report["parts"]["grads"]["result"]
    assert grads["attention"] == "eager" and set(grads["entries"]) == {"packed", "packed_checkpointed"}
    assert all(e["agrees"] and e["largest_grad"] > 1e-3 for e in grads["entries"].values())
    assert report["parts"]["liger"]["result"]["skipped"].startswith("its Triton kernels need a CUDA GPU")
    for name, collected in (("presets", "1 test collected"), ("tiny", "3 tests collected")):
        result = report["parts"][name]["result"]  # one run of every preset; a judge, a student, two workers
        assert result["collected_only"] and result["summary"][0].startswith(collected), result["summary"]


def test_a_part_cut_off_by_the_budget_is_reported_and_the_rest_skipped(tmp_path):
    """The JSON is written after each part: a part past its share of the budget is stopped and
    reported as timed out, and the parts after it as skipped, where no time is left."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "arena_pref.tools.gpu_check",
            "run",
            "--cpu",
            "--budget-s",
            "6",
            "--parts",
            "predict",
            "train",
            "--out-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(next(tmp_path.glob("*_cpu.json")).read_text())
    assert report["parts"]["predict"]["status"].startswith("timed out after 3 s")
    assert report["parts"]["train"]["status"] in ("skipped", "timed out after 1 s", "timed out after 2 s")


def test_the_out_file_is_named_by_date_and_gpu():
    assert gpu_check.out_name("NVIDIA H200", "2026-12-03") == "2026-12-03_nvidia-h200.json"
    assert gpu_check.out_name("NVIDIA H100 80GB HBM3", "2026-11-26") == "2026-11-26_nvidia-h100-80gb-hbm3.json"


def test_bitsandbytes_keeps_only_the_devices_cuda_library(tmp_path):
    wheel = tmp_path / "bitsandbytes-0.50.2-py3-none-manylinux_2_24_x86_64.whl"
    names = [
        "bitsandbytes/__init__.py",
        "bitsandbytes/libbitsandbytes_cpu.so",
        "bitsandbytes/libbitsandbytes_cuda128.so",
        "bitsandbytes/libbitsandbytes_cuda130.so",
        "bitsandbytes/libbitsandbytes_rocm72.so",
    ]
    with zipfile.ZipFile(wheel, "w") as z:
        for name in names:
            z.writestr(name, "x")
        z.writestr("bitsandbytes-0.50.2.dist-info/RECORD", "".join(f"{n},sha256=abc,1\n" for n in names))
    gpu_check.keep_one_cuda_library(wheel, "130")
    with zipfile.ZipFile(wheel) as z:
        kept = [n for n in z.namelist() if not n.endswith("RECORD")]
        record = z.read("bitsandbytes-0.50.2.dist-info/RECORD").decode()
    assert kept == [
        "bitsandbytes/__init__.py",
        "bitsandbytes/libbitsandbytes_cpu.so",
        "bitsandbytes/libbitsandbytes_cuda130.so",
    ]
    assert [line.split(",")[0] for line in record.splitlines()] == kept
