"""The judge's optional vLLM backend (``backend: vllm``): the same sequences, the same answer tokens.

vLLM is not a dependency of arena-pref and was never installed where this was written: this module
is small on purpose, imports ``vllm`` only when called, and is unit-tested with a stand-in module
that checks the requests it builds and how the answers are mapped back. Agreement with the
transformers backend on a GPU has not been checked.

Each judged sequence (token ids, :mod:`judge_prompt`) is one request that generates a single token
(``SamplingParams(max_tokens=1, allowed_token_ids=<the three answer tokens>, logprobs=3)``) with
the engine's ``logprobs_mode="processed_logprobs"`` (vLLM 0.10.2 or newer, assumed), so that the
log-probabilities returned are those after the restriction to the three tokens: the top three are
exactly the answers, their log-softmax. They stand for the answer logits: calibration's
softmax(logits / T + b) does not change when a row's logits move by a constant.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from arena_pref.errors import InputError

log = logging.getLogger(__name__)

VLLM_QUANTIZATION = {"4bit": "bitsandbytes", "none": None}  # 8bit is refused at config check


def missing_vllm(model):
    """The one-line error for ``backend: vllm`` where vLLM cannot be imported, or None."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        return (
            f"config models.{model}.backend: vllm is not installed: install it (pip install vllm, on a GPU "
            "machine) or use backend: transformers"
        )
    return None


def engine_args(backbone, settings):
    """The keyword arguments of ``vllm.LLM`` for a judge's settings."""
    args = {
        "model": str(backbone),
        "dtype": settings.dtype,
        # vLLM needs room for the generated token too: a row cut to exactly max_length is a
        # prompt of max_length tokens, and the engine refuses prompt + max_tokens > max_model_len
        "max_model_len": settings.prompt.max_length + 1,
        "seed": 0,
        "logprobs_mode": "processed_logprobs",
    }
    quantization = VLLM_QUANTIZATION[settings.quantization]
    if quantization:
        args["quantization"] = quantization
    return args


def score_vllm(backbone, sequences, *, answer_ids, settings):
    """Answer logits (n, 3) of ``sequences`` (token id lists) by vLLM, in the order given."""
    import vllm

    llm = vllm.LLM(**engine_args(backbone, settings))
    params = vllm.SamplingParams(
        max_tokens=1, temperature=1.0, logprobs=len(answer_ids), allowed_token_ids=[int(i) for i in answer_ids]
    )
    prompts = [{"prompt_token_ids": [int(t) for t in seq]} for seq in sequences]
    t0 = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    seconds = time.perf_counter() - t0
    log.info(
        "vLLM judged %d sequences in %.1f s (%.0f tokens/s)",
        len(prompts),
        seconds,
        sum(len(p["prompt_token_ids"]) for p in prompts) / max(seconds, 1e-9),
    )
    return answer_logprobs(outputs, answer_ids)


def answer_logprobs(outputs, answer_ids):
    """(n, 3) log-probabilities of the answer tokens from vLLM's request outputs (in request order)."""
    logits = np.empty((len(outputs), len(answer_ids)), dtype=np.float64)
    for row, output in enumerate(outputs):
        first = output.outputs[0].logprobs[0]  # token id -> Logprob of the one generated position
        missing = [int(t) for t in answer_ids if int(t) not in first]
        if missing:
            raise InputError(
                f"vLLM returned no log-probability for answer token(s) {missing} of request {row} "
                "(it needs logprobs_mode processed_logprobs, vLLM 0.10.2 or newer)"
            )
        logits[row] = [first[int(t)].logprob for t in answer_ids]
    return logits
