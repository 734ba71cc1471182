import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class CharTokenizer:
    """A stand-in tokenizer: one id per character, [CLS]=1 before and [SEP]=2 after."""

    def __call__(self, texts, add_special_tokens=True):
        single = isinstance(texts, str)
        batch = [texts] if single else texts
        ids = [[ord(c) for c in t] for t in batch]
        if add_special_tokens:
            ids = [[1] + x + [2] for x in ids]
        return {"input_ids": ids[0] if single else ids}


@pytest.fixture
def char_tokenizer():
    return CharTokenizer()


@pytest.fixture(scope="session")
def tiny_backbone_dir(tmp_path_factory):
    """A tiny random Gemma-2 with a trained BPE tokenizer, built once per test session."""
    from arena_pref.modeling import build_tiny_backbone

    texts = [f"prompt {i}: what is {w}? the answer about {w} is long and complete."
             for i, w in enumerate(["rust", "python", "tea", "maps", "stars"] * 40)]
    out = tmp_path_factory.mktemp("backbones") / "tiny_gemma2"
    build_tiny_backbone(out, texts, arch="gemma2", vocab_size=400, hidden_size=64, num_layers=2,
                        num_heads=4, intermediate_size=128, seed=0)
    return out
