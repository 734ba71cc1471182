"""Where a model's backbone is, and checks of a config against it before any job runs.

A model's ``backbone`` names where weights come from:

``{kind: path, path: DIR}``
    a local directory saved with ``save_pretrained`` (declared as a rule input);
``{kind: hub, name: NAME}``
    a model-hub name (needs internet);
``{kind: package, package: MODULE, subdir: model}``
    weights shipped inside an installed Python package (the demo's all-MiniLM-L6-v2);
``{kind: tiny, arch: gemma2|llama, ...}``
    a tiny randomly initialised model with a tokenizer trained on the training texts,
    built by the workflow itself (rule ``tiny_backbone``); the same code path as a 9B model.

:func:`check_model` catches, when the workflow starts, what would otherwise fail hours later:
a ``max_length`` above the model's position limit, a template that leaves no room for text,
LoRA ``target_modules`` or ``layers_to_transform`` that match nothing. It reads config.json and
the tokenizer, and builds the model on the meta device (no weights); a check that passed is
remembered under ``.snakemake/`` of the working directory, keyed by everything it read.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from pathlib import Path

from arena_pref.errors import InputError

CHECKED_DIR = Path(".snakemake") / "arena-pref-checked"
MIN_TEXT_TOKENS = 3  # the prompt and each answer need at least a token


def built_dir(model):
    """Where the workflow builds a tiny backbone (rule ``tiny_backbone``)."""
    return f"results/backbones/{model}"


def rule_input(model, spec):
    """The backbone as a rule input: the built directory for tiny models, the directory of a
    ``path`` backbone; nothing for weights Snakemake cannot track (hub, package)."""
    if spec["kind"] == "tiny":
        return built_dir(model)
    if spec["kind"] == "path":
        return spec["path"]
    return []


def backbone_dir(spec, built=None):
    """Directory (or hub name) holding a backbone's weights and tokenizer; ``built``: the
    directory of a tiny backbone the workflow built."""
    kind = spec["kind"]
    if kind == "path":
        return str(spec["path"])
    if kind == "hub":
        return spec["name"]
    if kind == "package":
        try:
            module = importlib.import_module(spec["package"])
        except ImportError as err:
            raise InputError(f"backbone package '{spec['package']}' is not installed: {err}") from err
        return str(Path(module.__file__).parent / spec["subdir"])
    if kind == "tiny":
        if not built:
            raise ValueError("a tiny backbone is built by the workflow: pass its directory")
        return str(built)
    raise InputError(f"unknown backbone kind {kind!r}")


# --------------------------------------------------------------------------- start-time checks


def _files_key(directory):
    """What a check read from a backbone directory: config and tokenizer files, whole."""
    h = hashlib.sha256()
    for path in sorted(Path(directory).glob("*.json")) + sorted(Path(directory).glob("*.model")):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def _backbone_config(model):
    """The transformers config of ``model``'s backbone, or None where it cannot be read before
    the workflow runs (hub names)."""
    spec = model.backbone
    if spec["kind"] == "hub":
        return None
    if spec["kind"] == "tiny":
        from arena_pref.models.loading import tiny_config

        options = {k: v for k, v in spec.items() if k not in ("kind", "seed", "vocab_size")}
        return tiny_config(vocab_size=spec["vocab_size"], **options)
    directory = Path(backbone_dir(spec))
    where = f"config models.{model.name}.backbone"
    if not (directory / "config.json").is_file():
        raise InputError(
            f"{where}: {directory} has no config.json (a directory written by save_pretrained is expected)"
        )
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(directory)


def check_model(model):
    """Raise :class:`InputError` (one line naming the key) where ``model``'s settings cannot work
    with its backbone; a no-op for hub backbones. Passed checks are remembered."""
    spec = model.backbone
    key_parts = [
        model.name,
        spec,
        model.tokens.max_length,
        model.tokens.template,
        list(model.training.lora.target_modules),
        model.training.lora.layers_to_transform,
    ]
    if spec["kind"] in ("path", "package"):
        directory = Path(backbone_dir(spec))
        key_parts.append(_files_key(directory) if directory.is_dir() else str(directory))
    key = hashlib.sha256(json.dumps(key_parts, sort_keys=True, default=str).encode()).hexdigest()
    if (CHECKED_DIR / key).exists():
        return
    try:
        config = _backbone_config(model)
        if config is None:
            return
        _check_positions(model, config)
        _check_lora(model, config)
        if spec["kind"] != "tiny":  # a tiny backbone's tokenizer is built later: the tokenize step checks
            from arena_pref.models.loading import load_tokenizer

            check_template_room(model.name, load_tokenizer(backbone_dir(spec)), model.tokens)
    except InputError:
        raise
    except Exception as err:  # transformers' and huggingface_hub's own checks of a config or tokenizer
        why = " ".join(line.strip() for line in str(err).strip().splitlines()) or type(err).__name__
        raise InputError(f"config models.{model.name}.backbone: cannot be used: {why}") from None
    CHECKED_DIR.mkdir(parents=True, exist_ok=True)
    (CHECKED_DIR / key).touch()


def _check_positions(model, config):
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    limit = getattr(text, "max_position_embeddings", None)
    if limit and model.tokens.max_length > limit:
        raise InputError(
            f"config models.{model.name}.max_length: {model.tokens.max_length} is above the "
            f"backbone's position limit ({limit} tokens)"
        )


def _check_lora(model, config):
    lora = model.training.lora
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    layers = text.num_hidden_layers
    beyond = [i for i in (lora.layers_to_transform or ()) if i >= layers]
    if beyond:
        raise InputError(
            f"config models.{model.name}.lora.layers_to_transform: {beyond} beyond the "
            f"backbone's {layers} layers (0 to {layers - 1})"
        )
    names = _module_names(config)
    unmatched = [t for t in lora.target_modules if not any(n == t or n.endswith("." + t) for n in names)]
    if unmatched:
        linear = sorted({n.rsplit(".", 1)[-1] for n, kind in names.items() if kind == "Linear"})
        raise InputError(
            f"config models.{model.name}.lora.target_modules: {unmatched} match no module of the "
            f"backbone (its linear layers: {', '.join(linear)})"
        )


def _module_names(config):
    """Module name -> class name of the sequence-classification model of ``config``, built on the
    meta device (no memory, no weights)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    with torch.device("meta"):
        model = AutoModelForSequenceClassification.from_config(config)
    return {name: type(module).__name__ for name, module in model.named_modules()}


def check_template_room(name, tokenizer, tokens):
    """The template and special tokens must leave ``max_length`` room for the conversation."""
    from arena_pref.data.templates import make_layout

    fixed = make_layout(tokenizer, tokens.template).fixed_len
    if tokens.max_length - fixed < MIN_TEXT_TOKENS:
        raise InputError(
            f"config models.{name}.template: the template and special tokens take {fixed} of "
            f"max_length {tokens.max_length} tokens, leaving no room for the conversation"
        )


def check_judge(model):
    """Raise :class:`InputError` (one line naming the key) where a judge
    (:class:`~arena_pref.settings.JudgeModelConfig`) cannot run: its backend is not installed, its
    max_length is above the backbone's position limit, and (a backbone with its tokenizer at hand)
    its answers do not start with three different tokens or its template leaves no room."""
    from arena_pref.judge.vllm_backend import missing_vllm

    if model.scoring.backend == "vllm" and (why := missing_vllm(model.name)):
        raise InputError(why)
    spec, prompt = model.backbone, model.scoring.prompt
    try:
        if spec["kind"] == "hub":
            return
        config = _backbone_config(model)
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        limit = getattr(text, "max_position_embeddings", None)
        # vLLM's context holds the answer token too (vllm_backend.engine_args)
        room = limit and limit - (1 if model.scoring.backend == "vllm" else 0)
        if limit and prompt.max_length > room:
            raise InputError(
                f"config models.{model.name}.max_length: {prompt.max_length} is above the backbone's "
                f"position limit ({limit} tokens"
                + (", one of them the answer token's under backend vllm" if room < limit else "")
                + ")"
            )
        if spec["kind"] != "tiny":  # a tiny backbone's tokenizer is built later: the judge_score step checks
            from arena_pref.judge.prompts import check_room, make_layout
            from arena_pref.models.loading import load_tokenizer

            check_room(make_layout(load_tokenizer(backbone_dir(spec)), prompt, model=model.name), prompt, model.name)
    except InputError:
        raise
    except Exception as err:  # transformers' own checks of a config or tokenizer
        why = " ".join(line.strip() for line in str(err).strip().splitlines()) or type(err).__name__
        raise InputError(f"config models.{model.name}.backbone: cannot be used: {why}") from None
