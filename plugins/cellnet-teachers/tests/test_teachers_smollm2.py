"""smollm2: offline load, one-time conversion, sensible neighbours. Slow: the conversion of the
GGUF takes about a minute (once per test session, see conftest.smollm2_home)."""

from __future__ import annotations

import time

import pytest
import torch

pytestmark = pytest.mark.slow

PAIRS = [("How old are you?", "What is your age?"), ("What is your name?", "What are you called?"),
         ("I like tea.", "I enjoy drinking tea."), ("The weather is nice today.", "It is a beautiful sunny day."),
         ("Where do you live?", "Where is your home?"), ("I am hungry.", "I want to eat something."),
         ("Can you play the guitar?", "Do you know how to play guitar?"),
         ("The stock market fell sharply.", "Share prices dropped a lot."),
         ("Goodbye, see you tomorrow.", "Bye, talk to you tomorrow."), ("My car broke down.", "My automobile stopped working.")]


def test_second_load_skips_conversion(use_smollm2_home, registry):
    from cellnet_teachers.smollm2 import MARKER, converted_folder, ensure_converted

    folder = converted_folder()
    assert str(folder).startswith(str(use_smollm2_home))
    stamp = (folder / MARKER).stat().st_mtime_ns
    messages = []
    t0 = time.perf_counter()
    again, converted_now = ensure_converted(log=messages.append)
    assert again == folder and not converted_now and not messages
    assert (folder / MARKER).stat().st_mtime_ns == stamp
    assert time.perf_counter() - t0 < 1.0
    assert (folder / "model.safetensors").exists() and not list(folder.glob("*.gguf"))


def test_loads_offline_and_neighbours_are_sensible(use_smollm2_home, registry, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    enc = registry.build("encoder", {"name": "smollm2"})
    assert enc.dim == 576
    texts = [t for p in PAIRS for t in p]
    e = torch.nn.functional.normalize(enc.encode(texts), dim=-1)
    sims = e @ e.T
    pos, neg, nn_hits = [], [], 0
    for i in range(len(texts)):
        j = i ^ 1
        pos.append(float(sims[i, j]))
        neg += [float(sims[i, k]) for k in range(len(texts)) if k not in (i, j)]
        row = sims[i].clone()
        row[i] = -2
        nn_hits += int(int(row.argmax()) == j)
    pos_t, neg_t = torch.tensor(pos), torch.tensor(neg)
    auc = float((pos_t[:, None] > neg_t[None, :]).float().mean())
    assert pos_t.mean() > neg_t.mean() + 0.05
    assert auc > 0.85, f"paraphrase pairs rank above unrelated pairs in only {auc:.0%} of comparisons"
    assert nn_hits >= len(texts) // 2, f"nearest neighbour is the paraphrase for {nn_hits}/{len(texts)}"


def test_damaged_conversion_is_redone(use_smollm2_home, tmp_path, monkeypatch):
    """A folder without a valid marker (e.g. a crash before the rename) is not trusted."""
    from cellnet_teachers.smollm2 import MARKER, converted_folder, is_converted, find_gguf

    folder = converted_folder()
    assert is_converted(folder, find_gguf())
    monkeypatch.setenv("CELLNET_HOME", str(tmp_path))
    fake = converted_folder()
    fake.mkdir(parents=True)
    (fake / MARKER).write_text("{ broken")
    assert not is_converted(fake, find_gguf())
