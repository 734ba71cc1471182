"""Per-fold LoRA / QLoRA training with the Hugging Face Trainer.

The Trainer provides what a long GPU job needs and what we would otherwise hand-roll:
gradient accumulation, warm-up and schedules, bitsandbytes 8-bit optimizers, length-grouped
batches, and checkpoints that resume exactly (model, optimizer, scheduler and RNG state).
Checkpoints live outside the rule's declared outputs so a failed or killed job keeps them;
a fingerprint of the settings and training rows guards against resuming a different run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import resource
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from .io import atomic_path, read_json, write_json
from .modeling import attach_lora, default_device, load_model, load_tokenizer
from .pooling import classify, concat_row, packed_inputs, packing_unsupported, pad_rows, padded_inputs
from .predict import plan_rows

log = logging.getLogger(__name__)

# config name -> Trainer `optim` name; 8-bit AdamW from bitsandbytes where it runs
OPTIMIZERS = {"adamw": "adamw_torch", "adamw_8bit": "adamw_bnb_8bit", "paged_adamw_8bit": "paged_adamw_8bit",
              "sgd": "sgd"}


class RowDataset(torch.utils.data.Dataset):
    def __init__(self, sequences, labels, segments=None):
        self.sequences, self.labels, self.segments = sequences, labels, segments

    def __len__(self):
        return len(self.sequences)

    def __getitem__(self, i):
        item = {"input_ids": self.sequences[i], "labels": int(self.labels[i])}
        if self.segments is not None:
            item["segments"] = self.segments[i]
        return item


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
        batch = {"input_ids": ids, "attention_mask": mask,
                 "labels": torch.tensor([int(f["labels"]) for f in features], dtype=torch.long)}
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
        groups = [order[i:i + size] for i in range(0, len(order), size)]
        return iter([int(i) for g in groups for i in g[np.argsort(-self.lengths[g], kind="stable")]])


class TokenBudgetBatchSampler(torch.utils.data.Sampler):
    """Batches filled up to ``max_tokens`` instead of a fixed row count: padded token slots
    (rows x longest row), or real tokens when the batches are ``packed``. Short rows then go
    through many at a time and long rows alone, so memory per step stays bounded and small
    rows keep the device busy. The cut is :func:`predict.plan_batches`, the one prediction uses.

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
        batch = {"input_ids": ids, "position_ids": positions, "lengths": lengths,
                 "labels": torch.tensor([int(f["labels"]) for f in features], dtype=torch.long)}
        if "segments" in features[0]:
            batch["segments"] = concat_row([f["segments"] for f in features])
        return batch


def training_rows(tokens, labels, swap_augment):
    """Sequences, labels and answer segment ids (None for a cache without them) to train on;
    with ``swap_augment`` each row also appears as (B, A).

    In the swapped order "A wins" becomes "B wins" and vice versa; ties stay ties.
    """
    seqs = [list(map(int, s)) for s in tokens["input_ids"]]
    segs = [list(map(int, s)) for s in tokens["segments"]] if "segments" in tokens else None
    y = np.asarray(labels, dtype=np.int64)
    if swap_augment:
        seqs += [list(map(int, s)) for s in tokens["input_ids_swap"]]
        if segs is not None:
            segs += [list(map(int, s)) for s in tokens["segments_swap"]]
        y = np.concatenate([y, np.array([1, 0, 2])[y]])
    return seqs, y, segs


def fingerprint(settings, ids, labels):
    h = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    h.update(np.asarray(ids, dtype=np.int64).tobytes())
    h.update(np.asarray(labels, dtype=np.int64).tobytes())
    return h.hexdigest()


def prepare_checkpoint_dir(ckpt_dir, fp):
    """Keep checkpoints of the same run; wipe those of a different one. Returns resume path or None."""
    from transformers.trainer_utils import get_last_checkpoint

    ckpt_dir = Path(ckpt_dir)
    stamp = ckpt_dir / "fingerprint.json"
    if ckpt_dir.exists():
        old = read_json(stamp).get("fingerprint") if stamp.exists() else None
        if old != fp:
            log.info("checkpoints in %s belong to other settings or data: starting afresh", ckpt_dir)
            shutil.rmtree(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    write_json({"fingerprint": fp}, stamp)
    last = get_last_checkpoint(str(ckpt_dir))
    if last:
        log.info("resuming from %s", last)
    return last


def optimizer_name(name):
    optim = OPTIMIZERS[name]
    if "8bit" in optim and not torch.cuda.is_available():
        # bitsandbytes' 8-bit optimizers need a GPU; on CPU the same AdamW in 32 bits
        log.warning("optimizer %s needs a GPU; using adamw_torch on CPU", name)
        optim = "adamw_torch"
    return optim


def _trainer_class(pooling, *, max_tokens=None, packed=False):
    from transformers import Trainer

    class LengthGroupedTrainer(Trainer):
        def autocast_smart_context_manager(self, cache_enabled=True):
            # the Trainer leaves mixed precision to accelerate, which autocasts ``model.forward``
            # only; compute_loss calls the body and head directly (pooling.classify)
            return self.accelerator.autocast()

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            # our pooling and the model's score head, as prediction uses them (pooling.py)
            labels = inputs["labels"]
            logits = classify(model, input_ids=inputs["input_ids"],
                              attention_mask=inputs.get("attention_mask"),
                              lengths=inputs.get("lengths"), position_ids=inputs.get("position_ids"),
                              pooling=pooling, segments=inputs.get("segments"))
            if num_items_in_batch is not None:
                # rows of the whole accumulated step: the Trainer then skips its own division
                # by the accumulation steps, and uneven last batches are weighted right
                loss = torch.nn.functional.cross_entropy(logits.float(), labels, reduction="sum")
                loss = loss / num_items_in_batch
            else:
                loss = torch.nn.functional.cross_entropy(logits.float(), labels)
            return (loss, {"logits": logits}) if return_outputs else loss

        def get_train_dataloader(self):
            if not max_tokens:
                return super().get_train_dataloader()
            sampler = TokenBudgetBatchSampler([len(s) for s in self.train_dataset.sequences], max_tokens,
                                              packed=packed, seed=self.args.seed)
            loader = torch.utils.data.DataLoader(self.train_dataset, batch_sampler=sampler,
                                                 collate_fn=self.data_collator, num_workers=0)
            return self.accelerator.prepare(loader)

        def _get_train_sampler(self, train_dataset=None):
            dataset = train_dataset if train_dataset is not None else self.train_dataset
            return LengthGroupedSampler([len(s) for s in dataset.sequences],
                                        self.args.train_batch_size * self.args.gradient_accumulation_steps,
                                        self.args.seed)

    return LengthGroupedTrainer


KILL_AFTER_CHECKPOINT = "ARENA_PREF_KILL_AFTER_CHECKPOINT"
PAUSE_AFTER_CHECKPOINT = "ARENA_PREF_PAUSE_AFTER_CHECKPOINT"


def fault_injection_callback(step, *, pause):
    """For tests of resumption: right after checkpoint ``step`` is saved, SIGKILL this process (as a
    node failure would; ARENA_PREF_KILL_AFTER_CHECKPOINT=STEP) or stop making progress so a test can
    cancel the job from outside, as a scheduler's time limit or scancel would
    (ARENA_PREF_PAUSE_AFTER_CHECKPOINT=STEP)."""
    import signal

    from transformers import TrainerCallback

    class AfterCheckpoint(TrainerCallback):
        def on_save(self, args, state, control, **kw):
            if state.global_step < step:
                return
            if pause:
                log.warning("%s=%d: pausing after checkpoint %d", PAUSE_AFTER_CHECKPOINT, step,
                            state.global_step)
                while True:
                    time.sleep(60)
            log.warning("%s=%d: killing the job after checkpoint %d", KILL_AFTER_CHECKPOINT,
                        step, state.global_step)
            os.kill(os.getpid(), signal.SIGKILL)

    return AfterCheckpoint()


def progress_callback():
    from transformers import TrainerCallback

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
            log.info("step %d/%d epoch %.2f loss %.4f lr %.2e | %.2f steps/s, eta %.0f s",
                     state.global_step, state.max_steps, state.epoch or 0, logs["loss"],
                     logs.get("learning_rate", float("nan")), rate, eta)

    return LogProgress()


def train_fold(*, backbone, tokens, labels, settings, ckpt_dir, adapter_dir, metrics_path, threads=None):
    """Train one fold's adapter on ``tokens`` (rows of the token cache) and ``labels``.

    ``settings`` is the model's config slice: quantization, dtype, lora, train.
    Writes the adapter (``save_pretrained``, with the score head) and a metrics JSON.
    """
    from transformers import PrinterCallback, TrainingArguments, set_seed

    if threads:
        torch.set_num_threads(threads)
    tr = settings["train"]
    seed = int(tr["seed"])
    seqs, y, segs = training_rows(tokens, labels, tr.get("swap_augment", False))
    fp = fingerprint(settings, tokens["id"], labels)
    resume = prepare_checkpoint_dir(ckpt_dir, fp)

    set_seed(seed)  # the new score head is initialised at load time
    tokenizer = load_tokenizer(backbone)
    model = load_model(backbone, quantization=settings["quantization"], dtype=settings["dtype"],
                       pad_token_id=tokenizer.pad_token_id,
                       attn_implementation=settings.get("attn_implementation"),
                       allow_bf16_emulation=settings.get("allow_bf16_emulation", False))
    model = attach_lora(model, settings["lora"], gradient_checkpointing=tr.get("gradient_checkpointing", False))
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    packing = bool(tr.get("packing"))
    if packing and (why := packing_unsupported(model)):
        log.warning("train.packing is not supported for this model (%s): padded batches instead", why)
        packing = False

    on_gpu = default_device().type == "cuda"
    optim = optimizer_name(tr["optimizer"])
    args = TrainingArguments(
        output_dir=str(ckpt_dir),
        per_device_train_batch_size=tr["batch_size"],
        gradient_accumulation_steps=tr["grad_accum"],
        learning_rate=tr["lr"],
        weight_decay=tr.get("weight_decay", 0.0),
        warmup_steps=tr["warmup_steps"],
        num_train_epochs=tr["epochs"],
        lr_scheduler_type=tr.get("scheduler", "linear"),
        max_grad_norm=tr.get("max_grad_norm", 1.0),
        optim=optim,
        # mixed precision in the model's dtype, on a CPU too (torch autocasts there as well)
        bf16=settings["dtype"] == "bfloat16",
        fp16=settings["dtype"] == "float16",
        use_cpu=not on_gpu,
        logging_steps=tr.get("logging_steps", 10),
        save_strategy="steps",
        save_steps=tr["save_steps"],
        save_total_limit=2,
        seed=seed,
        data_seed=seed,
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        # our rows carry exactly what compute_loss reads (segment ids too): keep them all
        remove_unused_columns=False,
    )
    n_tokens = int(sum(len(s) for s in seqs))
    max_tokens = tr.get("max_tokens_per_batch")
    longest = max(len(s) for s in seqs)
    if max_tokens and max_tokens < longest:
        log.info("train.max_tokens_per_batch %d is below the longest sequence (%d tokens): such rows go alone",
                 max_tokens, longest)
    trainer_class = _trainer_class(settings.get("pooling", "auto"), max_tokens=max_tokens, packed=packing)
    trainer = trainer_class(model=model, args=args, train_dataset=RowDataset(seqs, y, segs),
                            data_collator=PackedCollator() if packing else PaddedCollator(tokenizer.pad_token_id),
                            callbacks=[progress_callback()])
    # with tqdm off the Trainer prints raw log dicts; our callback logs them readably instead
    trainer.remove_callback(PrinterCallback)
    for var, pause in ((KILL_AFTER_CHECKPOINT, False), (PAUSE_AFTER_CHECKPOINT, True)):
        if os.environ.get(var):
            trainer.add_callback(fault_injection_callback(int(os.environ[var]), pause=pause))
    log.info("training %d sequences (%d tokens) in %s %s, %d trainable parameters, optimizer %s, %s, "
             "gradient checkpointing %s", len(seqs), n_tokens, "packed" if packing else "padded",
             f"batches of up to {max_tokens} tokens" if max_tokens else f"batches of {tr['batch_size']} rows",
             n_trainable, optim, f"mixed precision {settings['dtype']}" if args.bf16 or args.fp16 else "float32",
             "on" if tr.get("gradient_checkpointing") else "off")
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=resume)
    elapsed = time.perf_counter() - t0

    with atomic_path(adapter_dir, directory=True) as tmp:
        trainer.model.save_pretrained(tmp)
    epochs_run = float(result.metrics.get("epoch", tr["epochs"]))
    # tokens of this process's run only: a resumed job did part of the epochs before
    done_fraction = 1.0 - (_checkpoint_step(resume) / max(trainer.state.max_steps, 1))
    metrics = {
        "train_loss": result.training_loss,
        "steps": trainer.state.global_step,
        "epochs": epochs_run,
        "n_sequences": len(seqs),
        "n_tokens_per_epoch": n_tokens,
        "trainable_parameters": n_trainable,
        "runtime_s": elapsed,
        "tokens_per_s": n_tokens * epochs_run * done_fraction / max(elapsed, 1e-9),
        "resumed_from": resume,
        "optimizer": optim,
        "device": str(default_device()),
        "peak_memory_mb": (torch.cuda.max_memory_allocated() / 2**20 if on_gpu
                           else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "log_history": trainer.state.log_history,
    }
    write_json(metrics, metrics_path)
    log.info("trained in %.1f s, final loss %.4f, %.0f tokens/s", elapsed, result.training_loss,
             metrics["tokens_per_s"])
    return metrics


def _checkpoint_step(path):
    return int(Path(path).name.split("-")[-1]) if path else 0
