"""The settings of one LoRA model's jobs, each the ``params`` of a rule (tokenize, train, oof and
infer), and the job options that change how a job runs, never what it produces."""

from __future__ import annotations

from dataclasses import dataclass, field

from arena_pref.settings.params import OMIT_AT_DEFAULT


@dataclass(frozen=True)
class Loading:
    """How a model's backbone is loaded and pooled: shared by training and prediction."""

    quantization: str  # 4bit | 8bit | none (bitsandbytes)
    dtype: str  # compute dtype; training runs in mixed precision in it
    attn_implementation: str  # auto | eager | sdpa | flash_attention_2 | flash_attention_4 | flex_attention | fastest
    pooling: str  # auto | last | mean | cls | pair
    attention_softcap: bool = True  # False: Gemma-2 without attention logit softcapping (SDPA then)


@dataclass(frozen=True)
class ModelParallel:
    """``compute.model_parallel`` of a LoRA model: its backbone split over ``gpus`` GPUs by whole
    layers (:mod:`arena_pref.models.placement`)."""

    key: str  # the setting's config key, named in errors (models.<name>.compute.model_parallel)
    gpus: int
    max_memory_gib: float | None  # weights each GPU may hold; None: its memory less reserve_gib
    reserve_gib: float


@dataclass(frozen=True)
class DataParallel:
    """``compute.data_parallel`` of a LoRA model: each training job over ``gpus`` DDP processes
    (:mod:`arena_pref.train.data_parallel`)."""

    key: str  # the setting's config key, named in errors (models.<name>.compute.data_parallel)
    gpus: int  # on each node
    nodes: int = 1  # more than one: a SLURM job over that many machines, one task on each

    @property
    def processes(self):
        """Ranks training together: one per GPU of every node."""
        return self.gpus * self.nodes


@dataclass(frozen=True)
class JobOptions:
    """Settings that change how a job runs, never what it produces. Rules pass this object as is:
    Snakemake compares only plain-data params, so changing these reruns nothing, and checkpoint
    fingerprints leave them out, so a rerun resumes (data_parallel too: the global batch, and so
    every optimizer step, is the same on any number of processes)."""

    allow_bf16_emulation: bool
    save_steps: int
    logging_steps: int
    model_parallel: ModelParallel | None = None  # None: the model on one GPU
    data_parallel: DataParallel | None = None  # None: training in one process


DEFAULT_JOB_OPTIONS = JobOptions(allow_bf16_emulation=False, save_steps=200, logging_steps=10)
"""No bfloat16 emulation, the model on one GPU, the schema's default steps: what a prediction
runs with without a model's own :class:`JobOptions`."""


@dataclass(frozen=True)
class Lora:
    r: int
    alpha: float
    dropout: float
    target_modules: tuple
    layers_to_transform: tuple | None


@dataclass(frozen=True)
class TrainOptions:
    epochs: float
    batch_size: int
    max_tokens_per_batch: int | None
    grad_accum: int
    lr: float
    weight_decay: float
    warmup_steps: int
    scheduler: str
    max_grad_norm: float
    optimizer: str
    gradient_checkpointing: bool
    packing: bool
    swap_augment: bool
    seed: int


@dataclass(frozen=True)
class Teachers:
    """Soft targets besides the labels (schema: ``distill``, ``pseudo_labels``): the teachers' names
    and the weight of the distillation term. Teacher predictions reach the job as inputs."""

    distill: str | None  # the model whose OOF predictions the training rows distil
    alpha: float  # weight of KL(teacher || model) on training rows; 0 without distill
    pseudo: str | None  # the model whose predictions label data.extra_csv's rows


@dataclass(frozen=True)
class TrainSettings:
    """Everything the train rule reads."""

    loading: Loading
    lora: Lora
    train: TrainOptions
    teachers: Teachers
    # multi-stage: the model whose adapter of the same part training starts from (not in the params
    # when None: the folds trained before the key existed keep their params)
    init_from: str | None = field(default=None, metadata={OMIT_AT_DEFAULT: True})


@dataclass(frozen=True)
class Batching:
    """How prediction cuts rows into forward passes (``predict.method`` and its budgets)."""

    method: str
    batch_size: int
    max_tokens_per_batch: int
    max_length: int  # ``fixed`` pads to it; the longest sequence a pass can hold


@dataclass(frozen=True)
class PredictSettings:
    """Everything the oof and infer rules read (TTA is the infer rule's own param: OOF always
    predicts both orders)."""

    loading: Loading
    batching: Batching
    merge_lora: bool
    compile: bool


@dataclass(frozen=True)
class TokenSettings:
    """Everything the tokenize rule reads."""

    max_length: int
    truncation: str
    prompt_max_frac: float
    template: dict
