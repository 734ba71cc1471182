"""Averaging fold adapters into one: the averaged model is the mean of the fold models' weights."""

import copy
import json
import shutil

import pytest
import torch
from arena_pref import settings
from arena_pref.errors import InputError
from arena_pref.models import loading
from arena_pref.train import soup
from safetensors.torch import load_file, save_file

# peft's save_pretrained takes the 1-D lora_B biases (lora_bias=True) for unsharded ZeRO-3 tensors
pytestmark = pytest.mark.filterwarnings("ignore:.*LoRA tensor\\(s\\) have invalid shape:UserWarning")

N_FOLDS = 3
GEMMA_LORA = {
    "r": 4,
    "alpha": 8,
    "dropout": 0.0,
    "layers_to_transform": None,
    "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}
# rsLoRA, per-layer ranks and alphas, and a bias on lora_B: every rule of the averaging at once
BERT_LORA = {
    "r": 4,
    "lora_alpha": 8,
    "use_rslora": True,
    "lora_bias": True,
    "target_modules": ["query", "key", "value", "dense"],
    "modules_to_save": ["classifier"],
    "rank_pattern": {"layer.0.attention.self.query": 2},
    "alpha_pattern": {"layer.1.output.dense": 3},
}


def load_base(base_dir):
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(base_dir, dtype=torch.float32).eval()


def perturb(model, seed):
    """Random non-zero weights in every trained tensor (lora_B starts at zero, and the head copy
    at the base's head): each fold is then a different model."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.1 * torch.randn(param.shape, generator=gen))
    return model


def make_folds(base_dir, root, attach):
    dirs = []
    for i in range(N_FOLDS):
        model = perturb(attach(load_base(base_dir)), seed=100 + i)
        model.save_pretrained(root / f"fold{i}")
        dirs.append(root / f"fold{i}")
    return dirs


def attach_gemma(model):
    return loading.attach_lora(model, settings.build(settings.Lora, GEMMA_LORA))


def attach_bert(model):
    from peft import LoraConfig, get_peft_model

    # a deep copy: peft appends to the modules_to_save list it is given
    return get_peft_model(model, LoraConfig(task_type="SEQ_CLS", lora_dropout=0.0, **copy.deepcopy(BERT_LORA)))


@pytest.fixture(scope="module")
def gemma(tmp_path_factory):
    """A tiny random Gemma-2 (3 labels, pad id 0) and three fold adapters trained on it (randomly)."""
    from transformers import AutoModelForSequenceClassification

    root = tmp_path_factory.mktemp("gemma")
    config = loading.tiny_config(
        arch="gemma2",
        vocab_size=128,
        hidden_size=64,
        num_layers=2,
        num_heads=4,
        intermediate_size=128,
        max_position=64,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=1,
    )
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(root / "base")
    return root / "base", make_folds(root / "base", root, attach_gemma)


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    """A tiny random BERT (its classifier has a bias) and three rsLoRA fold adapters."""
    from transformers import BertConfig, BertForSequenceClassification

    root = tmp_path_factory.mktemp("bert")
    config = BertConfig(
        vocab_size=128,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=3,
    )
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(root / "base")
    return root / "base", make_folds(root / "base", root, attach_bert)


def merged_state(base_dir, adapter_dir):
    from peft import PeftModel

    return PeftModel.from_pretrained(load_base(base_dir), adapter_dir).merge_and_unload().state_dict()


def logits(model, seed=0):
    ids = torch.randint(3, 128, (3, 12), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits


@pytest.mark.parametrize("arch", ["gemma", "bert"])
def test_averaged_adapter_is_the_mean_of_the_fold_models(request, tmp_path, arch):
    """The key property: base + averaged adapter, merged, has every weight equal to the element-wise
    mean of the merged fold models, and predicts what that mean model predicts, merged or not."""
    from peft import PeftModel

    base_dir, folds = request.getfixturevalue(arch)
    summary = soup.average_adapters(folds, tmp_path / "avg")
    assert summary == {
        "n": 3,
        "rank_before": 4,
        "rank_after": 12,
        "out_dir": str(tmp_path / "avg"),
        "tensors": len(load_file(folds[0] / soup.WEIGHTS)),
    }
    config = json.loads((tmp_path / "avg" / soup.CONFIG).read_text())
    assert (config["r"], config["lora_alpha"]) == (12, 24)

    fold_states = [merged_state(base_dir, d) for d in folds]
    mean = {k: torch.stack([s[k] for s in fold_states]).mean(dim=0) for k in fold_states[0]}
    averaged = merged_state(base_dir, tmp_path / "avg")
    assert averaged.keys() == mean.keys()
    for key, value in mean.items():
        torch.testing.assert_close(averaged[key], value, rtol=0, atol=1e-6, msg=key)

    mean_model = load_base(base_dir)
    mean_model.load_state_dict(mean)
    expected = logits(mean_model)
    torch.testing.assert_close(
        logits(PeftModel.from_pretrained(load_base(base_dir), tmp_path / "avg")), expected, rtol=0, atol=1e-5
    )  # unmerged: the rank-12 LoRA layers
    mean_model.load_state_dict(averaged)
    torch.testing.assert_close(logits(mean_model), expected, rtol=0, atol=1e-5)
    # not vacuous: the folds are different models, and their mean is none of them
    mean_model.load_state_dict(fold_states[0])
    assert (logits(mean_model) - expected).abs().max() > 1e-3


def test_rslora_and_patterns_are_scaled(bert, tmp_path):
    _, folds = bert
    soup.average_adapters(folds, tmp_path / "avg")
    config = json.loads((tmp_path / "avg" / soup.CONFIG).read_text())
    assert config["use_rslora"] is True
    assert config["rank_pattern"] == {"layer.0.attention.self.query": 6}
    assert config["alpha_pattern"] == {"layer.1.output.dense": 9}
    meta = json.loads((tmp_path / "avg" / soup.METADATA).read_text())
    assert meta["sources"] == [str(d) for d in folds] and meta["rank_after"] == 12


def test_one_adapter_is_copied_unchanged(gemma, tmp_path):
    _, folds = gemma
    summary = soup.average_adapters(folds[:1], tmp_path / "avg")
    assert (summary["n"], summary["rank_before"], summary["rank_after"]) == (1, 4, 4)
    for name in (soup.CONFIG, soup.WEIGHTS):
        assert (tmp_path / "avg" / name).read_bytes() == (folds[0] / name).read_bytes()
    assert json.loads((tmp_path / "avg" / soup.METADATA).read_text())["sources"] == [str(folds[0])]


def edit_config(adapter_dir, **changes):
    path = adapter_dir / soup.CONFIG
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def drop_tensor(adapter_dir, key):
    state = load_file(adapter_dir / soup.WEIGHTS)
    del state[key]
    save_file(state, adapter_dir / soup.WEIGHTS)


KEY = "base_model.model.model.layers.1.mlp.up_proj.lora_A.weight"


@pytest.mark.parametrize(
    "change,expected",
    [
        (lambda d: edit_config(d, r=8), "field 'r' is 8 there and 4"),
        (lambda d: edit_config(d, target_modules=["q_proj", "v_proj"]), "field 'target_modules'"),
        (lambda d: edit_config(d, lora_alpha=16), "field 'lora_alpha'"),
        (lambda d: drop_tensor(d, KEY), f"tensor '{KEY}' is only in"),
        (lambda d: edit_config(d, use_dora=True), "DoRA"),
        (lambda d: edit_config(d, peft_type="IA3"), "only LORA adapters"),
        (lambda d: (d / soup.WEIGHTS).unlink(), "has no adapter_model.safetensors"),
    ],
    ids=["r", "target_modules", "lora_alpha", "missing_tensor", "dora", "peft_type", "no_safetensors"],
)
def test_incompatible_folds_are_refused(gemma, tmp_path, change, expected):
    _, folds = gemma
    odd = tmp_path / "odd_fold"
    shutil.copytree(folds[1], odd)
    change(odd)
    with pytest.raises(InputError, match="odd_fold") as err:
        soup.average_adapters([folds[0], odd, folds[2]], tmp_path / "avg")
    assert expected in str(err.value)
    assert not (tmp_path / "avg").exists()


def test_fields_that_do_not_matter_may_differ(gemma, tmp_path):
    """Another base path (a Kaggle dataset's), and target_modules saved in another order (peft
    saves a set, in the hash order of the process that trained the fold)."""
    _, folds = gemma
    moved = tmp_path / "moved"
    shutil.copytree(folds[1], moved)
    config = json.loads((moved / soup.CONFIG).read_text())
    edit_config(
        moved,
        base_model_name_or_path="/kaggle/input/gemma-2-9b",
        inference_mode=False,
        target_modules=config["target_modules"][::-1],
    )
    assert soup.average_adapters([folds[0], moved], tmp_path / "avg")["rank_after"] == 8


def test_a_failed_write_leaves_no_output(gemma, tmp_path, monkeypatch):
    _, folds = gemma

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(soup, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        soup.average_adapters(folds, tmp_path / "out" / "avg")
    assert list((tmp_path / "out").iterdir()) == []  # neither the adapter nor a temporary directory


def test_averaged_adapter_on_a_4bit_base(gemma, tmp_path):
    """The rank-3r adapter loads on the QLoRA base (bitsandbytes NF4 layers) and, when the folds are
    all one adapter, predicts exactly what that adapter does."""
    from peft import PeftModel

    base_dir, folds = gemma
    soup.average_adapters([folds[0]] * N_FOLDS, tmp_path / "avg")
    model = loading.load_model(base_dir, loading.loading_with(quantization="4bit"), pad_token_id=0, device="cpu")
    model = PeftModel.from_pretrained(model, folds[0], adapter_name="fold")
    model.load_adapter(tmp_path / "avg", adapter_name="avg")
    assert type(model.base_model.model.model.layers[0].self_attn.q_proj.base_layer).__name__ == "Linear4bit"
    # train mode (no dropout anywhere): in eval mode on CPUs with AVX512-BF16, bitsandbytes
    # computes 4-bit layers in bf16 (see test_predict.py)
    model.train()
    model.set_adapter("fold")
    fold = logits(model)
    model.set_adapter("avg")
    assert model.base_model.model.model.layers[0].self_attn.q_proj.r["avg"] == 3 * GEMMA_LORA["r"]
    torch.testing.assert_close(logits(model), fold, rtol=0, atol=1e-4)
    with model.disable_adapter():
        assert (logits(model) - fold).abs().max() > 1e-3
