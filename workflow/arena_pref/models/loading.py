"""Load a model the way its config says: quantization, dtype, attention, LoRA, merging; and the
tiny backbones the workflow builds (where backbones come from: :mod:`backbones`)."""

from __future__ import annotations

import dataclasses
import gc
import logging
import os

import torch

from arena_pref.atomic import atomic_path
from arena_pref.errors import InputError
from arena_pref.settings import Loading

log = logging.getLogger(__name__)

NUM_LABELS = 3
QUANTIZATIONS = ("4bit", "8bit", "none")

DEFAULT_LOADING = Loading(quantization="none", dtype="float32", attn_implementation="auto", pooling="auto")
"""Unquantized float32 weights, the model's default attention: what :func:`load_model` loads
without a :class:`~arena_pref.settings.Loading`."""


def loading_with(**changes):
    """:data:`DEFAULT_LOADING` with ``changes`` (``quantization="4bit"``, ...), for tests and
    benchmarks; the workflow's jobs pass their model's own settings."""
    return dataclasses.replace(DEFAULT_LOADING, **changes)


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
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype,
        )
    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    if quantization == "none":
        return None
    raise InputError(f"unknown quantization {quantization!r}; choose one of {QUANTIZATIONS}")


def load_model(
    backbone,
    loading=DEFAULT_LOADING,
    *,
    pad_token_id=None,
    device=None,
    device_map=None,
    training=False,
    allow_bf16_emulation=False,
):
    """``AutoModelForSequenceClassification`` with 3 labels, loaded as ``loading``
    (:class:`~arena_pref.settings.Loading`) says: quantized through bitsandbytes, in its dtype,
    with its attention (``attention_softcap: false``: Gemma-2 without its attention logit
    softcapping, on SDPA where it would otherwise run eager attention, :func:`drop_softcap`). On
    ``device`` (default: the first GPU, else the CPU), or split over the devices of ``device_map``
    (module -> device, :func:`arena_pref.models.placement.job_device_map`); ``training``: picks
    an attention that has a backward pass. ``allow_bf16_emulation``: :func:`check_dtype_supported`.
    A checkpoint with a classification head of another size (a reward model's one logit) keeps its
    body and gets a fresh 3-class head, logged (:func:`foreign_head`)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    extra = {}
    if why := foreign_head(AutoConfig.from_pretrained(backbone)):
        log.info("%s: a fresh 3-class head replaces it (trained and saved with the adapter), its body is kept", why)
        # the config is the checkpoint's own but for num_labels, so the head is all that can differ
        extra["ignore_mismatched_sizes"] = True
    model = _from_pretrained(
        AutoModelForSequenceClassification,
        backbone,
        loading,
        device=device,
        allow_bf16_emulation=allow_bf16_emulation,
        device_map=device_map,
        training=training,
        num_labels=NUM_LABELS,
        **extra,
    )
    if pad_token_id is not None:
        model.config.pad_token_id = pad_token_id
    return model


def foreign_head(config):
    """Why a checkpoint's classification head is not ours to load: a sequence-classification
    checkpoint whose head has other than 3 outputs, as a reward model's one logit; else None (a
    base LM has no head: a fresh one is its usual start)."""
    classifier = any(a.endswith("ForSequenceClassification") for a in (config.architectures or []))
    if not classifier or config.num_labels == NUM_LABELS:
        return None
    head = "a one-logit head (a reward model)" if config.num_labels == 1 else f"a {config.num_labels}-label head"
    return f"the backbone is a {config.architectures[0]} with {head}"


def load_causal_lm(backbone, loading=DEFAULT_LOADING, *, device=None, allow_bf16_emulation=False):
    """``AutoModelForCausalLM`` (a judge, :mod:`arena_pref.judge.zero_shot`), loaded as :func:`load_model`
    loads a classifier: as ``loading`` says, on ``device``, in eval mode."""
    from transformers import AutoModelForCausalLM

    return _from_pretrained(
        AutoModelForCausalLM, backbone, loading, device=device, allow_bf16_emulation=allow_bf16_emulation
    ).eval()


def _from_pretrained(
    auto_class, backbone, loading, *, device, allow_bf16_emulation, device_map=None, training=False, **extra
):
    from transformers import AutoConfig

    quantization, dtype = loading.quantization, loading.dtype
    compute_dtype = torch_dtype(dtype)
    if device_map is not None:
        device = next(iter(device_map.values()))  # the embedding's: where inputs go
    dev = torch.device(device) if device is not None else default_device()
    check_dtype_supported(dtype, dev, allow_emulation=allow_bf16_emulation)
    kwargs = dict(extra)
    split = device_map is not None and len(set(map(str, device_map.values()))) > 1
    config = AutoConfig.from_pretrained(backbone)
    impl = attention_implementation(loading.attn_implementation, config, dev, training=training, split=split)
    if impl:
        kwargs["attn_implementation"] = impl
    drop_cap = bool(getattr(config, "attn_logit_softcapping", None)) and not loading.attention_softcap
    to_sdpa = drop_cap and impl in (None, "sdpa")
    if drop_cap:
        kwargs["attn_logit_softcapping"] = None
    if to_sdpa:  # transformers refuses SDPA for Gemma-2 (it cannot softcap): switched after loading
        kwargs["attn_implementation"] = "eager"
    qconf = quantization_config(quantization, compute_dtype)
    if qconf is not None:
        kwargs["quantization_config"] = qconf
    model = auto_class.from_pretrained(
        backbone,
        dtype=compute_dtype,
        device_map=device_map or {"": dev.index if dev.type == "cuda" and dev.index is not None else dev.type},
        **kwargs,
    )
    if drop_cap:
        drop_softcap(model, to_sdpa=to_sdpa)
    apply_liger(model, dev)
    log.info(
        "loaded %s (%s, %s) on %s with %s attention",
        type(model).__name__,
        quantization,
        dtype,
        ", ".join(dict.fromkeys(map(str, device_map.values()))) if device_map else dev,
        model.config._attn_implementation,
    )
    return model


LIGER_SWITCH = "ARENA_PREF_LIGER"  # set to 0 to keep a model's own layers where liger-kernel is installed


def liger_unavailable_here(device):
    """Why liger-kernel cannot run on ``device`` in this job, whatever the model, or None."""
    if os.environ.get(LIGER_SWITCH) == "0":
        return f"{LIGER_SWITCH}=0"
    if torch.device(device).type != "cuda":
        return f"its Triton kernels need a CUDA GPU and this job runs on {torch.device(device).type}"
    try:
        import liger_kernel.transformers  # noqa: F401
    except ImportError:
        return "the liger-kernel package is not installed"
    return None


def liger_unavailable(model, device):
    """Why liger-kernel's fused RMSNorm, RoPE and GEGLU/SwiGLU cannot replace ``model``'s own on
    ``device``, or None when they can."""
    if why := liger_unavailable_here(device):
        return why
    import liger_kernel.transformers as liger

    if not hasattr(liger, f"apply_liger_kernel_to_{model.config.model_type}"):
        return f"liger-kernel has no kernels for {model.config.model_type}"
    return None


def apply_liger(model, device):
    """liger-kernel's fused RMSNorm, RoPE and GEGLU (Gemma-2) or SwiGLU (Llama) in ``model``, in
    place, where it is installed and the job runs on a GPU (logged either way). Its losses are
    left out: our loss runs on pooled logits (train.py)."""
    if why := liger_unavailable(model, device):
        log.info("liger-kernel not used: %s", why)
        return model
    import liger_kernel.transformers as liger

    getattr(liger, f"apply_liger_kernel_to_{model.config.model_type}")(
        rope=True, rms_norm=True, cross_entropy=False, fused_linear_cross_entropy=False, model=model
    )
    log.info("liger-kernel: fused RMSNorm, RoPE and gated MLP activation in %s", model.config.model_type)
    return model


def drop_softcap(model, *, to_sdpa):
    """A model loaded without attention softcapping runs SDPA where its default or SDPA was asked
    for: Gemma-2 turns SDPA off only because SDPA cannot softcap (``_supports_sdpa = False``), so
    the attention interface is switched after loading, which transformers' loader would refuse."""
    if to_sdpa:
        model.config._attn_implementation = "sdpa"
    log.info("attention softcapping off (attention_softcap: false): %s attention", model.config._attn_implementation)


def check_dtype_supported(dtype, device, *, allow_emulation=False):
    """Stop a bfloat16 job on a GPU without bf16 tensor cores (compute capability below 8.0, e.g.
    Kaggle's T4): torch emulates bf16 there, several times slower than float16, and reports it as
    supported, so the job would run, only for hours longer."""
    device = torch.device(device)
    if dtype != "bfloat16" or device.type != "cuda" or allow_emulation:
        return
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < (8, 0):
        raise InputError(
            f"dtype bfloat16 on {torch.cuda.get_device_name(device)} (compute capability {major}.{minor}), which "
            "has no bf16 tensor cores and emulates it several times slower than float16: set the model's dtype "
            "to float16 (as workflow/presets/gemma2-9b-t4.yaml does), or allow_bf16_emulation: true to run anyway"
        )


FLASH_ATTENTION_SOFTCAP = "2.6"  # the first flash-attn release with logit softcapping (Gemma-2)
FASTEST = "fastest"


def _capability(device):
    return torch.cuda.get_device_capability(device)


def _installed(distribution):
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


def flash_attention_unavailable(config, device):
    """Why flash-attention 2 cannot run ``config``'s model on ``device``, or None when it can."""
    from packaging.version import Version

    device = torch.device(device)
    if device.type != "cuda":
        return f"it needs a CUDA GPU and this job runs on {device.type}"
    installed = _installed("flash_attn")
    if installed is None:
        return "the flash-attn package is not installed"
    major, minor = _capability(device)
    if (major, minor) < (8, 0):
        return (
            f"{torch.cuda.get_device_name(device)} has compute capability {major}.{minor} and flash-attn "
            "needs 8.0 (Ampere) or newer"
        )
    if getattr(config, "attn_logit_softcapping", None) and Version(installed) < Version(FLASH_ATTENTION_SOFTCAP):
        return (
            f"flash-attn {installed} has no logit softcapping ({config.model_type} needs >= {FLASH_ATTENTION_SOFTCAP})"
        )
    return None


def flash_attention_4_unavailable(device):
    """Why FlashAttention-4 (PyPI ``flash-attn-4``, Hopper and newer) cannot run on ``device``."""
    device = torch.device(device)
    if device.type != "cuda":
        return f"it needs a CUDA GPU and this job runs on {device.type}"
    if _installed("flash-attn-4") is None:
        return "the flash-attn-4 package is not installed"
    major, minor = _capability(device)
    if major < 9:
        return (
            f"{torch.cuda.get_device_name(device)} has compute capability {major}.{minor} and "
            "FlashAttention-4 needs 9.0 (Hopper) or newer"
        )
    return None


def flex_attention_unavailable(device, *, training, split):
    """Why ``flex_attention`` over packed passes cannot run this job, or None when it can."""
    device = torch.device(device)
    if split:
        return "a model split over several devices (its block masks are built on one)"
    if training and device.type != "cuda":
        return f"torch {torch.__version__.split('+')[0]} has no flex_attention backward pass on {device.type}"
    return None


def _fastest(config, device, *, training, split):
    """(implementation, why) for ``attn_implementation: fastest`` on ``device``.

    Prediction: FlashAttention-4 on Hopper and newer where installed, else flash-attention 2 where
    it runs, else flex_attention on GPUs of compute capability 8.0 or newer, else the model's
    default (None). Training: flash-attention 2 where it runs, else the default: the backward
    passes of FlashAttention-4 (a beta) and of flex_attention (with gradient checkpointing, and at
    Gemma-2's head size 256) have not run on a GPU here (docs/gpu.md); name them to train with
    them."""
    device = torch.device(device)
    if device.type != "cuda":
        return None, f"no fused packed attention on {device.type}: per-sequence attention (varlen.py)"
    why_fa4 = "not for training" if training else flash_attention_4_unavailable(device)
    if why_fa4 is None:
        return "flash_attention_4", "FlashAttention-4 runs on this GPU"
    if (why_fa2 := flash_attention_unavailable(config, device)) is None:
        return "flash_attention_2", f"flash-attention 2 (FlashAttention-4: {why_fa4})"
    tried = f"FlashAttention-4: {why_fa4}; flash-attention 2: {why_fa2}"
    if training:
        return None, (
            f"the model's default attention ({tried}; flex_attention's backward is unverified on a "
            "GPU: name it to train with it)"
        )
    major, minor = _capability(device)
    if (major, minor) < (8, 0):
        # Gemma-2's head size 256 under flex_attention on a T4's smaller shared memory is unverified
        return None, f"the model's default attention ({tried}; flex_attention is unverified below 8.0)"
    if (why_flex := flex_attention_unavailable(device, training=training, split=split)) is None:
        return "flex_attention", f"flex_attention ({tried})"
    return None, f"the model's default attention ({tried}; flex_attention: {why_flex})"


def attention_implementation(requested, config, device, *, training=False, split=False):
    """The attention implementation to load a model with, logged with the reason: ``requested``
    where this job can run it, else the model's default (eager for Gemma-2, SDPA for Llama) with a
    warning saying why. ``fastest`` picks by the GPU (:func:`_fastest`). None means the model's
    default."""
    if requested in (None, "auto"):
        return None
    if requested == FASTEST:
        impl, why = _fastest(config, device, training=training, split=split)
        log.info("attn_implementation fastest: %s", why)
        return impl
    why = None
    if requested == "flash_attention_2":
        why = flash_attention_unavailable(config, device)
    elif requested == "flash_attention_4":
        why = flash_attention_4_unavailable(device)
    elif requested == "flex_attention":
        why = flex_attention_unavailable(device, training=training, split=split)
    if why:
        log.warning(
            "attn_implementation %s is not used: %s; falling back to the model's default attention", requested, why
        )
        return None
    return requested


def attach_lora(model, lora, *, gradient_checkpointing=False):
    """Freeze ``model`` and wrap it with trainable LoRA adapters (:class:`~arena_pref.settings.Lora`;
    the score head is trained in full).

    The frozen base keeps the dtype it was loaded in. (peft's ``prepare_model_for_kbit_training``
    would upcast every unquantized weight, the embeddings and norms included, to fp32: the residual
    stream and attention would then run in fp32 however the Trainer's mixed precision is set, with
    twice the activation memory, and a 9B Gemma's embedding alone would double to 3.7 GB.) The
    trainable weights are fp32, updated under the Trainer's autocast (train.py).

    Gradient checkpointing is non-reentrant: it needs no gradient on the inputs of frozen layers,
    and it checks that a layer's recompute matches its forward.
    """
    from peft import LoraConfig, get_peft_model

    for param in model.parameters():
        param.requires_grad_(False)
    if gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    config = LoraConfig(
        task_type="SEQ_CLS",
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        layers_to_transform=list(lora.layers_to_transform) if lora.layers_to_transform else None,
        bias="none",
    )
    model = get_peft_model(model, config)
    # fp32 master weights for the adapters and the head's trained copy
    for param in model.parameters():
        if param.requires_grad:
            param.data = param.data.float()
    return model


def load_for_inference(
    backbone,
    adapter_dir,
    loading,
    *,
    pad_token_id,
    merge_lora=False,
    device=None,
    device_map=None,
    allow_bf16_emulation=False,
    batch_tokens=0,
    longest=0,
):
    """The trained model for prediction: the base loaded as trained (``loading``, a
    :class:`~arena_pref.settings.Loading`: quantized or not) with the adapter.

    ``merge_lora``: dequantize the base to ``loading.dtype`` and fold the LoRA weights into it, so
    each layer is one plain 16-bit (or fp32) matrix product instead of a 4-bit dequantize-and-multiply
    plus the adapter's two extra products. The dequantized weights are the ones the 4-bit
    layers computed with in training, so the merged model is the trained function (to the
    rounding of the dtype). Needs the memory of the unquantized model plus the activations of a
    forward pass of ``batch_tokens`` tokens (sequences up to ``longest``): when the device has too
    little free, or the base cannot be dequantized, the unmerged model is used (logged).
    ``device_map``: the base split over several devices (:func:`load_model`; settings allow
    merging such a model only when it is not quantized: merged in place).
    """
    from peft import PeftModel

    def load():
        return load_model(
            backbone,
            loading,
            pad_token_id=pad_token_id,
            device=device,
            device_map=device_map,
            allow_bf16_emulation=allow_bf16_emulation,
        )

    quantization, dtype = loading.quantization, loading.dtype
    model = load()
    if merge_lora:
        why = _memory_short_for_merge(
            model, quantization=quantization, dtype=dtype, batch_tokens=batch_tokens, longest=longest
        )
        half_converted = False
        if why is None:
            try:
                merged = _merge(model, adapter_dir, quantization=quantization)
            except Exception as err:  # e.g. a quantizer without dequantize support
                why, half_converted = f"cannot merge into the {quantization} base ({err})", True
            else:
                log.info("merge_lora: adapter merged into a %s base", dtype)
                return merged.eval()
        log.warning("merge_lora: %s; predicting with the unmerged adapter", why)
        if half_converted:
            # a failed dequantize may leave layers half converted: free that model before loading
            # the base again, or both would sit in memory at once
            del model
            release_memory()
            model = load()
    model = PeftModel.from_pretrained(model, adapter_dir)
    adapters_to(model, torch_dtype(dtype))
    model.eval()
    return model


def adapters_to(model, dtype):
    """LoRA factors in the compute ``dtype`` for prediction. peft keeps them in fp32
    (``autocast_adapter_dtype``), so every LoRA layer would cast its input to fp32 and back: about
    11 % of a 9B model's prediction time on an H100 (docs/gpu.md, "Speed"). (peft loads the score head's
    trained copy in the base model's dtype already.)"""
    for name, param in model.named_parameters():
        if ".lora_" in name and param.is_floating_point():
            param.data = param.data.to(dtype)


def release_memory():
    """Return freed tensors' memory: collect cycles, and empty CUDA's cache where there is one."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def compile_backbone(model, *, packed=False):
    """``torch.compile`` the backbone in place. Packed passes under ``flex_attention`` all have one
    size (:func:`arena_pref.models.flexmask.pass_size`), so they compile once with static shapes; every
    other batch has its own shape, so those compile with dynamic shapes. Where a graph cannot be
    compiled, dynamo runs that code eagerly and logs why (``suppress_errors``): compiling is a
    speed option, never a reason for a job to fail."""
    import torch._dynamo

    from arena_pref.models.flexmask import NAME as FLEX
    from arena_pref.models.pooling import model_parts

    torch._dynamo.config.suppress_errors = True
    body = model_parts(model).body
    static = packed and body.config._attn_implementation == FLEX
    body.compile(dynamic=not static)
    log.info(
        "backbone compiled with torch.compile (%s); the first batches include compile time",
        "static shapes: fixed-size flex_attention passes" if static else "dynamic shapes",
    )
    return model


def _memory_short_for_merge(model, *, quantization, dtype, batch_tokens, longest):
    """Why the device cannot hold ``model`` dequantized to ``dtype`` and still run a forward pass of
    ``batch_tokens`` tokens, or None. (A full-precision base merges in place: nothing to check.)"""
    if quantization == "none":
        return None
    weights = _dequantized_extra_bytes(model, torch_dtype(dtype))
    activations = activation_bytes(model.config, tokens=batch_tokens, longest=longest, dtype=dtype)
    free = free_memory_bytes(next(model.parameters()).device)
    if free is not None and weights + activations > 0.9 * free:
        return (
            f"a {quantization} base needs {weights / 2**30:.1f} GiB more to dequantize, plus "
            f"{activations / 2**30:.1f} GiB for the activations of {batch_tokens} tokens per pass, and "
            f"{free / 2**30:.1f} GiB is free"
        )
    return None


def activation_bytes(config, *, tokens, longest, dtype):
    """A generous estimate of the activation memory of one inference forward pass over ``tokens``
    tokens in sequences of up to ``longest``: about 8 hidden-size and 3 intermediate-size vectors a
    token alive at once (residual stream, projections, MLP), and eager attention's fp32 scores and
    probabilities (2 x heads x ``longest`` a token, the worst case when SDPA or flash kernels are
    not used)."""
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    elt = torch_dtype(dtype).itemsize
    per_token = (8 * config.hidden_size + 3 * config.intermediate_size) * elt
    per_token += 2 * config.num_attention_heads * longest * 4
    return int(tokens * per_token)


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

# Tokenizers of the tiny backbones are set up like the real families' (Gemma-2; Llama-3 for
# ``llama``): the same special tokens in the same roles, and left padding, which transformers 5.x
# GemmaTokenizer and LlamaTokenizer default to. Llama-3 has no pad token (load_tokenizer pads with
# eos). A code path that pools or pads on the wrong side then fails on a CPU test, not on a GPU.
TOKENIZER_FAMILIES = {
    "gemma2": {
        "specials": ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"],
        "bos_token": "<bos>",
        "eos_token": "<eos>",
        "pad_token": "<pad>",
        "unk_token": "<unk>",
    },
    "llama": {
        "specials": ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
        "bos_token": "<|begin_of_text|>",
        "eos_token": "<|end_of_text|>",
    },
}


def _tiny_tokenizer(texts, arch, vocab_size, max_position, words=()):
    """A byte-level BPE trained on ``texts``, with the special tokens and padding side of ``arch``'s
    real tokenizer, and ``words`` as tokens of their own; every sequence starts with its bos token,
    as Gemma's and Llama-3's do."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    family = dict(TOKENIZER_FAMILIES[arch])
    specials = family.pop("specials")
    tok = Tokenizer(models.BPE(unk_token=family.get("unk_token")))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    # a small vocabulary learns a word seen once in pieces ('t' + 'ie'); whole words only, so that
    # 'tie' in 'entities' stays as trained
    tok.add_tokens([AddedToken(w, single_word=True, normalized=False) for w in words])
    bos = family["bos_token"]
    tok.post_processor = TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, tok.token_to_id(bos))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        model_max_length=max_position,
        padding_side="left",
        additional_special_tokens=[t for t in specials if t not in family.values()],
        **family,
    )


def tiny_config(
    *,
    arch="gemma2",
    vocab_size=1000,
    hidden_size=64,
    num_layers=2,
    num_heads=4,
    intermediate_size=128,
    max_position=1024,
    **token_ids,
):
    """The transformers config of a tiny backbone (``token_ids``: pad/bos/eos token ids)."""
    from transformers import Gemma2Config, LlamaConfig

    common = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=max(1, num_heads // 2),
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position,
        num_labels=NUM_LABELS,
        **token_ids,
    )
    if arch == "gemma2":
        return Gemma2Config(head_dim=hidden_size // num_heads, sliding_window=max_position, **common)
    if arch == "llama":
        return LlamaConfig(**common)
    raise InputError(f"unknown tiny arch {arch!r}; choose one of {sorted(TOKENIZER_FAMILIES)}")


HEADS = ("seq_cls", "causal_lm")
"""What a tiny backbone is saved as: a 3-label classifier (LoRA members) or a causal LM (judges)."""


def build_tiny_backbone(
    out_dir,
    texts,
    *,
    arch="gemma2",
    vocab_size=1000,
    max_position=1024,
    seed=0,
    head="seq_cls",
    answer_words=(),
    **shape,
):
    """Tokenizer trained on ``texts`` and a randomly initialised model, saved to ``out_dir``: a
    seq-cls model, or with ``head="causal_lm"`` a causal LM (its LM head over the tokenizer's
    vocabulary). ``answer_words`` (a judge's answers) are tokens of their own wherever they stand
    as words, as a real LM's vocabulary holds 'A', 'B' and 'tie'.

    Deterministic from ``texts`` and ``seed``. Saved with ``save_pretrained``, so it loads
    (and quantizes) exactly like a downloaded 9B checkpoint. ``shape``: :func:`tiny_config`'s.
    """
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    if head not in HEADS:
        raise ValueError(f"unknown tiny head {head!r}; choose one of {HEADS}")
    if arch not in TOKENIZER_FAMILIES:
        raise InputError(f"unknown tiny arch {arch!r}; choose one of {sorted(TOKENIZER_FAMILIES)}")
    fast = _tiny_tokenizer(texts, arch, vocab_size, max_position, answer_words)
    config = tiny_config(
        arch=arch,
        vocab_size=len(fast),
        max_position=max_position,
        pad_token_id=fast.pad_token_id,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        **shape,
    )
    torch.manual_seed(seed)
    model = (AutoModelForCausalLM if head == "causal_lm" else AutoModelForSequenceClassification).from_config(config)
    with atomic_path(out_dir, directory=True) as tmp:
        model.save_pretrained(tmp)
        fast.save_pretrained(tmp)
    log.info(
        "built tiny %s backbone (%s): %d parameters, vocab %d -> %s",
        arch,
        head,
        sum(p.numel() for p in model.parameters()),
        config.vocab_size,
        os.fspath(out_dir),
    )
    return out_dir
