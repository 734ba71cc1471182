"""Prediction with test-time augmentation (A/B swap) and length-sorted dynamic padding."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import torch

from .logs import Rate
from .metrics import tta_average
from .modeling import device, load_for_inference, load_tokenizer

log = logging.getLogger(__name__)

PROB_COLUMNS = ["a", "b", "tie"]
TTA_COLUMNS = ["a_tta", "b_tta", "tie_tta"]


def length_sorted_batches(lengths, batch_size):
    """Index batches over rows sorted by length (longest first: memory peaks show at once)."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


@torch.inference_mode()
def predict_sequences(model, sequences, *, pad_token_id, batch_size):
    """Class probabilities (n, 3) for token sequences, in the order given."""
    dev = next(model.parameters()).device
    probs = np.zeros((len(sequences), 3), dtype=np.float64)
    lengths = [len(s) for s in sequences]
    rate = Rate(sum(lengths), what="tokens")
    for idx in length_sorted_batches(lengths, batch_size):
        width = max(lengths[i] for i in idx)
        ids = torch.full((len(idx), width), pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            ids[row, :lengths[i]] = torch.as_tensor(sequences[i], dtype=torch.long)
            mask[row, :lengths[i]] = 1
        logits = model(input_ids=ids.to(dev), attention_mask=mask.to(dev)).logits
        probs[idx] = torch.softmax(logits.float(), dim=-1).cpu().numpy()
        rate.update(sum(lengths[i] for i in idx))
    return probs


def predict_frame(model, tokens, *, pad_token_id, batch_size, tta):
    """Probabilities for the rows of a token cache: ``a, b, tie`` in (A, B) order, and with
    ``tta`` also ``a_tta, b_tta, tie_tta``: the (B, A) prediction mapped back and averaged."""
    seqs = [s for s in tokens["input_ids"]]
    if tta:
        # both orders in one pass: length sorting puts a row's two orders in nearby batches
        seqs += [s for s in tokens["input_ids_swap"]]
    probs = predict_sequences(model, seqs, pad_token_id=pad_token_id, batch_size=batch_size)
    n = len(tokens)
    out = pd.DataFrame(probs[:n], columns=PROB_COLUMNS)
    out.insert(0, "id", tokens["id"].to_numpy(dtype=np.int64))
    if tta:
        out[TTA_COLUMNS] = tta_average(probs[:n], probs[n:])
    return out


def predict_with_adapter(*, backbone, adapter_dir, tokens, settings, tta, threads=None):
    if threads:
        torch.set_num_threads(threads)
    tokenizer = load_tokenizer(backbone)
    model = load_for_inference(backbone, adapter_dir, quantization=settings["quantization"],
                               dtype=settings["dtype"], pad_token_id=tokenizer.pad_token_id)
    log.info("predicting %d rows%s on %s", len(tokens), " x 2 orders (TTA)" if tta else "", device())
    return predict_frame(model, tokens, pad_token_id=tokenizer.pad_token_id,
                         batch_size=settings["predict"]["batch_size"], tta=tta)


def final_probs(pred, tta):
    """The (n, 3) probabilities a model contributes: TTA-averaged when TTA is on."""
    return pred[TTA_COLUMNS if tta else PROB_COLUMNS].to_numpy()


def average_folds(preds, tta):
    """Average per-fold test predictions (frames with identical ids) into one frame."""
    ids = preds[0]["id"].to_numpy()
    for p in preds[1:]:
        if not np.array_equal(p["id"].to_numpy(), ids):
            raise ValueError("fold predictions cover different test ids")
    mean = np.mean([final_probs(p, tta) for p in preds], axis=0)
    out = pd.DataFrame(mean, columns=PROB_COLUMNS)
    out.insert(0, "id", ids)
    return out
