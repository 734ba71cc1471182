"""Average the LoRA adapters of several cross-validation folds into one adapter ("model soup").

Predicting with every fold's model costs one forward pass of the 9B backbone per fold; the
averaged adapter gives one pass for all folds. The average is taken in weight space, and it is
exact: fold i's model has, in each LoRA layer, the weight ``W + s * B_i @ A_i`` (``s`` its
scaling, ``alpha / r``), so the fold models' mean weight is ``W + s * mean_i(B_i @ A_i)``. That
is one LoRA of rank ``n * r``: ``A' = [A_1; ...; A_n]`` (rows stacked) and
``B' = [B_1 / n, ..., B_n / n]`` (columns side by side), since ``B' @ A' = sum_i B_i @ A_i / n``,
with ``lora_alpha`` scaled by ``n`` too so that the scaling stays ``alpha / r``. (Under rsLoRA
the scaling is ``alpha / sqrt(r)``: it grows by ``sqrt(n)``, and ``B'`` shrinks by it.) Every
other tensor -- the score head saved through ``modules_to_save``, biases -- is the plain mean.
The averaged model is exactly the mean of the fold models' weights, up to the rounding of the
tensors' dtype; it is not the mean of their predictions (the network is not linear in its
weights), which is the point of a soup and the reason it must be validated like any model.

Cost: the adapter is ``n`` times larger, and unmerged its layers do rank ``n * r`` products
(for a 9B Gemma-2 with r = 16 and 5 folds, a few percent of the base's FLOPs); with
``merge_lora`` on it is folded into the base and costs nothing at prediction.

Done on the saved state dicts, not with peft's ``add_weighted_adapter(combination_type="cat")``:
that needs the base model loaded (a 9B on a GPU) for what is arithmetic on a few hundred MB, and
it refuses adapters that each carry the score head through ``modules_to_save``, as every fold
here does.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from arena_pref.atomic import atomic_path, write_json
from arena_pref.errors import InputError

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
METADATA = "averaged_from.json"
METHOD = (
    "exact weight-space mean of the fold models: LoRA factors concatenated to rank n*r "
    "(B divided by n, lora_alpha multiplied by n), every other tensor averaged element-wise"
)

# adapter_config fields that may differ between folds without changing what the adapter computes
IGNORED_FIELDS = ("base_model_name_or_path", "revision", "inference_mode", "peft_version")
# list fields read as sets: target_modules is saved from a set, in the hash order of the process
# that trained the fold, and peft may repeat a name in modules_to_save
UNORDERED_FIELDS = ("target_modules", "modules_to_save", "exclude_modules")
# LoRA variants whose fold models do not average to a LoRA of the concatenated factors
UNSUPPORTED = {
    "use_dora": "DoRA (each fold's weight is renormalised by its magnitude vector)",
    "use_qalora": "QALoRA (its A acts on pooled inputs)",
    "use_bdlora": "BD-LoRA (block-diagonal factors)",
    "kasa_config": "KaSA (a learned diagonal between A and B)",
    "monteclora_config": "MonteCLoRA (sampled adapters)",
    "arrow_config": "Arrow routing",
    "target_parameters": "LoRA on nn.Parameter (target_parameters)",
}

_LORA_A = re.compile(r"\.lora_A\.weight$|\.lora_embedding_A$")
_LORA_B = re.compile(r"\.lora_B\.weight$|\.lora_embedding_B$")
_LORA_B_BIAS = re.compile(r"\.lora_B\.bias$")
_ANY_LORA = re.compile(r"\.lora_[A-Za-z_]+")


def average_adapters(adapter_dirs, out_dir):
    """Write to ``out_dir`` the one adapter equal to the mean of the ``adapter_dirs`` fold models.

    Returns a summary: ``n``, ``rank_before``, ``rank_after``, ``tensors``, ``out_dir``.
    Raises :class:`InputError` when the folds are not compatible LoRA adapters.
    """
    dirs = [Path(d) for d in adapter_dirs]
    out_dir = Path(out_dir)
    if not dirs:
        raise InputError("no adapter directories to average")
    if any(d.resolve() == out_dir.resolve() for d in dirs):
        raise InputError(f"the averaged adapter's directory '{out_dir}' is one of the folds' adapters")
    configs = [read_config(d) for d in dirs]
    states = [read_tensors(d) for d in dirs]
    check_compatible(dirs, configs, states)
    n = len(dirs)
    config = averaged_config(configs[0], n)
    with atomic_path(out_dir, directory=True) as tmp:
        if n == 1:  # nothing to average: the adapter itself, byte for byte
            shutil.copyfile(dirs[0] / CONFIG, tmp / CONFIG)
            shutil.copyfile(dirs[0] / WEIGHTS, tmp / WEIGHTS)
        else:
            save_file(average_tensors(states, config=configs[0]), tmp / WEIGHTS, metadata={"format": "pt"})
            write_json(config, tmp / CONFIG)
        summary = {
            "n": n,
            "rank_before": configs[0]["r"],
            "rank_after": config["r"],
            "tensors": len(states[0]),
            "out_dir": str(out_dir),
        }
        write_json(
            {
                "sources": [str(d) for d in dirs],
                "method": METHOD,
                **{k: summary[k] for k in ("n", "rank_before", "rank_after")},
            },
            tmp / METADATA,
        )
    return summary


def read_config(adapter_dir):
    """The adapter's peft config, refused here if it is not a LoRA this module can average exactly
    (better than an averaged adapter that loads and predicts something else)."""
    path = Path(adapter_dir) / CONFIG
    if not path.is_file():
        raise InputError(f"'{adapter_dir}' is not a peft adapter directory: it has no {CONFIG}")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise InputError(f"'{path}' is not valid JSON: {err}") from None
    if config.get("peft_type") != "LORA":
        raise InputError(
            f"adapter '{adapter_dir}' is peft_type {config.get('peft_type')!r}: only LORA adapters can be averaged"
        )
    for field, what in UNSUPPORTED.items():
        if config.get(field):
            raise InputError(
                f"adapter '{adapter_dir}' uses {what} ({field} is set): such adapters cannot be averaged into one LoRA"
            )
    return config


def read_tensors(adapter_dir):
    """The adapter's tensors; an unknown kind of LoRA tensor is refused rather than averaged."""
    path = Path(adapter_dir) / WEIGHTS
    if not path.is_file():
        raise InputError(f"adapter '{adapter_dir}' has no {WEIGHTS} (only safetensors adapters are averaged)")
    state = load_file(path)
    for key in state:
        if _ANY_LORA.search(key) and not (_LORA_A.search(key) or _LORA_B.search(key) or _LORA_B_BIAS.search(key)):
            raise InputError(
                f"adapter '{adapter_dir}' has a LoRA tensor of an unknown kind, '{key}': it cannot be averaged"
            )
    return state


def check_compatible(dirs, configs, states):
    """Every fold must be the same adapter layout as the first: the same config (up to fields that
    do not change the computation) and the same tensor names, shapes and dtypes."""
    ref_config, ref_state = _comparable(configs[0]), states[0]
    for d, config, state in zip(dirs[1:], configs[1:], states[1:]):
        where = f"adapter '{d}' does not match '{dirs[0]}'"
        config = _comparable(config)
        for field in sorted(set(ref_config) | set(config)):
            if config.get(field) != ref_config.get(field):
                raise InputError(
                    f"{where}: adapter_config field '{field}' is {config.get(field)!r} there and "
                    f"{ref_config.get(field)!r} in '{dirs[0]}'"
                )
        odd = sorted(set(ref_state) ^ set(state))
        if odd:
            raise InputError(f"{where}: tensor '{odd[0]}' is only in '{d if odd[0] in state else dirs[0]}'")
        for key, ref in ref_state.items():
            got = state[key]
            if got.shape != ref.shape or got.dtype != ref.dtype:
                raise InputError(
                    f"{where}: tensor '{key}' is {tuple(got.shape)} {got.dtype} there and "
                    f"{tuple(ref.shape)} {ref.dtype} in '{dirs[0]}'"
                )


def _comparable(config):
    out = {k: v for k, v in config.items() if k not in IGNORED_FIELDS}
    for field in UNORDERED_FIELDS:
        if isinstance(out.get(field), list):
            out[field] = sorted(set(out[field]))
    return out


def averaged_config(config, n):
    """The folds' config for rank ``n * r``: every rank and alpha (``rank_pattern``, ``alpha_pattern``
    included) times ``n``, so each layer keeps its scaling ``alpha / r``."""
    out = dict(config)
    out["r"] = config["r"] * n
    out["lora_alpha"] = config["lora_alpha"] * n
    for field in ("rank_pattern", "alpha_pattern"):
        out[field] = {k: v * n for k, v in (config.get(field) or {}).items()}
    return out


def average_tensors(states, *, config):
    """The averaged adapter's tensors (see the module docstring), computed in float64 and stored in
    each tensor's own dtype."""
    n = len(states)
    # new scaling / old scaling: 1 for LoRA (n*alpha / n*r), sqrt(n) for rsLoRA (n*alpha / sqrt(n*r))
    growth = math.sqrt(n) if config.get("use_rslora") else 1.0
    out = {}
    for key, ref in states[0].items():
        parts = [state[key].double() for state in states]
        if _LORA_A.search(key):
            merged = torch.cat(parts, dim=0)
        elif _LORA_B.search(key):
            merged = torch.cat(parts, dim=1) / (n * growth)
        elif _LORA_B_BIAS.search(key):  # added as scaling * bias: the mean bias, rescaled
            merged = torch.stack(parts).mean(dim=0) / growth
        else:
            merged = torch.stack(parts).mean(dim=0)
        out[key] = merged.to(ref.dtype).contiguous()
    return out
