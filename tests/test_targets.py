"""Soft targets: teachers' OOF predictions for distillation, pseudo-labels for extra rows, and the
loss they train with (alpha * KL(teacher || model) + (1 - alpha) * CE(label))."""

import numpy as np
import pandas as pd
import pytest
import torch

from arena_pref import data, targets
from arena_pref.errors import InputError
from arena_pref.train import soft_target_loss, training_rows


def oof_frame(ids, fold, seed):
    rng = np.random.default_rng(seed)
    p, q = rng.dirichlet(np.ones(3), len(ids)), rng.dirichlet(np.ones(3), len(ids))
    return pd.DataFrame({"id": ids, "fold": fold, "a": p[:, 0], "b": p[:, 1], "tie": p[:, 2],
                         "a_tta": q[:, 0], "b_tta": q[:, 1], "tie_tta": q[:, 2]})


def test_each_row_distils_the_teacher_fold_that_held_it_out():
    """Fold 2's training rows (folds 0, 1, 3) get, row by row, the TTA-averaged probabilities of the
    teacher's OOF file that holds the row: the prediction of the teacher fold that never trained on it."""
    frames = {k: oof_frame(np.arange(k * 5, k * 5 + 5), k, seed=k) for k in range(4)}
    ids = np.array([16, 0, 7, 3, 19, 8])  # rows of folds 3, 0, 1, 0, 3, 1, in the token cache's order
    probs = targets.teacher_probs([frames[k] for k in (0, 1, 3)])
    t = targets.distilled(ids, np.array([0, 1, 2, 0, 1, 2]), probs, alpha=0.3, name="teacher")
    for row, i in enumerate(ids):
        frame = frames[i // 5]
        np.testing.assert_array_equal(t.soft[row], frame.loc[frame["id"] == i, ["a_tta", "b_tta", "tie_tta"]].iloc[0])
    assert t.alpha.tolist() == [0.3] * 6 and t.labels.tolist() == [0, 1, 2, 0, 1, 2]


def test_a_row_the_teacher_files_lack_is_named():
    probs = targets.teacher_probs([oof_frame(np.arange(5), 0, 0)])
    with pytest.raises(InputError, match=r"teacher 'big': its OOF predictions .* lack 2 row\(s\), e.g. ids \[7, 9\]"):
        targets.distilled(np.array([1, 7, 9]), np.array([0, 1, 2]), probs, alpha=0.5, name="big")


def test_a_row_in_two_teacher_files_is_an_error():
    with pytest.raises(InputError, match="id 3 appears in more than one file"):
        targets.teacher_probs([oof_frame(np.arange(5), 0, 0), oof_frame(np.arange(3, 6), 1, 1)])


def test_swapping_exchanges_labels_and_teacher_columns():
    t = targets.Targets(np.array([0, 1, 2, targets.NO_LABEL]), np.array([[.6, .3, .1], [.2, .7, .1], [.1, .1, .8],
                                                                       [.5, .2, .3]]), np.array([.5, .5, .5, 1]))
    s = t.swapped()
    assert s.labels.tolist() == [1, 0, 2, targets.NO_LABEL]
    np.testing.assert_array_equal(s.soft, t.soft[:, [1, 0, 2]])
    both = t.concat(targets.hard(np.array([2])))
    assert both.labels.tolist() == [0, 1, 2, -1, 2] and both.alpha.tolist() == [.5, .5, .5, 1, 0]


def test_training_rows_swap_the_teacher_probabilities_with_the_answers():
    cache = pd.DataFrame({"id": [1, 2], "input_ids": [[5, 6], [7]], "input_ids_swap": [[6, 5], [8]]})
    t = targets.distilled(np.array([1, 2]), np.array([0, 2]),
                          targets.teacher_probs([oof_frame(np.array([1, 2]), 0, 4)]), alpha=0.5, name="t")
    seqs, rows, _ = training_rows(cache, t, swap_augment=True)
    assert seqs == [[5, 6], [7], [6, 5], [8]] and rows.labels.tolist() == [0, 2, 1, 2]
    np.testing.assert_array_equal(rows.soft[2:], t.soft[:, [1, 0, 2]])


def test_soft_target_loss_is_alpha_kl_plus_alpha_complement_ce():
    torch.manual_seed(0)
    logits, soft = torch.randn(5, 3), torch.softmax(torch.randn(5, 3), -1)
    labels = torch.tensor([0, 1, 2, 1, targets.NO_LABEL])
    alpha = torch.tensor([0.0, 0.25, 0.5, 1.0, 1.0])
    got = soft_target_loss(logits, labels, soft, alpha)
    logp = torch.log_softmax(logits, -1)
    kl = torch.nn.functional.kl_div(logp, soft, reduction="none").sum(-1)
    ce = torch.nn.functional.cross_entropy(logits, labels.clamp(min=0), reduction="none")
    torch.testing.assert_close(got, alpha * kl + (1 - alpha) * ce)
    assert torch.isfinite(got).all()
    # alpha 0 is the plain cross-entropy, whatever the teacher said; a perfect student has zero KL
    torch.testing.assert_close(got[0], ce[0])
    perfect = soft_target_loss(torch.log(soft), labels, soft, torch.ones(5))
    torch.testing.assert_close(perfect, torch.zeros(5), atol=1e-6, rtol=0)


def test_extra_rows_drop_prompts_of_train_and_test_and_keep_their_own_ids(caplog):
    def table(ids, prompts):
        return pd.DataFrame({"id": ids, "prompt": [[p] for p in prompts], "response_a": [["x"]] * len(ids),
                             "response_b": [["y"]] * len(ids)})

    train, test = table([1, 2], ["hi", "sum 2+2"]), table([3], ["a poem"])
    extra = table([10, 11, 12, 13], ["hi", "new question", "a poem", "another"])
    with caplog.at_level("INFO"):
        kept = data.unseen_extra_rows(extra, [train, test], "extra.csv")
    assert kept["id"].tolist() == [11, 13]
    assert "2 of 4 rows dropped" in caplog.text
    with pytest.raises(InputError, match=r"extra.csv.*row id 3: column id"):
        data.unseen_extra_rows(table([3, 20], ["x", "y"]), [train, test], "extra.csv")
    with pytest.raises(InputError, match="nothing is left to pseudo-label"):
        data.unseen_extra_rows(table([30], ["hi"]), [train, test], "extra.csv")
