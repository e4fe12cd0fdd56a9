import threading

import pytest
import torch

from cellnet_core.builtin.components import HashingEncoder
from cellnet_core.cache import CachedEncoder, cache_clear, cache_info


class CountingFake(HashingEncoder):
    """A fake teacher (the hashing encoder) that counts calls and texts."""

    def __init__(self):
        super().__init__(dim=32)
        self.texts_seen = 0

    def encode(self, texts):
        self.texts_seen += len(texts)
        return super().encode(texts)


def test_second_encode_makes_no_model_call(tmp_path):
    texts = [f"sentence {i}" for i in range(50)]
    enc = CachedEncoder(CountingFake(), tmp_path)
    a = enc.encode(texts)
    again = CachedEncoder(CountingFake(), tmp_path)  # a new process would look like this
    b = again.encode(texts)
    assert again.calls == 0 and again.inner.texts_seen == 0
    torch.testing.assert_close(a, b)


def test_only_missing_texts_are_encoded(tmp_path):
    enc = CachedEncoder(CountingFake(), tmp_path)
    enc.encode(["a", "b"])
    enc.encode(["a", "b", "c", "c"])
    assert enc.inner.texts_seen == 3


def test_damaged_shard_discarded_with_warning(tmp_path):
    enc = CachedEncoder(CountingFake(), tmp_path)
    enc.encode(["x", "y"])
    shard = next(tmp_path.rglob("*.safetensors"))
    shard.write_bytes(b"garbage")
    fresh = CachedEncoder(CountingFake(), tmp_path)
    with pytest.warns(UserWarning, match="damaged"):
        out = fresh.encode(["x", "y"])
    assert fresh.inner.texts_seen == 2 and out.shape == (2, 32)
    assert not shard.exists()


def test_concurrent_writers_do_not_clobber(tmp_path):
    def work(i):
        CachedEncoder(CountingFake(), tmp_path).encode([f"t{i}-{j}" for j in range(20)])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    reader = CachedEncoder(CountingFake(), tmp_path)
    reader.encode([f"t{i}-{j}" for i in range(4) for j in range(20)])
    assert reader.inner.texts_seen == 0
    info = cache_info(tmp_path)
    assert info[0]["texts"] == 80
    assert cache_clear(tmp_path) == 4


def test_empty_input(tmp_path):
    assert CachedEncoder(CountingFake(), tmp_path).encode([]).shape == (0, 32)


def test_many_small_writes_are_merged(tmp_path, monkeypatch):
    import cellnet_core.cache as cache_mod

    monkeypatch.setattr(cache_mod, "MAX_SHARDS", 4)
    enc = CachedEncoder(CountingFake(), tmp_path)
    for i in range(10):
        enc.encode([f"q{i}"])
    assert len(list(tmp_path.rglob("*.safetensors"))) <= 4
    fresh = CachedEncoder(CountingFake(), tmp_path)
    fresh.encode([f"q{i}" for i in range(10)])
    assert fresh.inner.texts_seen == 0


def test_clear_removes_only_cache_folders(tmp_path):
    (tmp_path / "unrelated").mkdir()
    (tmp_path / "unrelated" / "keep.txt").write_text("mine")
    CachedEncoder(CountingFake(), tmp_path).encode(["a"])
    assert cache_clear(tmp_path) == 1
    assert (tmp_path / "unrelated" / "keep.txt").read_text() == "mine"
