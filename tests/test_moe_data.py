"""``lowbit.moe.data`` takes its text from ``integrations.data`` (the PTQ study's split)."""

import hashlib
import json

import pytest
import torch

from lowbit.integrations.data import wiki_text
from lowbit.moe.data import consecutive_windows, random_windows, wiki_tokens


class _ByteTokenizer:
    """Token = UTF-8 byte; no special tokens."""

    def get_vocab(self) -> dict[str, int]:
        return {chr(i): i for i in range(256)}

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
        assert not add_special_tokens
        return {"input_ids": list(text.encode())}


@pytest.fixture()
def wiki(tmp_path, monkeypatch):
    titles = [f"Article {i}" for i in range(40)]
    data = {t: {"title": t, "extract": f"Text of {t}."} for t in titles}
    path = tmp_path / "summaries.json"
    path.write_text(json.dumps(data))
    monkeypatch.setenv("LOWBIT_WIKI_JSON", str(path))
    monkeypatch.setenv("LOWBIT_CACHE", str(tmp_path / "cache"))
    return titles, tmp_path / "cache"


def test_wiki_tokens_use_the_sha256_split(wiki):
    wiki, cache = wiki
    test = sorted(t for t in wiki if int(hashlib.sha256(t.encode()).hexdigest(), 16) % 10 == 0)
    assert test and len(test) < len(wiki)
    ids = wiki_tokens(_ByteTokenizer(), "test")
    text = bytes(ids.tolist()).decode()
    assert text == wiki_text("test") == "\n\n".join(f"Text of {t}." for t in test)
    cached = list((cache / "tokens").glob("*.pt"))
    assert len(cached) == 1 and "sha256mod10-test" in cached[0].name
    assert torch.equal(wiki_tokens(_ByteTokenizer(), "test"), ids)  # from the cache
    with pytest.raises(ValueError, match="split"):
        wiki_tokens(_ByteTokenizer(), "dev")


def test_windows():
    tokens = torch.arange(100)
    w = random_windows(tokens, 5, 10, seed=3)
    assert w.shape == (5, 10) and torch.equal(w, random_windows(tokens, 5, 10, seed=3))
    assert all(torch.equal(r, torch.arange(int(r[0]), int(r[0]) + 10)) for r in w)
    assert torch.equal(consecutive_windows(tokens, 30), tokens[:90].view(3, 30))
    assert consecutive_windows(tokens, 30, limit=2).shape == (2, 30)
    with pytest.raises(ValueError):
        random_windows(tokens, 1, 100)
