"""The zero-shot judge (kind: judge): prompts and answer tokens, restricted next-token scores, the
A/B swap, padding on either side, calibration per fold, the optional vLLM backend (with a stand-in
module), and the config checks."""

import importlib.machinery
import json
import sys
import types

import numpy as np
import pandas as pd
import pytest
import torch
from arena_pref import settings
from arena_pref.errors import InputError
from arena_pref.judge import calibration, prompts, zero_shot
from arena_pref.metrics import MIRROR, log_loss

TEXTS = [
    f"prompt {i}: what is {w}? the answer about {w} is long and complete."
    for i, w in enumerate(["rust", "python", "tea", "maps", "stars"] * 40)
]
ROWS = pd.DataFrame(
    {
        "id": np.arange(5, dtype=np.int64) + 10,
        "prompt": [["what is tea?"], ["maps", "and stars?"], ["x " * 200], ["rust"], ["python please"]],
        "response_a": [["tea is long"], ["a", None], ["y " * 200], ["short"], ["the answer about python is long"]],
        "response_b": [["no"], ["b b b", "more"], ["z"], ["the answer about rust is long and complete."], [""]],
    }
)


def judge_model(**changes):
    """A judge's settings as the workflow builds them: fp32, unquantized (exact comparisons)."""
    return settings.model_config(
        {
            "kind": "judge",
            "backbone": {"kind": "tiny"},
            "quantization": "none",
            "dtype": "float32",
            "max_length": 160,
            **changes,
        }
    )


@pytest.fixture(scope="module")
def causal_dir(tmp_path_factory):
    """A tiny random causal Gemma-2 with the project-built tokenizer (left padding)."""
    from arena_pref.models.loading import build_tiny_backbone

    out = tmp_path_factory.mktemp("judge") / "tiny_causal"
    prompt = judge_model().scoring.prompt
    build_tiny_backbone(
        out,
        TEXTS + [prompt.template, prompt.plain_suffix],
        arch="gemma2",
        vocab_size=400,
        head="causal_lm",
        seed=0,
        answer_words=sorted(prompt.answers.values()),
    )
    return out


@pytest.fixture(scope="module")
def lm(causal_dir):
    from arena_pref.models.loading import load_causal_lm, load_tokenizer

    return load_causal_lm(causal_dir, device="cpu"), load_tokenizer(causal_dir)


def layout_of(tokenizer, **changes):
    return prompts.make_layout(tokenizer, judge_model(**changes).scoring.prompt, model="j")


def sequences(tokenizer, **changes):
    prompt = judge_model(**changes).scoring.prompt
    return prompts.judge_sequences(ROWS, tokenizer, layout_of(tokenizer, **changes), prompt)


# ------------------------------------------------------------------------------ the tiny causal LM


def test_the_tiny_builder_makes_a_causal_lm_over_the_tokenizer(causal_dir, lm):
    model, tokenizer = lm
    assert type(model).__name__ == "Gemma2ForCausalLM"
    assert model.config.vocab_size == len(tokenizer) and tokenizer.padding_side == "left"
    assert model.lm_head.out_features == len(tokenizer)


# ------------------------------------------------------------------------------ prompts


def test_answer_tokens_are_the_first_token_after_the_prompt(lm):
    _, tokenizer = lm
    layout = layout_of(tokenizer)
    assert not layout.chat and len(set(layout.answer_ids)) == 3
    cue = layout.fixed[-1]
    for answer, token in zip(("A", "B", "tie"), layout.answer_ids):
        text = tokenizer.decode(cue) + answer
        assert tokenizer(text, add_special_tokens=False)["input_ids"][len(cue)] == token
    # plain text: the tokenizer's <bos> first, the cue (plain_suffix) last
    seq = sequences(tokenizer)["input_ids"][0]
    assert seq[0] == tokenizer.bos_token_id and tokenizer.decode(seq).endswith("equally good.\nAnswer:\n")


def test_an_answer_of_several_tokens_is_a_config_error(lm):
    _, tokenizer = lm
    # "Answer A" and "Answer B" both start with the token "Answer": read at their first token, the
    # classes could not be told apart; the judge reads one token per answer
    with pytest.raises(InputError) as err:
        layout_of(tokenizer, answers={"a": "Answer A", "b": "Answer B", "tie": "tie"})
    assert str(err.value).startswith(
        "config models.j.answers.a: 'Answer A' after the prompt is 3 tokens ('Answer' + ' ' + 'A'), not one of its "
        "own, and the judge reads one token per answer: choose a word the tokenizer keeps whole after the prompt"
    )


def mistral_like_tokenizer():
    """A SentencePiece-style tokenizer as Mistral-7B's: spaces are '▁', only the start of the text
    gets one, and the vocabulary has '▁tie' but no 'tie', so 'tie' right after '[/INST]' or a new
    line splits into 't' + 'ie'; the [INST] chat template with no new line before the answer."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    pieces = ["<unk>", "<s>", "</s>", "▁", "A", "B", "t", "i", "e", "ie", "▁t", "▁tie", "▁A", "▁B", "\n"]
    vocab = {p: i for i, p in enumerate(pieces)}
    bpe = models.BPE(vocab, [("i", "e"), ("▁", "t"), ("▁t", "ie"), ("▁", "A"), ("▁", "B")], unk_token="<unk>")
    core = Tokenizer(bpe)
    core.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    tokenizer.add_special_tokens({"additional_special_tokens": ["[INST]", "[/INST]"]})
    tokenizer.chat_template = "{{ bos_token }}{% for m in messages %}[INST] {{ m['content'] }}[/INST]{% endfor %}"
    return tokenizer


def test_an_answer_split_after_the_generation_prompt_is_named_with_the_one_that_is_not():
    """Mistral-7B's vocabulary: after '[/INST]', 'tie' is 't' + 'ie', and the judge read the logit of
    't' as the tie's; it stops naming the label, and ' tie' ('▁tie', one token) is accepted."""
    tokenizer = mistral_like_tokenizer()
    assert tokenizer.convert_ids_to_tokens(tokenizer("[/INST]tie", add_special_tokens=False)["input_ids"]) == [
        "[/INST]",
        "t",
        "ie",
    ]
    with pytest.raises(InputError) as err:
        layout_of(tokenizer)
    assert str(err.value) == (
        "config models.j.answers.tie: 'tie' after the prompt is 2 tokens ('t' + 'ie'), not one of its own, "
        "and the judge reads one token per answer: ' tie' is one ('▁tie')"
    )
    layout = layout_of(tokenizer, answers={"a": "A", "b": "B", "tie": " tie"})
    assert layout.chat and tokenizer.convert_ids_to_tokens(list(layout.answer_ids)) == ["A", "B", "▁tie"]


def test_the_chat_template_wraps_the_question_when_the_tokenizer_has_one(lm):
    _, tokenizer = lm
    chat = type(tokenizer).from_pretrained(tokenizer.name_or_path)
    chat.chat_template = (
        "{{ bos_token }}{% for m in messages %}<start_of_turn>user\n{{ m['content'] }}"
        "<end_of_turn>\n{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
    )
    layout = layout_of(chat)
    seq = prompts.judge_sequences(ROWS.iloc[:1], chat, layout, judge_model().scoring.prompt)["input_ids"][0]
    template = judge_model().scoring.prompt.template
    message = template.format(prompt="what is tea?", response_a="tea is long", response_b="no")
    rendered = chat.apply_chat_template(
        [{"role": "user", "content": message}], add_generation_prompt=True, tokenize=False
    )
    assert layout.chat and chat.decode(seq) == rendered
    assert list(seq).count(chat.bos_token_id) == 1 and rendered.endswith("<start_of_turn>model\n")


def test_long_texts_are_cut_never_the_question(lm):
    _, tokenizer = lm
    seqs = sequences(tokenizer, max_length=160)
    long = seqs.iloc[2]
    assert long["truncated"] and long["length"] == 160 and not seqs["truncated"].iloc[[0, 3]].any()
    text = tokenizer.decode(long["input_ids"])
    assert text.endswith("equally good.\nAnswer:\n") and "[Answer B]\nz\n\n" in text
    assert "[User prompt]\nx" in text and "[Answer A]\ny" in text


def test_a_template_without_room_for_the_texts_is_named(lm):
    _, tokenizer = lm
    model = judge_model(max_length=40)
    layout = prompts.make_layout(tokenizer, model.scoring.prompt, model="j")
    with pytest.raises(InputError, match=r"config models\.j\.max_length: the judge template takes \d+ tokens"):
        prompts.check_room(layout, model.scoring.prompt, "j")


# ------------------------------------------------------------------------------ scores


def full_next_token_logits(model, seq):
    with torch.inference_mode():
        return model(input_ids=torch.tensor([list(seq)])).logits[0, -1].double()


def test_scores_are_the_full_next_token_logits_at_the_answer_tokens(lm):
    model, tokenizer = lm
    seqs, ids = sequences(tokenizer), layout_of(tokenizer).answer_ids
    logits = zero_shot.score_sequences(
        model,
        list(seqs["input_ids"]),
        answer_ids=ids,
        pad_token_id=tokenizer.pad_token_id,
        side="left",
        max_tokens=10_000,
    )
    for row, seq in enumerate(seqs["input_ids"]):
        full = full_next_token_logits(model, seq)
        np.testing.assert_allclose(logits[row], full[list(ids)].numpy(), atol=1e-5)
        expected = torch.softmax(full[list(ids)], 0).numpy()
        np.testing.assert_allclose(
            calibration.apply(calibration.IDENTITY, logits[row : row + 1])[0], expected, atol=1e-5
        )
    probs = calibration.apply(calibration.IDENTITY, logits)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-12)
    # the three logits differ from row to row: the random model reads the texts
    assert np.ptp(logits[:, 0]) > 1e-3


@pytest.mark.parametrize("max_tokens", [10_000, 300])
def test_left_and_right_padding_give_the_same_scores(lm, max_tokens):
    model, tokenizer = lm
    seqs, ids = sequences(tokenizer), layout_of(tokenizer).answer_ids
    flat = list(seqs["input_ids"]) + list(seqs["input_ids_swap"])
    assert len({len(s) for s in flat}) > 3  # padding happens
    left, right = (
        zero_shot.score_sequences(
            model,
            flat,
            answer_ids=ids,
            pad_token_id=tokenizer.pad_token_id,
            side=side,
            max_tokens=max_tokens,
            n_pairs=len(seqs),
        )
        for side in ("left", "right")
    )
    np.testing.assert_allclose(left, right, atol=1e-5)
    alone = np.stack([full_next_token_logits(model, s)[list(ids)].numpy() for s in flat])
    np.testing.assert_allclose(left, alone, atol=1e-5)


def test_the_swapped_order_is_the_direct_score_of_the_swapped_texts(causal_dir):
    model = judge_model()
    raw = zero_shot.score_rows(model="j", parsed=ROWS, backbone=causal_dir, settings=model.scoring, both_orders=True)
    swapped_rows = ROWS.rename(columns={"response_a": "response_b", "response_b": "response_a"})
    direct = zero_shot.score_rows(
        model="j", parsed=swapped_rows, backbone=causal_dir, settings=model.scoring, both_orders=False
    )
    np.testing.assert_allclose(
        raw[calibration.BA_COLUMNS].to_numpy(), direct[calibration.AB_COLUMNS].to_numpy(), atol=1e-5
    )
    # mapped back, the swapped order's "A" column is the original B's
    frame = calibration.predict_frame(calibration.IDENTITY, raw, tta=True)
    ab = calibration.apply(calibration.IDENTITY, raw[calibration.AB_COLUMNS])
    swapped_back = calibration.apply(calibration.IDENTITY, direct[calibration.AB_COLUMNS])[:, [1, 0, 2]]
    np.testing.assert_allclose(frame[["a_tta", "b_tta", "tie_tta"]].to_numpy(), (ab + swapped_back) / 2, atol=1e-5)
    np.testing.assert_allclose(frame[["a", "b", "tie"]].to_numpy(), ab, atol=1e-12)
    assert frame["id"].tolist() == ROWS["id"].tolist()


def test_test_rows_without_tta_are_scored_in_one_order(causal_dir):
    raw = zero_shot.score_rows(
        model="j", parsed=ROWS, backbone=causal_dir, settings=judge_model().scoring, both_orders=False
    )
    assert list(raw.columns) == ["id", *calibration.AB_COLUMNS]
    with pytest.raises(InputError, match="TTA needs the swapped order"):
        calibration.predict_frame(calibration.IDENTITY, raw, tta=True)


# ------------------------------------------------------------------------------ calibration


def synthetic(n, temperature, bias, seed=0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=3.0, size=(n, 3)) + rng.normal(size=(n, 1)) * 5  # row offsets change nothing
    probs = calibration.softmax(logits / temperature + np.asarray(bias))
    y = np.array([rng.choice(3, p=p) for p in probs])
    return logits, y


def test_calibration_recovers_a_known_temperature_and_biases():
    logits, y = synthetic(20_000, 2.5, (0.7, -0.4, 0.0))
    fitted = calibration.fit(logits, y)
    assert fitted.temperature == pytest.approx(2.5, rel=0.05)
    assert fitted.bias[0] == pytest.approx(0.7, abs=0.06) and fitted.bias[1] == pytest.approx(-0.4, abs=0.06)
    assert fitted.bias[2] == 0.0
    raw = log_loss(y, calibration.apply(calibration.IDENTITY, logits))
    assert log_loss(y, calibration.apply(fitted, logits)) < raw - 0.05
    assert calibration.Calibration.from_json(fitted.to_json()) == fitted


def fold_inputs(n=400, seed=1):
    logits, y = synthetic(n, 3.0, (0.5, 0.0, 0.0), seed=seed)
    swapped, _ = synthetic(n, 3.0, (0.0, 0.0, 0.0), seed=seed + 1)
    ids = np.arange(n, dtype=np.int64) + 1000
    raw = pd.DataFrame({"id": ids})
    raw[calibration.AB_COLUMNS], raw[calibration.BA_COLUMNS] = logits, swapped
    labels = pd.Series(y, index=ids)
    assignment = pd.Series(np.arange(n) % 3, index=ids)
    return raw, labels, assignment


def test_a_fold_is_calibrated_without_its_held_out_rows():
    raw, labels, assignment = fold_inputs()
    test = raw.iloc[:50].assign(id=np.arange(50) + 5000)
    oof, fitted, scores = calibration.calibrate_fold(raw, labels, assignment, 1)
    test_frame = calibration.predict_frame(fitted, test, tta=True)
    held = assignment.index[assignment == 1]
    assert oof["id"].tolist() == held.tolist() and (oof["fold"] == 1).all()
    assert list(test_frame.columns) == ["id", "a", "b", "tie", "a_tta", "b_tta", "tie_tta"]
    for frame in (oof, test_frame):
        np.testing.assert_allclose(frame[["a", "b", "tie"]].sum(axis=1), 1.0, atol=1e-12)
        np.testing.assert_allclose(frame[["a_tta", "b_tta", "tie_tta"]].sum(axis=1), 1.0, atol=1e-12)
    assert scores["calibrated"] < scores["raw"]
    # the held-out rows' labels play no part in the fit; the other rows' labels do
    flipped = labels.copy()
    flipped[held] = (flipped[held] + 1) % 3
    assert calibration.calibrate_fold(raw, flipped, assignment, 1)[1] == fitted
    others = labels.copy()
    others[assignment.index[assignment == 0]] = 2
    assert calibration.calibrate_fold(raw, others, assignment, 1)[1] != fitted


def test_a_saved_calibration_loads_and_a_broken_one_is_named(tmp_path):
    fitted = calibration.Calibration(2.0, (0.5, -0.25, 0.0))
    (tmp_path / "ok.json").write_text(json.dumps({"model": "j", "fold": 0, **fitted.to_json()}))
    assert calibration.load(tmp_path / "ok.json") == fitted
    for name, text in (
        ("bad.json", "{"),
        ("keys.json", '{"temperature": 1.0}'),
        ("zero.json", '{"temperature": 0, "bias": [0, 0, 0]}'),
    ):
        (tmp_path / name).write_text(text)
        with pytest.raises(InputError, match=rf"file '.*{name}': .*(calibration|temperature)"):
            calibration.load(tmp_path / name)


def test_the_fit_uses_both_orders_with_mirrored_labels():
    raw, labels, _ = fold_inputs(n=6)
    logits, y = calibration.shown_frame(raw, labels)
    assert logits.shape == (12, 3)
    np.testing.assert_array_equal(y[6:], MIRROR[y[:6]])
    np.testing.assert_array_equal(logits[6:], raw[calibration.BA_COLUMNS].to_numpy())


# ------------------------------------------------------------------------------ vLLM (stand-in)


class FakeLogprob:
    def __init__(self, logprob):
        self.logprob = logprob


def fake_vllm(calls, drop=None):
    """A stand-in ``vllm`` module: records the engine's and the requests' arguments, and answers
    each request with log-probabilities that encode its index and the token."""
    module = types.ModuleType("vllm")
    module.__spec__ = importlib.machinery.ModuleSpec("vllm", None)

    class SamplingParams:
        def __init__(self, **kwargs):
            calls["sampling"] = kwargs
            self.kwargs = kwargs

    class LLM:
        def __init__(self, **kwargs):
            calls["engine"] = kwargs
            self.max_model_len = kwargs["max_model_len"]

        def generate(self, prompts, params, use_tqdm=True):
            calls["prompts"] = prompts
            allowed = params.kwargs["allowed_token_ids"]
            outs = []
            for i, prompt in enumerate(prompts):
                # vLLM's own check (v1 input processor, tests/v1/e2e/test_context_length.py)
                length = len(prompt["prompt_token_ids"])
                if length + params.kwargs["max_tokens"] > self.max_model_len:
                    raise ValueError(
                        f"The decoder prompt (length {length}) plus the number of requested output tokens "
                        f"(at least 1) is longer than the maximum model length of {self.max_model_len}"
                    )
                first = {t: FakeLogprob(-(i + 1) * 10.0 - k) for k, t in enumerate(allowed) if t != drop}
                outs.append(types.SimpleNamespace(outputs=[types.SimpleNamespace(logprobs=[first])]))
            return outs

    module.LLM, module.SamplingParams = LLM, SamplingParams
    return module


def test_the_vllm_backend_builds_restricted_one_token_requests_and_maps_answers_back(causal_dir, monkeypatch):
    calls = {}
    monkeypatch.setitem(sys.modules, "vllm", fake_vllm(calls))
    model = judge_model(backend="vllm", quantization="4bit", dtype="bfloat16")
    raw = zero_shot.score_rows(model="j", parsed=ROWS, backbone=causal_dir, settings=model.scoring, both_orders=True)
    from arena_pref.models.loading import load_tokenizer

    tokenizer = load_tokenizer(causal_dir)
    layout = prompts.make_layout(tokenizer, model.scoring.prompt, model="j")
    seqs = prompts.judge_sequences(ROWS, tokenizer, layout, model.scoring.prompt)
    expected = [list(map(int, s)) for s in list(seqs["input_ids"]) + list(seqs["input_ids_swap"])]
    assert [p["prompt_token_ids"] for p in calls["prompts"]] == expected
    assert max(map(len, expected)) == 160  # a row cut to exactly max_length: its answer token still fits
    assert calls["sampling"] == {
        "max_tokens": 1,
        "temperature": 1.0,
        "logprobs": 3,
        "allowed_token_ids": list(layout.answer_ids),
    }
    assert calls["engine"] == {
        "model": str(causal_dir),
        "dtype": "bfloat16",
        "max_model_len": 161,  # max_length and the answer token
        "seed": 0,
        "logprobs_mode": "processed_logprobs",
        "quantization": "bitsandbytes",
    }
    n = len(ROWS)
    request = np.arange(2 * n)[:, None]
    want = -(request + 1) * 10.0 - np.arange(3)[None]  # the stand-in's value of request i, answer k
    np.testing.assert_array_equal(raw[calibration.AB_COLUMNS].to_numpy(), want[:n])
    np.testing.assert_array_equal(raw[calibration.BA_COLUMNS].to_numpy(), want[n:])


def test_a_vllm_answer_without_its_log_probability_is_an_error(causal_dir, monkeypatch):
    model = judge_model(backend="vllm")
    from arena_pref.models.loading import load_tokenizer

    missing = prompts.make_layout(load_tokenizer(causal_dir), model.scoring.prompt, model="j").answer_ids[2]
    monkeypatch.setitem(sys.modules, "vllm", fake_vllm({}, drop=missing))
    with pytest.raises(InputError, match=rf"no log-probability for answer token\(s\) \[{missing}\] of request 0"):
        zero_shot.score_rows(model="j", parsed=ROWS, backbone=causal_dir, settings=model.scoring, both_orders=False)


def test_backend_vllm_without_vllm_is_a_config_error(monkeypatch):
    from arena_pref.models import backbones

    monkeypatch.setattr("importlib.util.find_spec", lambda name: None if name == "vllm" else object())
    with pytest.raises(
        InputError,
        match=r"config models\.model\.backend: vllm is not installed: install it .* or "
        r"use backend: transformers",
    ):
        backbones.check_judge(judge_model(backend="vllm"))


# ------------------------------------------------------------------------------ config


def test_a_judge_is_validated_and_filled():
    model = settings.model_config({"kind": "judge", "backbone": {"kind": "tiny"}})
    assert isinstance(model, settings.JudgeModelConfig) and model.kind == "judge"
    assert model.scoring.prompt.answers == {"a": "A", "b": "B", "tie": "tie"}
    assert (model.scoring.backend, model.scoring.quantization, model.scoring.dtype) == (
        "transformers",
        "4bit",
        "bfloat16",
    )
    assert model.tta and model.folds is None and model.options == settings.JudgeOptions(False)
    params = settings.to_params(model.scoring)
    assert settings.from_params(settings.JudgeSettings, params) == model.scoring
    assert "allow_bf16_emulation" not in repr(params)


def test_judge_params_do_not_depend_on_key_order():
    written = {
        "kind": "judge",
        "backbone": {"kind": "tiny", "arch": "llama", "num_layers": 1},
        "answers": {"a": "first", "b": "second", "tie": "same"},
        "max_length": 512,
        "predict": {"tta": False, "folds": [0]},
        "quantization": "none",
    }
    reordered = {
        k: (dict(reversed(list(v.items()))) if isinstance(v, dict) else v) for k, v in reversed(list(written.items()))
    }
    a, b = settings.model_config(written), settings.model_config(reordered)
    assert repr(settings.to_params(a.scoring)) == repr(settings.to_params(b.scoring))
    assert settings.canonical(a.backbone) == settings.canonical(b.backbone)
    assert (a.tta, a.folds) == (b.tta, b.folds) == (False, (0,))


@pytest.mark.parametrize(
    "changes,message",
    [
        (
            {"template": "{prompt} {response_a}"},
            r"config models\.model\.template: must hold each of .*"
            r"\{response_b\} 0 times",
        ),
        ({"answers": {"a": "X", "b": "X"}}, r"config models\.model\.answers: the three answers must differ"),
        ({"backend": "vllm", "quantization": "8bit"}, r"config models\.model\.quantization: backend vllm runs 4bit"),
        ({"answers": {"yes": "A"}}, r"unknown key 'yes'"),
        ({"lora": {"r": 4}}, r"unknown key 'lora'"),
    ],
)
def test_judge_config_errors_name_the_key(changes, message):
    with pytest.raises(InputError, match=message):
        settings.model_config({"kind": "judge", "backbone": {"kind": "tiny"}, **changes})


def predict_only(tmp_path, **judge):
    """A run from trained models with a judge whose trained directory holds folds 0 and 1."""
    for k in (0, 1):
        (tmp_path / "jj" / f"fold{k}").mkdir(parents=True, exist_ok=True)
        (tmp_path / "jj" / f"fold{k}" / "calibration.json").write_text("{}")
    model = {
        "kind": "judge",
        "backbone": {"kind": "path", "path": "models/llm"},
        "trained": str(tmp_path / "jj"),
        **judge,
    }
    return {
        "data": {"test_csv": "test.csv"},
        "cv": {"n_folds": 2},
        "models": {"jj": model},
        "blend": {"method": "weights", "weights": {"jj": 1.0}},
    }


def test_a_run_from_trained_models_applies_a_judges_saved_calibrations(tmp_path):
    from arena_pref.train import trained_paths

    config = settings.load_config(predict_only(tmp_path, predict={"folds": [1]}))
    assert config.predict_only and config.test_passes("jj") == ["fold1"]
    trained_paths.check(config)
    assert trained_paths.calibration_path(config, "jj", 1) == f"{tmp_path}/jj/fold1/calibration.json"
    (tmp_path / "jj" / "fold1" / "calibration.json").unlink()
    with pytest.raises(InputError, match=r"config models\.jj\.trained: '.*/jj/fold1/calibration\.json' is missing"):
        trained_paths.check(config)


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda m: m.pop("trained"), r"config models\.jj: without data\.train_csv every model predicts from a trained"),
        (
            lambda m: m.update(backbone={"kind": "tiny"}),
            r"config models\.jj\.backbone: a tiny backbone is built from "
            r"the training texts",
        ),
    ],
)
def test_a_judge_without_training_data_needs_its_trained_calibrations(tmp_path, change, message):
    config = predict_only(tmp_path)
    change(config["models"]["jj"])
    with pytest.raises(InputError, match=message):
        settings.load_config(config)


@pytest.mark.slow  # compiles, spawns processes or runs Snakemake: make test, not test-fast
def test_the_kaggle_bundle_refuses_a_judge_in_the_dry_run(tmp_path):
    """A bundle with a judge member stops when the workflow plans it, before any job runs; a judge
    that is a teacher only (member: false) is left out of the bundle and does not stop it."""
    from workflow_helpers import snakemake, write_config

    write_config(
        tmp_path, models={"jj": JUDGE, "pf": {"kind": "features", "learner": "logreg"}}, blend={"method": "stack"}
    )
    proc = snakemake(tmp_path, "-n", "results/kaggle_bundle", check=False)
    assert proc.returncode != 0
    assert "model 'jj': a judge (kind: judge) cannot go into a Kaggle bundle yet" in proc.stdout + proc.stderr
    from arena_pref.kaggle import bundle

    teacher_only = {
        "models": {
            "jj": {**JUDGE, "member": False},
            "s": {
                "backbone": {"kind": "tiny"},
                "lora": {"r": 2, "alpha": 4, "target_modules": ["q"]},
                "distill": {"teacher": "jj"},
            },
        },
        "data": {"train_csv": "t.csv", "test_csv": "u.csv"},
        "blend": {"method": "stack"},
    }
    bundle.check_bundle(settings.load_config(teacher_only))


# ------------------------------------------------------------------------------ the workflow


JUDGE = {
    "kind": "judge",
    "backbone": {
        "kind": "tiny",
        "arch": "llama",
        "vocab_size": 500,
        "hidden_size": 64,
        "num_layers": 1,
        "num_heads": 4,
        "intermediate_size": 128,
        "seed": 0,
    },
    "quantization": "4bit",
    "dtype": "float32",
    "max_length": 320,
    "max_tokens_per_batch": 4096,
    "predict": {"tta": True},
}


@pytest.mark.slow
def test_a_judge_runs_beside_a_feature_member_to_the_submission(run_a, tmp_path):
    import yaml
    from workflow_helpers import SMALL, copy_run, planned_resources, snakemake, write_config

    # in a copy of run_a: its data, folds and feature member are this run's too
    tmp_path = copy_run(run_a, tmp_path / "w")
    features = yaml.safe_load(SMALL.read_text())["models"]["pair_features"]
    write_config(tmp_path, models={"judge": JUDGE, "pair_features": features}, blend={"method": "stack"})
    snakemake(tmp_path, "-j2")
    results = tmp_path / "results"
    sub = pd.read_csv(results / "submission.csv")
    assert len(sub) == 24 and np.allclose(sub.drop(columns="id").sum(axis=1), 1.0)
    raw = pd.read_parquet(results / "judge/judge/train.parquet")
    assert len(raw) == 120 and list(raw.columns) == ["id", *calibration.AB_COLUMNS, *calibration.BA_COLUMNS]
    oof = pd.concat([pd.read_parquet(results / f"oof/judge/fold{k}.parquet") for k in (0, 1)])
    assert sorted(oof["id"]) == sorted(raw["id"])
    for frame in [oof] + [pd.read_parquet(results / f"test/judge/fold{k}.parquet") for k in (0, 1)]:
        for cols in (["a", "b", "tie"], ["a_tta", "b_tta", "tie_tta"]):
            np.testing.assert_allclose(frame[cols].sum(axis=1), 1.0, atol=1e-9)
    assert len(pd.read_parquet(results / "test/judge.parquet")) == 24
    cal = json.loads((results / "models/judge/fold1/calibration.json").read_text())
    assert cal["temperature"] > 0 and cal["bias"][2] == 0.0
    metrics = json.loads((results / "metrics.json").read_text())
    assert "judge" in metrics["models"] and "pair_features" in metrics["models"]
    log = (results / "logs/judge_score/judge/train.log").read_text()
    assert "rows judged in both orders" in log and "tokens/s" in log
    assert (results / "benchmarks/judge_score/judge/test.tsv").exists()
    # the judge scored each split once: two folds, one score job per split
    assert sorted(p.name for p in (results / "logs/judge_score/judge").iterdir()) == ["test.log", "train.log"]
    # what reruns: nothing when up to date or reordered; allow_bf16_emulation nothing; TTA off the
    # test scores (one order), its folds, the average and the blend, never the training scores
    from workflow_helpers import planned_jobs

    def plan(**judge):
        cfg = write_config(
            tmp_path / f"cfg{len(judge)}{sorted(judge)}",
            models={"pair_features": features, "judge": {**JUDGE, **judge}},
            blend={"method": "stack"},
        )
        return planned_jobs(snakemake(tmp_path, "-n", "results/submission.csv", config=cfg))

    assert plan() == {}
    assert plan(allow_bf16_emulation=True) == {}
    # (the calibrations stand: only the test passes rerun)
    assert plan(predict={"tta": False}) == {"judge_score": 1, "judge_predict": 2, "average_test": 1, "blend": 1}

    # a run from trained models (no train.csv): the judge scores the test rows with the built
    # backbone and applies the saved calibrations, reproducing the home run's test passes
    import shutil

    home, away = tmp_path, tmp_path / "away"
    away.mkdir()
    shutil.copy(home / "results/demo/test.csv", away / "test.csv")
    trained_models = {
        "judge": {
            **JUDGE,
            "backbone": {"kind": "path", "path": str(home / "results/backbones/judge")},
            "trained": str(home / "results/models/judge"),
        },
        "pair_features": {**features, "trained": str(home / "results/models/pair_features")},
    }
    (away / "config.yaml").write_text(
        yaml.safe_dump(
            {
                "data": {"test_csv": "test.csv"},
                "cv": {"n_folds": 2},
                "models": trained_models,
                "blend": {"from": str(home / "results/blender.json")},
            },
            sort_keys=False,
        )
    )
    assert planned_jobs(snakemake(away, "-n", "results/submission.csv")) == {
        "parse": 1,
        "judge_score": 1,
        "judge_predict": 2,
        "features": 1,
        "features_predict": 1,
        "average_test": 2,
        "submit": 1,
    }
    snakemake(away, "-j2", "results/submission.csv")
    for k in (0, 1):
        pd.testing.assert_frame_equal(
            pd.read_parquet(away / f"results/test/judge/fold{k}.parquet"),
            pd.read_parquet(home / f"results/test/judge/fold{k}.parquet"),
            atol=1e-6,
        )
    np.testing.assert_allclose(
        pd.read_csv(away / "results/submission.csv").drop(columns="id").to_numpy(),
        sub.drop(columns="id").to_numpy(),
        atol=1e-5,
    )

    # a teacher-only judge (member: false): its student reads its OOF rows, so the judge neither
    # scores nor calibrates the test rows (with a large judge, hours of GPU time never used)
    teacher = copy_run(home, tmp_path.parent / "teacher", drop=["results/judge/judge/test.parquet", "results/test"])
    student = {**yaml.safe_load(SMALL.read_text())["models"]["tiny_llama"], "distill": {"teacher": "judge"}}
    models = {"judge": {**JUDGE, "member": False}, "pair_features": features, "tiny_llama": student}
    write_config(teacher, models=models, blend={"method": "stack"})
    jobs = planned_resources(snakemake(teacher, "-n", "results/submission.csv"))
    judged = sorted((rule, w.get("split", w.get("fold"))) for rule, w, _ in jobs if w.get("model") == "judge")
    assert judged == [], judged  # its train scores, calibrations and OOF are the copy's, unchanged
    assert ("train", "tiny_llama") in {(rule, w.get("model")) for rule, w, _ in jobs}


def test_under_vllm_max_length_leaves_the_answer_token_a_position(causal_dir, monkeypatch):
    """vLLM's context is max_length + 1 (the answer token): a max_length at the backbone's position
    limit (1024 for the tiny Gemma-2) is refused under vLLM, naming the key, and fine otherwise."""
    from arena_pref.models import backbones

    monkeypatch.setattr("importlib.util.find_spec", lambda name: object())  # vLLM "installed"
    path = {"backbone": {"kind": "path", "path": str(causal_dir)}, "max_length": 1024}
    with pytest.raises(InputError) as err:
        backbones.check_judge(judge_model(backend="vllm", **path))
    assert str(err.value) == (
        "config models.model.max_length: 1024 is above the backbone's position limit (1024 tokens, one of them "
        "the answer token's under backend vllm)"
    )
    backbones.check_judge(judge_model(**path))
    backbones.check_judge(judge_model(backend="vllm", **{**path, "max_length": 1023}))
