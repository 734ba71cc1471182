"""Per-fold LoRA / QLoRA training with the Hugging Face Trainer.

The Trainer provides what a long GPU job needs and what we would otherwise hand-roll:
gradient accumulation, warm-up and schedules, bitsandbytes 8-bit optimizers, mixed precision,
and checkpoints that resume exactly (model, optimizer, scheduler and RNG state). We add the loss
through our own pooling and score head (as prediction uses them), batch orders that depend only
on (seed, epoch), padding-free packed batches and token budgets, and checkpoints that resume only
the same run and only once complete (:mod:`checkpoints`).
"""

from __future__ import annotations

import functools
import logging
import os
import resource
import signal
import time
from pathlib import Path

import numpy as np
import torch
from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments, set_seed

from arena_pref.atomic import atomic_path, read_json, write_json
from arena_pref.errors import InputError
from arena_pref.logs import current_log_path
from arena_pref.models.batching import plan_rows
from arena_pref.models.loading import attach_lora, default_device, job_devices, load_model, load_tokenizer
from arena_pref.models.placement import job_device_map
from arena_pref.models.pooling import classify, concat_row, packed_inputs, packing_unsupported, pad_rows, padded_inputs
from arena_pref.models.varlen import base_implementation
from arena_pref.settings import to_params
from arena_pref.train import checkpoints, data_parallel

log = logging.getLogger(__name__)

# config name -> Trainer `optim` name; 8-bit AdamW from bitsandbytes where it runs
OPTIMIZERS = {
    "adamw": "adamw_torch",
    "adamw_8bit": "adamw_bnb_8bit",
    "paged_adamw_8bit": "paged_adamw_8bit",
    "sgd": "sgd",
}


class RowDataset(torch.utils.data.Dataset):
    """Training rows: sequences, their :class:`~arena_pref.train.targets.Targets`, answer segment ids."""

    def __init__(self, sequences, targets, segments=None):
        self.sequences, self.targets, self.segments = sequences, targets, segments

    def __len__(self):
        return len(self.sequences)

    def __getitem__(self, i):
        item = {"input_ids": self.sequences[i], "labels": int(self.targets.labels[i])}
        if self.targets.soft is not None:
            item["soft"], item["alpha"] = self.targets.soft[i], float(self.targets.alpha[i])
        if self.segments is not None:
            item["segments"] = self.segments[i]
        return item


def collate_targets(features):
    """A batch's ``labels`` and, with teachers, ``soft`` (rows x 3) and ``alpha``."""
    batch = {"labels": torch.tensor([int(f["labels"]) for f in features], dtype=torch.long)}
    if "soft" in features[0]:
        batch["soft"] = torch.tensor(np.array([f["soft"] for f in features]), dtype=torch.float32)
        batch["alpha"] = torch.tensor([f["alpha"] for f in features], dtype=torch.float32)
    return batch


def soft_target_loss(logits, labels, soft, alpha):
    """Per row ``alpha * KL(soft || model) + (1 - alpha) * CE(label)`` (rows without a label have
    alpha 1), in float32 whatever the logits' dtype."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    kl = (torch.xlogy(soft, soft) - soft * logp).sum(-1)
    ce = -logp.gather(1, labels.clamp(min=0)[:, None])[:, 0]
    return alpha * kl + (1 - alpha) * ce


class PaddedCollator:
    """Rows right-padded to the longest in the batch, with the attention mask and the rows' answer
    segment ids (pooling ``pair``) padded alongside: the padding prediction uses
    (:func:`pooling.padded_inputs`), whatever side the tokenizer pads on."""

    def __init__(self, pad_token_id):
        self.pad_token_id = pad_token_id

    def __call__(self, features):
        seqs = [f["input_ids"] for f in features]
        width = max(len(s) for s in seqs)
        ids, mask = padded_inputs(seqs, width, self.pad_token_id)
        batch = {
            "input_ids": ids,
            "attention_mask": mask,
            "n_tokens": sum(len(s) for s in seqs),
            **collate_targets(features),
        }
        if "segments" in features[0]:
            batch["segments"] = pad_rows([f["segments"] for f in features], width)
        return batch


class LengthGroupedSampler(torch.utils.data.Sampler):
    """Length-grouped order that depends only on (seed, epoch).

    Like the Trainer's own ``group_by_length`` sampler (shuffle, cut into mega-batches of 50
    batches, sort each by length, longest first) but drawn from its own generator seeded per
    epoch, so a run resumed mid-epoch from a checkpoint sees exactly the batches an
    uninterrupted run sees (the stock sampler draws from the global RNG at epoch start).
    """

    def __init__(self, lengths, batch_size, seed, mega=50):
        self.lengths, self.batch_size, self.seed, self.mega = np.asarray(lengths), batch_size, seed, mega
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def __len__(self):
        return len(self.lengths)

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(len(self.lengths))
        size = self.batch_size * self.mega
        groups = [order[i : i + size] for i in range(0, len(order), size)]
        return iter([int(i) for g in groups for i in g[np.argsort(-self.lengths[g], kind="stable")]])


class TokenBudgetBatchSampler(torch.utils.data.Sampler):
    """Batches filled up to ``max_tokens`` instead of a fixed row count: padded token slots
    (rows x longest row), or real tokens when the batches are ``packed``. Short rows then go
    through many at a time and long rows alone, so memory per step stays bounded and small
    rows keep the device busy. The cut is :func:`batching.plan_batches`, the one prediction uses.

    Each epoch the rows are length-sorted with ties broken at random and the batches are
    shuffled, drawn from a generator seeded by (seed, epoch): a resumed run sees the batches
    an uninterrupted one sees. The costliest batch goes first, so a step that does not fit in
    memory fails at once rather than hours in. The batch boundaries depend only on the sorted
    lengths, so the number of batches is the same every epoch, as the Trainer's step count needs.
    """

    def __init__(self, lengths, max_tokens, *, packed, seed):
        self.lengths, self.max_tokens, self.seed = np.asarray(lengths, dtype=np.int64), int(max_tokens), seed
        self.method = "packed" if packed else "token_budget"
        self.epoch = 0
        self.n_batches = len(self._plan(np.arange(len(self.lengths))))

    def _plan(self, order):
        return plan_rows(self.lengths, order, method=self.method, max_tokens=self.max_tokens)

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def __len__(self):
        return self.n_batches

    def batches(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        batches = self._plan(rng.permutation(len(self.lengths)))
        assert len(batches) == self.n_batches, "batch count changed between epochs"
        first = int(np.argmax([b.slots(self.lengths) for b in batches]))
        rest = [i for i in rng.permutation(len(batches)) if i != first]
        return [batches[k].rows.tolist() for k in [first, *rest]]

    def __iter__(self):
        return iter(self.batches())


class PackedCollator:
    """A batch of rows as one padding-free packed row: ``input_ids`` and restarting
    ``position_ids`` of shape (1, total tokens), ``lengths`` per row, ``labels`` per row.
    :func:`pooling.classify` pools each sequence; attention stays within each sequence."""

    def __call__(self, features):
        ids, positions, lengths = packed_inputs([f["input_ids"] for f in features])
        # ``bounds``: host ints, which the Trainer does not move to the device (lengths it does)
        batch = {
            "input_ids": ids,
            "position_ids": positions,
            "lengths": lengths,
            "n_tokens": ids.shape[1],
            "bounds": (0, *np.cumsum(lengths.tolist()).tolist()),
            **collate_targets(features),
        }
        if "segments" in features[0]:
            batch["segments"] = concat_row([f["segments"] for f in features])
        return batch


def training_rows(tokens, targets, swap_augment):
    """Sequences, :class:`~arena_pref.train.targets.Targets` and answer segment ids (None for a cache
    without them) to train on; with ``swap_augment`` each row also appears as (B, A).

    In the swapped order "A wins" becomes "B wins" and vice versa (teacher probabilities too);
    ties stay ties.
    """
    seqs = [list(map(int, s)) for s in tokens["input_ids"]]
    segs = [list(map(int, s)) for s in tokens["segments"]] if "segments" in tokens else None
    if swap_augment:
        seqs += [list(map(int, s)) for s in tokens["input_ids_swap"]]
        if segs is not None:
            segs += [list(map(int, s)) for s in tokens["segments_swap"]]
        targets = targets.concat(targets.swapped())
    return seqs, targets, segs


def optimizer_name(name):
    optim = OPTIMIZERS[name]
    if "8bit" in optim and not torch.cuda.is_available():
        # bitsandbytes' 8-bit optimizers need a GPU; on CPU the same AdamW in 32 bits
        log.warning("optimizer %s needs a GPU; using adamw_torch on CPU", name)
        optim = "adamw_torch"
    return optim


class PreferenceTrainer(Trainer):
    """The Trainer with our loss (pooling and score head as prediction uses them), our batch
    orders, mixed precision around both, and the loss and tokens of every step recorded."""

    def __init__(self, *args, pooling, max_tokens=None, packed=False, step_losses=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.pooling, self.max_tokens, self.packed = pooling, max_tokens, packed
        # the largest packed pass: flex_attention pads every pass to it, so its kernel compiles once
        longest = max((len(s) for s in self.train_dataset.sequences), default=0)
        self.pack_to = max_tokens or self.args.per_device_train_batch_size * longest
        self.step_losses = list(step_losses)  # steps done before a resume come from the checkpoint
        self.step_loss, self.tokens_seen = 0.0, 0
        self.epoch_sampler = None  # the sampler drawing this run's batch order (set_epoch each epoch)

    def autocast_smart_context_manager(self, cache_enabled=True):
        # the Trainer leaves mixed precision to accelerate, which autocasts ``model.forward``
        # only; compute_loss calls the body and head directly (pooling.classify)
        return self.accelerator.autocast()

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        logits = _through_ddp(classify)(
            model,
            input_ids=inputs["input_ids"],
            attention_mask=inputs.get("attention_mask"),
            lengths=inputs.get("lengths"),
            position_ids=inputs.get("position_ids"),
            bounds=inputs.get("bounds"),
            pooling=self.pooling,
            segments=inputs.get("segments"),
            pack_to=self.pack_to,
        )
        labels = inputs["labels"].to(logits.device)  # a split model's logits come from its last GPU
        if "soft" in inputs:
            soft, alpha = inputs["soft"].to(logits.device), inputs["alpha"].to(logits.device)
            rows = soft_target_loss(logits, labels, soft, alpha)
        else:
            rows = torch.nn.functional.cross_entropy(logits.float(), labels, reduction="none")
        # over the rows of the whole accumulated step: the Trainer then skips its own division by
        # the accumulation steps, and uneven last batches are weighted right
        if num_items_in_batch is None:
            loss = rows.mean()
        else:  # the Trainer counts on its device; a split model's logits end on the last GPU
            loss = rows.sum() / torch.as_tensor(num_items_in_batch).to(rows.device)
        # this rank's share of the step's loss (the ranks' shares sum to it: StepRecorder)
        self.step_loss = self.step_loss + loss.detach()
        if num_items_in_batch is not None and self.accelerator.num_processes > 1:
            # DDP averages the ranks' gradients; the loss is over the whole step's rows, so the
            # sum is wanted (as the Trainer's own compute_loss does)
            loss = loss * self.accelerator.num_processes
        self.tokens_seen += inputs["n_tokens"]
        return (loss, {"logits": logits}) if return_outputs else loss

    def get_train_dataloader(self):
        if not self.max_tokens:
            return super().get_train_dataloader()
        sampler = TokenBudgetBatchSampler(
            [len(s) for s in self.train_dataset.sequences], self.max_tokens, packed=self.packed, seed=self.args.seed
        )
        loader = torch.utils.data.DataLoader(
            self.train_dataset, batch_sampler=sampler, collate_fn=self.data_collator, num_workers=0
        )
        self.epoch_sampler = sampler
        return self.accelerator.prepare(loader)

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        # groups of global steps' rows, so every number of data-parallel ranks sees the same order
        self.epoch_sampler = LengthGroupedSampler(
            [len(s) for s in dataset.sequences],
            self.args.train_batch_size * self.args.gradient_accumulation_steps * self.args.world_size,
            self.args.seed,
        )
        return self.epoch_sampler

    def _run_epoch(self, *args, epoch, **kwargs):
        # the Trainer's set_epoch does not reach our sampler through the batch-skipping wrapper of a
        # data-parallel epoch resumed mid-way (SkipBatchSampler around accelerate's
        # BatchSamplerShard): set it here, before the epoch's batches are drawn
        if self.epoch_sampler is not None:
            self.epoch_sampler.set_epoch(epoch)
        return super()._run_epoch(*args, epoch=epoch, **kwargs)


def _through_ddp(step):
    """``step(model, **inputs)``, run through the forward of a DistributedDataParallel ``model``
    (a data-parallel rank), where DDP readies its gradient all-reduce: our pooling and head call
    the model's parts, never its own forward, so the wrapped model's forward becomes the step."""

    def call(model, **inputs):
        if not isinstance(model, torch.nn.parallel.DistributedDataParallel):
            return step(model, **inputs)
        inner = model.module
        # replacing any forward accelerate installed for mixed precision: compute_loss autocasts
        if getattr(inner, "_arena_pref_step", None) is not step:
            inner.forward, inner._arena_pref_step = functools.partial(step, inner), step
        return model(**inputs)

    return call


class StepRecorder(TrainerCallback):
    """Each optimizer step's loss into the trainer's history, and every saved checkpoint marked
    complete with the fingerprint of the run and that history (a resume continues both)."""

    def __init__(self, trainer, fingerprint):
        self.trainer, self.fingerprint = trainer, fingerprint

    def on_step_end(self, args, state, control, **kw):
        self.trainer.step_losses.append(_summed_over_ranks(self.trainer.step_loss, args))
        self.trainer.step_loss = 0.0

    def on_save(self, args, state, control, **kw):
        if args.world_size > 1:  # every rank has written its part (its RNG state) first
            torch.distributed.barrier()
        if state.is_world_process_zero:
            checkpoint = os.path.join(args.output_dir, f"{checkpoints.PREFIX}{state.global_step}")
            checkpoints.mark_complete(checkpoint, self.fingerprint, self.trainer.step_losses)


def _summed_over_ranks(value, args):
    """A number summed over the data-parallel ranks (itself in a single process)."""
    if args.world_size == 1:
        return float(value)
    total = torch.as_tensor(value, dtype=torch.float64, device=args.device).reshape(1)
    torch.distributed.all_reduce(total)
    return float(total)


class LogProgress(TrainerCallback):
    """Log lines with loss, learning rate and rate (tqdm is off: logs go to files)."""

    def on_train_begin(self, args, state, control, **kw):
        self.t0, self.step0 = time.perf_counter(), state.global_step

    def on_log(self, args, state, control, logs=None, **kw):
        if not logs or "loss" not in logs:
            return
        dt = time.perf_counter() - self.t0
        steps = state.global_step - self.step0
        rate = steps / dt if dt > 0 else float("nan")
        eta = (state.max_steps - state.global_step) / rate if rate > 0 else float("nan")
        log.info(
            "step %d/%d epoch %.2f loss %.4f lr %.2e | %.2f steps/s, eta %.0f s",
            state.global_step,
            state.max_steps,
            state.epoch or 0,
            logs["loss"],
            logs.get("learning_rate", float("nan")),
            rate,
            eta,
        )


KILL_AFTER_CHECKPOINT = "ARENA_PREF_KILL_AFTER_CHECKPOINT"
PAUSE_AFTER_CHECKPOINT = "ARENA_PREF_PAUSE_AFTER_CHECKPOINT"


class AfterCheckpoint(TrainerCallback):
    """For tests of resumption: right after checkpoint ``step`` is saved, SIGKILL this process (as a
    node failure would; ARENA_PREF_KILL_AFTER_CHECKPOINT=STEP) or stop making progress so a test can
    cancel the job from outside, as a scheduler's time limit or scancel would
    (ARENA_PREF_PAUSE_AFTER_CHECKPOINT=STEP)."""

    def __init__(self, step, *, pause):
        self.step, self.pause = step, pause

    def on_save(self, args, state, control, **kw):
        if state.global_step < self.step:
            return
        if self.pause:
            log.warning("%s=%d: pausing after checkpoint %d", PAUSE_AFTER_CHECKPOINT, self.step, state.global_step)
            while True:
                time.sleep(60)
        log.warning("%s=%d: killing the job after checkpoint %d", KILL_AFTER_CHECKPOINT, self.step, state.global_step)
        os.kill(os.getpid(), signal.SIGKILL)


def train_fold(
    *,
    backbone,
    tokens,
    targets,
    settings,
    options,
    ckpt_dir,
    adapter_dir,
    metrics_path,
    init_adapter=None,
    threads=None,
):
    """Train one fold's adapter on ``tokens`` (rows of the token cache) and their ``targets``
    (:class:`~arena_pref.train.targets.Targets`) with
    :class:`~arena_pref.settings.TrainSettings` (and :class:`~arena_pref.settings.JobOptions`); write
    the adapter (``save_pretrained``, with the score head) and a metrics JSON. Resumes from this
    run's last complete checkpoint. With ``options.data_parallel`` the ranks train it under
    torchrun (:mod:`arena_pref.train.data_parallel`), this process holding the lock. ``init_adapter``:
    an earlier stage's adapter (LoRA weights and score head) training starts from."""
    seqs, rows, segs = training_rows(tokens, targets, settings.train.swap_augment)
    optim = optimizer_name(settings.train.optimizer)
    # what ran matters too: a checkpoint's optimizer state cannot move between these
    runtime = {"optimizer": optim, "device": default_device().type}
    fp = checkpoints.fingerprint(
        settings=[to_params(settings), runtime],
        ids=tokens["id"],
        targets=targets,
        sequences=seqs + (segs or []),
        backbone=backbone,
        init=init_adapter,
    )
    with checkpoints.exclusive(ckpt_dir):
        resume, step_losses = checkpoints.prepare(ckpt_dir, fp)
        run = dict(
            backbone=backbone,
            dataset=RowDataset(seqs, rows, segs),
            settings=settings,
            options=options,
            optim=optim,
            ckpt_dir=ckpt_dir,
            adapter_dir=adapter_dir,
            metrics_path=metrics_path,
            fingerprint=fp,
            resume=resume,
            step_losses=step_losses,
            init_adapter=str(init_adapter) if init_adapter else None,
            threads=threads,
        )
        if options.data_parallel is not None:
            data_parallel.launch(run, options.data_parallel, log_path=current_log_path())
            metrics = read_json(metrics_path)
        else:
            metrics = run_training(**run)
    log.info(
        "trained %d steps (%d in this run) in %.1f s, mean loss %.4f, %.0f tokens/s",
        metrics["steps"],
        metrics["steps_this_run"],
        metrics["runtime_s_this_run"],
        metrics["train_loss"],
        metrics["tokens_per_s_this_run"],
    )
    return metrics


def run_training(
    *,
    backbone,
    dataset,
    settings,
    options,
    optim,
    ckpt_dir,
    adapter_dir,
    metrics_path,
    fingerprint,
    resume,
    step_losses,
    init_adapter=None,
    threads=None,
):
    """The training itself, in this process or in each rank of a data-parallel run (rank 0 then
    writes the adapter and the metrics)."""
    if threads:
        torch.set_num_threads(threads)
    model, tokenizer, packing = _trainable_model(backbone, settings, options)
    if init_adapter and resume is None:  # a resumed run's checkpoint holds its weights already
        start_from_adapter(model, init_adapter)
    args = _training_arguments(settings, options, ckpt_dir, optim)
    trainer = _trainer(
        model,
        tokenizer,
        settings,
        args,
        dataset,
        packing=packing,
        fingerprint=fingerprint,
        step_losses=step_losses,
    )
    _log_start(trainer, settings, packing, dataset.sequences)
    for i in range(torch.cuda.device_count()):  # every GPU of a model split over several
        torch.cuda.reset_peak_memory_stats(i)
    t0 = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=resume)
    elapsed = time.perf_counter() - t0
    metrics = _metrics(trainer, result, elapsed, resume=resume, steps_before=len(step_losses), seqs=dataset.sequences)
    if trainer.is_world_process_zero():
        with atomic_path(adapter_dir, directory=True) as tmp:
            trainer.model.save_pretrained(tmp)
        write_json(metrics, metrics_path)
    return metrics


def _trainable_model(backbone, settings, options):
    """The backbone loaded as configured, with LoRA attached; and whether packing can be used."""
    loading, opts = settings.loading, settings.train
    set_seed(opts.seed)  # the new score head is initialised at load time
    tokenizer = load_tokenizer(backbone)
    # a model-parallel model split over this job's GPUs (the Trainer leaves a model with a
    # multi-GPU hf_device_map where it is: no .to(), no DataParallel)
    split = job_device_map(backbone, options.model_parallel, loading, devices=job_devices())
    model = load_model(
        backbone,
        loading,
        pad_token_id=tokenizer.pad_token_id,
        device=data_parallel.local_device(),  # a data-parallel rank's own GPU
        device_map=split,
        training=True,
        allow_bf16_emulation=options.allow_bf16_emulation,
    )
    model = attach_lora(model, settings.lora, gradient_checkpointing=opts.gradient_checkpointing)
    packing = opts.packing
    if packing and (why := packing_unsupported(model)):
        log.warning("train.packing is not supported for this model (%s): padded batches instead", why)
        packing = False
    return model, tokenizer, packing


def start_from_adapter(model, adapter_dir):
    """Set the LoRA weights and the score head of ``model`` (a fresh PEFT model) to an earlier
    stage's adapter's; every one of them must be there and nothing else."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    state = load_file(str(Path(adapter_dir) / "adapter_model.safetensors"))
    try:
        result = set_peft_model_state_dict(model, state)
    except (KeyError, RuntimeError) as err:  # a tensor missing or of another shape
        raise InputError(f"the earlier stage's adapter {adapter_dir} does not fit this model: {err}") from None
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    not_set = sorted(trained & set(result.missing_keys))
    if result.unexpected_keys or not_set:
        raise InputError(
            f"the earlier stage's adapter {adapter_dir} does not fit this model: unexpected "
            f"{sorted(result.unexpected_keys)[:3]}, not set {not_set[:3]}"
        )
    log.info("training starts from the earlier stage's adapter %s (%d tensors)", adapter_dir, len(state))


def _training_arguments(settings, options, ckpt_dir, optim):
    opts, dtype = settings.train, settings.loading.dtype
    world = data_parallel.world_size()
    on_gpu = default_device().type == "cuda"
    return TrainingArguments(
        output_dir=str(ckpt_dir),
        per_device_train_batch_size=opts.batch_size,
        # grad_accum is the global step's: each of the data-parallel ranks does its share
        gradient_accumulation_steps=data_parallel.rank_grad_accum(opts.grad_accum, world),
        ddp_backend=None if on_gpu or world == 1 else "gloo",
        ddp_find_unused_parameters=False,
        # the rows of the whole global step divide each rank's loss (compute_loss)
        average_tokens_across_devices=True,
        learning_rate=opts.lr,
        weight_decay=opts.weight_decay,
        warmup_steps=opts.warmup_steps,
        num_train_epochs=opts.epochs,
        lr_scheduler_type=opts.scheduler,
        max_grad_norm=opts.max_grad_norm,
        optim=optim,
        # mixed precision in the model's dtype, on a CPU too (torch autocasts there as well)
        bf16=dtype == "bfloat16",
        fp16=dtype == "float16",
        use_cpu=not on_gpu,
        logging_steps=options.logging_steps,
        save_strategy="steps",
        save_steps=options.save_steps,
        save_total_limit=2,
        seed=opts.seed,
        data_seed=opts.seed,
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        # our rows carry exactly what compute_loss reads (segment ids too): keep them all
        remove_unused_columns=False,
    )


def _trainer(model, tokenizer, settings, args, dataset, *, packing, fingerprint, step_losses):
    opts = settings.train
    trainer = PreferenceTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=PackedCollator() if packing else PaddedCollator(tokenizer.pad_token_id),
        callbacks=[LogProgress()],
        pooling=settings.loading.pooling,
        max_tokens=opts.max_tokens_per_batch,
        packed=packing,
        step_losses=step_losses,
    )
    # with tqdm off the Trainer prints raw log dicts; LogProgress logs them readably instead
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(StepRecorder(trainer, fingerprint))  # before the fault injection below
    for var, pause in ((KILL_AFTER_CHECKPOINT, False), (PAUSE_AFTER_CHECKPOINT, True)):
        if os.environ.get(var):
            trainer.add_callback(AfterCheckpoint(int(os.environ[var]), pause=pause))
    return trainer


def _log_start(trainer, settings, packing, seqs):
    opts, args = settings.train, trainer.args
    longest = max(len(s) for s in seqs)
    if opts.max_tokens_per_batch and opts.max_tokens_per_batch < longest:
        log.info(
            "train.max_tokens_per_batch %d is below the longest sequence (%d tokens): such rows go alone",
            opts.max_tokens_per_batch,
            longest,
        )
    log.info(
        "training %d sequences (%d tokens) in %s %s, %d trainable parameters, optimizer %s, %s, "
        "gradient checkpointing %s",
        len(seqs),
        sum(len(s) for s in seqs),
        "packed" if packing else "padded",
        f"batches of up to {opts.max_tokens_per_batch} tokens"
        if opts.max_tokens_per_batch
        else f"batches of {opts.batch_size} rows",
        _trainable_parameters(trainer.model),
        _optim(args),
        f"mixed precision {settings.loading.dtype}" if args.bf16 or args.fp16 else "float32",
        "on" if opts.gradient_checkpointing else "off",
    )


def _optim(args):
    return str(getattr(args.optim, "value", args.optim))


def _trainable_parameters(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _metrics(trainer, result, elapsed, *, resume, steps_before, seqs):
    """What the run did. ``step_losses`` and ``train_loss`` cover every step, those before a resume
    included (a resumed run reports what an uninterrupted one does); runtime and rates cover this
    run's steps only (``steps_this_run``)."""
    on_gpu = torch.cuda.is_available()
    losses = trainer.step_losses
    return {
        "train_loss": float(np.mean(losses)) if losses else float("nan"),
        "step_losses": losses,
        "steps": trainer.state.global_step,
        "steps_this_run": trainer.state.global_step - steps_before,
        "resumed_from": resume,
        "epochs": float(result.metrics.get("epoch", 0.0)),
        "n_sequences": len(seqs),
        "n_tokens_per_epoch": int(sum(len(s) for s in seqs)),
        "trainable_parameters": _trainable_parameters(trainer.model),
        "runtime_s_this_run": elapsed,
        # every rank's tokens: the rate of the whole data-parallel run
        "tokens_per_s_this_run": _summed_over_ranks(trainer.tokens_seen, trainer.args) / max(elapsed, 1e-9),
        "processes": trainer.args.world_size,
        "optimizer": _optim(trainer.args),
        "attention": base_implementation(trainer.model.config),  # what ran (attn_implementation fastest picks)
        "device": str(default_device()),
        # the GPU that peaked highest (of a model split over several: each holds part of it)
        "peak_memory_mb": (
            max(torch.cuda.max_memory_allocated(i) for i in range(torch.cuda.device_count())) / 2**20
            if on_gpu
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        ),
    }
