"""Soft targets: teachers' OOF predictions for distillation, pseudo-labels for extra rows, and the
loss they train with (alpha * KL(teacher || model) + (1 - alpha) * CE(label))."""

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
from arena_pref.data import kaggle_csv
from arena_pref.errors import InputError
from arena_pref.train import targets
from arena_pref.train.trainer import soft_target_loss, training_rows


def written(tmp_path, *frames):
    """The frames as the teacher's parquet files."""
    paths = []
    for i, frame in enumerate(frames):
        paths.append(tmp_path / f"teacher_{i}.parquet")
        frame.to_parquet(paths[-1])
    return paths


def oof_frame(ids, fold, seed):
    rng = np.random.default_rng(seed)
    p, q = rng.dirichlet(np.ones(3), len(ids)), rng.dirichlet(np.ones(3), len(ids))
    return pd.DataFrame(
        {
            "id": ids,
            "fold": fold,
            "a": p[:, 0],
            "b": p[:, 1],
            "tie": p[:, 2],
            "a_tta": q[:, 0],
            "b_tta": q[:, 1],
            "tie_tta": q[:, 2],
        }
    )


def test_each_row_distils_the_teacher_fold_that_held_it_out(tmp_path):
    """Fold 2's training rows (folds 0, 1, 3) get, row by row, the TTA-averaged probabilities of the
    teacher's OOF file that holds the row: the prediction of the teacher fold that never trained on it."""
    frames = {k: oof_frame(np.arange(k * 5, k * 5 + 5), k, seed=k) for k in range(4)}
    ids = np.array([16, 0, 7, 3, 19, 8])  # rows of folds 3, 0, 1, 0, 3, 1, in the token cache's order
    probs = targets.teacher_probs(written(tmp_path, *[frames[k] for k in (0, 1, 3)]), name="teacher")
    t = targets.distilled(ids, np.array([0, 1, 2, 0, 1, 2]), probs, alpha=0.3, name="teacher")
    for row, i in enumerate(ids):
        frame = frames[i // 5]
        np.testing.assert_array_equal(t.soft[row], frame.loc[frame["id"] == i, ["a_tta", "b_tta", "tie_tta"]].iloc[0])
    assert t.alpha.tolist() == [0.3] * 6 and t.labels.tolist() == [0, 1, 2, 0, 1, 2]


def test_a_row_the_teacher_files_lack_is_named(tmp_path):
    probs = targets.teacher_probs(written(tmp_path, oof_frame(np.arange(5), 0, 0)), name="big")
    with pytest.raises(InputError, match=r"teacher 'big': its OOF predictions .* lack 2 row\(s\), e.g. ids \[7, 9\]"):
        targets.distilled(np.array([1, 7, 9]), np.array([0, 1, 2]), probs, alpha=0.5, name="big")


def test_a_row_in_two_teacher_files_or_not_a_distribution_is_an_error(tmp_path):
    with pytest.raises(InputError, match=r"teacher 't': row id 3 is in more than one of its files \(.*teacher_0"):
        targets.teacher_probs(
            written(tmp_path, oof_frame(np.arange(5), 0, 0), oof_frame(np.arange(3, 6), 1, 1)), name="t"
        )
    bad = oof_frame(np.arange(4), 0, 0)
    bad.loc[2, "b_tta"] = np.nan
    with pytest.raises(InputError, match=r"teacher_0.parquet: row id 2: columns a_tta, b_tta, tie_tta: teacher 't'"):
        targets.teacher_probs(written(tmp_path, bad), name="t")


def test_swapping_exchanges_labels_and_teacher_columns():
    t = targets.Targets(
        np.array([0, 1, 2, targets.NO_LABEL]),
        np.array([[0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.1, 0.1, 0.8], [0.5, 0.2, 0.3]]),
        np.array([0.5, 0.5, 0.5, 1]),
    )
    s = t.swapped()
    assert s.labels.tolist() == [1, 0, 2, targets.NO_LABEL]
    np.testing.assert_array_equal(s.soft, t.soft[:, [1, 0, 2]])
    both = t.concat(targets.hard(np.array([2])))
    assert both.labels.tolist() == [0, 1, 2, -1, 2] and both.alpha.tolist() == [0.5, 0.5, 0.5, 1, 0]


def test_training_rows_swap_the_teacher_probabilities_with_the_answers(tmp_path):
    cache = pd.DataFrame({"id": [1, 2], "input_ids": [[5, 6], [7]], "input_ids_swap": [[6, 5], [8]]})
    t = targets.distilled(
        np.array([1, 2]),
        np.array([0, 2]),
        targets.teacher_probs(written(tmp_path, oof_frame(np.array([1, 2]), 0, 4)), name="t"),
        alpha=0.5,
        name="t",
    )
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
        return pd.DataFrame(
            {
                "id": ids,
                "prompt": [[p] for p in prompts],
                "response_a": [["x"]] * len(ids),
                "response_b": [["y"]] * len(ids),
            }
        )

    train, test = table([1, 2], ["hi", "sum 2+2"]), table([3], ["a poem"])
    extra = table([10, 11, 12, 13], ["hi", "new question", "a poem", "another"])
    with caplog.at_level("INFO"):
        kept = kaggle_csv.unseen_extra_rows(extra, [train, test], "extra.csv")
    assert kept["id"].tolist() == [11, 13]
    assert "2 of 4 rows dropped" in caplog.text
    with pytest.raises(InputError, match=r"extra.csv.*row id 3: column id"):
        kaggle_csv.unseen_extra_rows(table([3, 20], ["x", "y"]), [train, test], "extra.csv")
    with pytest.raises(InputError, match="nothing is left to pseudo-label"):
        kaggle_csv.unseen_extra_rows(table([30], ["hi"]), [train, test], "extra.csv")


def test_a_fold_trains_on_its_rows_teacher_oof_then_the_pseudo_rows(tmp_path, monkeypatch):
    """steps.train hands train_fold fold 1's training rows (folds 0 and 2) with the teacher's OOF
    probabilities of exactly those rows, then every extra row with the pseudo-labels (no label,
    alpha 1)."""
    from arena_pref import steps
    from arena_pref.settings import Teachers
    from arena_pref.train import trainer
    from workflow_helpers import model_settings

    ids = np.arange(9)
    tokens = pd.DataFrame({"id": ids, "input_ids": [[1, 2]] * 9, "input_ids_swap": [[2, 1]] * 9})
    extra = pd.DataFrame({"id": [100, 101], "input_ids": [[3]] * 2, "input_ids_swap": [[4]] * 2})
    for name, df in (("tokens", tokens), ("extra", extra)):
        df.to_parquet(tmp_path / f"{name}.parquet")
    pd.DataFrame({"id": ids, "fold": ids % 3}).to_parquet(tmp_path / "folds.parquet")
    pd.DataFrame(
        {"id": ids, "prompt": [["p"]] * 9, "response_a": [["a"]] * 9, "response_b": [["b"]] * 9, "label": ids % 3}
    ).to_parquet(tmp_path / "train.parquet")
    oof = {k: oof_frame(ids[ids % 3 == k], k, seed=k) for k in (0, 2)}
    pseudo = oof_frame(np.array([101, 100]), 0, 9).drop(columns=["fold", "a_tta", "b_tta", "tie_tta"])
    got = {}
    monkeypatch.setattr(trainer, "train_fold", lambda **kw: got.update(kw))
    model = model_settings(lora={"r": 2, "alpha": 4, "target_modules": ["q_proj"]})
    teachers = Teachers(distill="big", alpha=0.25, pseudo="gem")
    (tmp_path / "pseudo").mkdir()
    steps.train(
        tokens_parquet=tmp_path / "tokens.parquet",
        train_parquet=tmp_path / "train.parquet",
        folds_parquet=tmp_path / "folds.parquet",
        fold=1,
        backbone="unused",
        settings=dataclasses.replace(model.training, teachers=teachers),
        options=model.options,
        checkpoints="c",
        adapter="a",
        metrics="m",
        teacher_oof=written(tmp_path, oof[0], oof[2]),
        pseudo_labels=written(tmp_path / "pseudo", pseudo)[0],
        extra_tokens=tmp_path / "extra.parquet",
    )
    rows, t = got["tokens"], got["targets"]
    assert rows["id"].tolist() == [0, 2, 3, 5, 6, 8, 100, 101]
    assert t.labels.tolist() == [0, 2, 0, 2, 0, 2, -1, -1] and t.alpha.tolist() == [0.25] * 6 + [1, 1]
    teacher = pd.concat(oof.values()).set_index("id")[["a_tta", "b_tta", "tie_tta"]]
    np.testing.assert_array_equal(t.soft[:6], teacher.loc[[0, 2, 3, 5, 6, 8]].to_numpy())
    np.testing.assert_array_equal(t.soft[6:], pseudo.set_index("id").loc[[100, 101], ["a", "b", "tie"]].to_numpy())


def test_checkpoints_of_other_teacher_targets_are_not_resumed():
    """The fingerprint a resume is checked against changes with the teacher's probabilities and
    alpha, and between hard and soft targets."""
    from arena_pref.train.checkpoints import fingerprint

    soft = np.full((3, 3), 1 / 3)

    def rows(t):
        return fingerprint(settings={}, ids=[1, 2, 3], targets=t, sequences=[[1]], backbone="hub/name")["rows"]

    labels = np.array([0, 1, 2])
    hard = rows(targets.hard(labels))
    a = rows(targets.Targets(labels, soft, np.full(3, 0.5)))
    b = rows(targets.Targets(labels, soft, np.full(3, 0.6)))
    c = rows(targets.Targets(labels, soft[:, [1, 0, 2]] * [1, 1, 1] + [[0.1, -0.1, 0]] * 3, np.full(3, 0.5)))
    assert len({hard, a, b, c}) == 4


def test_label_columns_in_the_extra_file_are_named_as_not_read(tmp_path, caplog):
    """Extra rows are pseudo-labelled: human labels in their file would be dropped without a word,
    so the parse log says which columns are not read."""
    from arena_pref import atomic, steps
    from arena_pref.data.demo import make_demo_data

    train, test = make_demo_data(30, 5, seed=3)
    extra = make_demo_data(10, 1, seed=11)[0]
    extra["id"] = np.arange(len(extra)) + 10**12
    for name, df in (("train", train), ("test", test), ("extra", extra)):
        atomic.write_csv(df, tmp_path / f"{name}.csv")
    steps.parse(tmp_path / "train.csv", "train", tmp_path / "train.parquet")
    steps.parse(tmp_path / "test.csv", "test", tmp_path / "test.parquet")
    with caplog.at_level("WARNING"):
        steps.parse(
            tmp_path / "extra.csv",
            "extra",
            tmp_path / "extra.parquet",
            train_parquet=tmp_path / "train.parquet",
            test_parquet=tmp_path / "test.parquet",
        )
    assert "columns winner_model_a, winner_model_b, winner_tie are not read" in caplog.text
    assert len(pd.read_parquet(tmp_path / "extra.parquet")) == 10
    caplog.clear()
    atomic.write_csv(extra.drop(columns=["winner_model_a", "winner_model_b", "winner_tie"]), tmp_path / "extra.csv")
    with caplog.at_level("WARNING"):
        steps.parse(
            tmp_path / "extra.csv",
            "extra",
            tmp_path / "extra.parquet",
            train_parquet=tmp_path / "train.parquet",
            test_parquet=tmp_path / "test.parquet",
        )
    assert "are not read" not in caplog.text
