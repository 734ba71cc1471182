"""Backbones, quantization, LoRA: load a model the way its config says.

A model's ``backbone`` names where weights come from:

``{kind: path, path: DIR_OR_HUB_NAME}``
    a local directory saved with ``save_pretrained`` (or a hub name for users online);
``{kind: package, package: MODULE, subdir: model}``
    weights shipped inside an installed Python package (the demo's all-MiniLM-L6-v2);
``{kind: tiny, arch: gemma2|llama, ...}``
    a tiny randomly initialised model with a tokenizer trained on the training texts,
    built by the workflow itself (no downloads); the same code path as a 9B model.
"""

from __future__ import annotations

import importlib
import logging
import os
from pathlib import Path

import torch

from .errors import InputError
from .io import atomic_path

log = logging.getLogger(__name__)

NUM_LABELS = 3
QUANTIZATIONS = ("4bit", "8bit", "none")


def resolve_backbone(spec, built_dir=None):
    """Directory (or hub name) holding a backbone's weights and tokenizer."""
    kind = spec["kind"]
    if kind == "path":
        return str(spec["path"])
    if kind == "package":
        try:
            module = importlib.import_module(spec["package"])
        except ImportError as err:
            raise InputError(f"backbone package '{spec['package']}' is not installed: {err}") from err
        return str(Path(module.__file__).parent / spec.get("subdir", "model"))
    if kind == "tiny":
        if built_dir is None:
            raise ValueError("a tiny backbone is built by the workflow: pass built_dir")
        return str(built_dir)
    raise InputError(f"unknown backbone kind {kind!r}")


def default_device():
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def job_devices():
    """Every device this job may use: the GPUs visible to it (see gpus.py), else the CPU."""
    if torch.cuda.is_available():
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return ["cpu"]


def torch_dtype(name):
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def load_tokenizer(backbone):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(backbone)
    if tok.pad_token_id is None:
        # Llama-3 ships no pad token; its eos serves, the model ignores padded positions
        tok.pad_token = tok.eos_token
    return tok


def quantization_config(quantization, compute_dtype):
    from transformers import BitsAndBytesConfig

    if quantization == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                  bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=compute_dtype)
    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    if quantization == "none":
        return None
    raise InputError(f"unknown quantization {quantization!r}; choose one of {QUANTIZATIONS}")


def load_model(backbone, *, quantization="none", dtype="float32", pad_token_id=None,
               attn_implementation=None, device=None):
    """``AutoModelForSequenceClassification`` with 3 labels, quantized through bitsandbytes,
    on ``device`` (default: the first GPU, else the CPU)."""
    from transformers import AutoModelForSequenceClassification

    compute_dtype = torch_dtype(dtype)
    dev = torch.device(device) if device is not None else default_device()
    kwargs = {}
    if attn_implementation and attn_implementation != "auto":
        kwargs["attn_implementation"] = attn_implementation
    qconf = quantization_config(quantization, compute_dtype)
    if qconf is not None:
        kwargs["quantization_config"] = qconf
    model = AutoModelForSequenceClassification.from_pretrained(
        backbone, num_labels=NUM_LABELS, dtype=compute_dtype,
        device_map={"": dev.index if dev.type == "cuda" and dev.index is not None else dev.type},
        **kwargs)
    if pad_token_id is not None:
        model.config.pad_token_id = pad_token_id
    return model


def attach_lora(model, lora, *, quantized, gradient_checkpointing=False):
    """Wrap ``model`` with trainable LoRA adapters (the score head is trained in full)."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if quantized:
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=gradient_checkpointing)
    elif gradient_checkpointing:
        model.gradient_checkpointing_enable()
    config = LoraConfig(
        task_type="SEQ_CLS", r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
        target_modules=list(lora["target_modules"]),
        layers_to_transform=list(lora["layers_to_transform"]) if lora.get("layers_to_transform") else None,
        bias="none")
    model = get_peft_model(model, config)
    # peft puts the new classification head in modules_to_save; a 4-bit load leaves it in the
    # compute dtype, which is fine on GPU but we keep trainable weights in fp32 for stable updates
    for param in model.parameters():
        if param.requires_grad:
            param.data = param.data.float()
    return model


def load_for_inference(backbone, adapter_dir, *, quantization, dtype, pad_token_id, device=None,
                       attn_implementation=None, merge_lora=False):
    """The trained model for prediction: the base as trained (quantized or not) with the adapter.

    ``merge_lora``: dequantize the base to ``dtype`` and fold the LoRA weights into it, so each
    layer is one plain 16-bit (or fp32) matrix product instead of a 4-bit dequantize-and-multiply
    plus the adapter's two extra products. The dequantized weights are the ones the 4-bit
    layers computed with in training, so the merged model is the trained function (to the
    rounding of ``dtype``). Needs the memory of the unquantized model: when the device has
    too little free, or the base cannot be dequantized, the unmerged model is used (logged).
    """
    from peft import PeftModel

    def load():
        return load_model(backbone, quantization=quantization, dtype=dtype, pad_token_id=pad_token_id,
                          device=device, attn_implementation=attn_implementation)

    model = load()
    if merge_lora:
        short = _memory_short_for_merge(model, quantization=quantization, dtype=dtype)
        if short:
            log.warning("merge_lora: %s; predicting with the unmerged adapter", short)
        else:
            try:
                merged = _merge(model, adapter_dir, quantization=quantization)
                log.info("merge_lora: adapter merged into a %s base", dtype)
                return merged.eval()
            except Exception as err:  # e.g. a quantizer without dequantize support
                log.warning("merge_lora: cannot merge into the %s base (%s); predicting with the unmerged "
                            "adapter", quantization, err)
                model = load()  # a failed dequantize may leave layers half converted
    model = PeftModel.from_pretrained(model, adapter_dir)
    model.eval()
    return model


def compile_backbone(model):
    """``torch.compile`` the backbone in place, with dynamic shapes (every batch has its own).
    Where a graph cannot be compiled, dynamo runs that code eagerly and logs why
    (``suppress_errors``): compiling is a speed option, never a reason for a job to fail."""
    import torch._dynamo

    from .pooling import model_parts

    torch._dynamo.config.suppress_errors = True
    model_parts(model).body.compile(dynamic=True)
    log.info("backbone compiled with torch.compile (dynamic shapes); the first batches include compile time")
    return model


def _memory_short_for_merge(model, *, quantization, dtype):
    """Why the device cannot hold ``model`` dequantized to ``dtype``, or None."""
    if quantization == "none":
        return None
    need = _dequantized_extra_bytes(model, torch_dtype(dtype))
    free = free_memory_bytes(next(model.parameters()).device)
    if free is not None and need > 0.9 * free:
        return (f"a {quantization} base needs {need / 2**30:.1f} GiB more to dequantize and "
                f"{free / 2**30:.1f} GiB is free")
    return None


def _merge(model, adapter_dir, *, quantization):
    """``model`` dequantized (where quantized) with the adapter merged in."""
    from peft import PeftModel

    if quantization != "none":
        model = model.dequantize()
    return PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()


def _dequantized_extra_bytes(model, dtype):
    """Bytes a quantized model grows by when its quantized layers become ``dtype`` matrices."""
    elt = torch.tensor([], dtype=dtype).element_size()
    extra = 0
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if weight is not None and type(weight).__name__ in ("Params4bit", "Int8Params"):
            extra += module.in_features * module.out_features * elt - weight.numel() * weight.element_size()
    return extra


def free_memory_bytes(device):
    """Free memory on ``device`` (a CUDA device, or the host's available RAM for the CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return None


# --------------------------------------------------------------------------- tiny backbones

def build_tiny_backbone(out_dir, texts, *, arch="gemma2", vocab_size=1000, hidden_size=64,
                        num_layers=2, num_heads=4, intermediate_size=128, max_position=1024, seed=0):
    """Tokenizer trained on ``texts`` and a randomly initialised seq-cls model, saved to ``out_dir``.

    Deterministic from ``texts`` and ``seed``. Saved with ``save_pretrained``, so it loads
    (and quantizes) exactly like a downloaded 9B checkpoint.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (Gemma2Config, Gemma2ForSequenceClassification, LlamaConfig,
                              LlamaForSequenceClassification, PreTrainedTokenizerFast)

    specials = ["<pad>", "<bos>", "<eos>", "<unk>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    from tokenizers.processors import TemplateProcessing

    # decoder models start every sequence with <bos>, as Gemma's tokenizer does
    tok.post_processor = TemplateProcessing(single="<bos> $A", pair="<bos> $A $B",
                                            special_tokens=[("<bos>", tok.token_to_id("<bos>"))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>",
                                   eos_token="<eos>", unk_token="<unk>", model_max_length=max_position)
    common = dict(vocab_size=tok.get_vocab_size(), hidden_size=hidden_size, num_hidden_layers=num_layers,
                  num_attention_heads=num_heads, num_key_value_heads=max(1, num_heads // 2),
                  intermediate_size=intermediate_size, max_position_embeddings=max_position,
                  pad_token_id=fast.pad_token_id, bos_token_id=fast.bos_token_id,
                  eos_token_id=fast.eos_token_id, num_labels=NUM_LABELS)
    if arch == "gemma2":
        config = Gemma2Config(head_dim=hidden_size // num_heads, sliding_window=max_position, **common)
        cls = Gemma2ForSequenceClassification
    elif arch == "llama":
        config = LlamaConfig(**common)
        cls = LlamaForSequenceClassification
    else:
        raise InputError(f"unknown tiny arch {arch!r}; choose gemma2 or llama")
    torch.manual_seed(seed)
    model = cls(config)
    with atomic_path(out_dir, directory=True) as tmp:
        model.save_pretrained(tmp)
        fast.save_pretrained(tmp)
    log.info("built tiny %s backbone: %d parameters, vocab %d -> %s", arch,
             sum(p.numel() for p in model.parameters()), config.vocab_size, os.fspath(out_dir))
    return out_dir
