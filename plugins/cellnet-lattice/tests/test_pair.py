"""Pair scorers: slot placement, untrained = identity cosine, the token grid, training moves the
score, and the reranker keeps the bank's answer while the scorer is untrained."""

from __future__ import annotations

import hashlib
import warnings

import pytest
import torch
from torch.nn import functional as F

from cellnet_core.cache import CachedEncoder
from cellnet_core.interfaces import SelectionItem
from cellnet_core.pipeline import BuildContext, Pipeline
from cellnet_lattice.pair import InteractionGridReshaper, PairFacesReshaper

DIM = 24


class FakeTokenEncoder:
    """Words → fixed random unit vectors (seeded by the word); the sentence embedding is their mean.
    A named fake for unit tests; the real teacher's token states are tested in cellnet-teachers."""

    dim = DIM
    fingerprint = "fake-token-encoder-v1"
    token_fingerprint = "fake-token-encoder-v1:tokens"

    def _vec(self, word: str) -> torch.Tensor:
        seed = int(hashlib.sha1(word.encode()).hexdigest()[:8], 16)
        return F.normalize(torch.randn(DIM, generator=torch.Generator().manual_seed(seed)), dim=0)

    def _ids(self, text: str) -> list[int]:
        return [int(hashlib.sha1(w.encode()).hexdigest()[:6], 16) for w in text.lower().split()] or [0]

    def encode(self, texts):
        return torch.stack([F.normalize(torch.stack([self._vec(w) for w in (t.lower().split() or [""])]).mean(0),
                                        dim=0) for t in texts])

    def encode_tokens(self, texts):
        return [(torch.tensor(self._ids(t)), torch.stack([self._vec(w) for w in (t.lower().split() or [""])]).half())
                for t in texts]


class FakeBank:
    """Nearest-neighbour bank over fixed texts (candidates + decode), enough for the reranker."""

    def __init__(self, texts, embs):
        self.texts, self.embs = list(texts), F.normalize(embs.float(), dim=-1)

    def candidates(self, emb, k=5):
        from cellnet_core.interfaces import Candidate

        sims = F.normalize(emb.float(), dim=-1) @ self.embs.T
        top = sims.topk(min(k, len(self.texts)), dim=1)
        return [[Candidate(self.texts[j], float(s)) for s, j in zip(row_s.tolist(), row_i.tolist())]
                for row_s, row_i in zip(top.values, top.indices)]

    def decode(self, emb):
        return [row[0].text for row in self.candidates(emb, 1)]


def make_pipeline(registry, reshaper, core_cfg, tmp_path):
    enc = CachedEncoder(FakeTokenEncoder(), tmp_path / "cache")
    ctx = BuildContext(registry=registry, device=torch.device("cpu"), seed=0, encoder=enc, embedding_dim=DIM,
                       reshaper=reshaper)
    core = registry.build("core", core_cfg, ctx)
    return Pipeline(None, registry, enc, reshaper, core, None, torch.device("cpu"), tmp_path / "cache")


QS = ["where is the red cat", "who wrote the long book", "when did the war end"]
CS = ["the red cat sleeps in the garden", "a long book was written by anna", "the war ended in 1945"]


def identity_cos(pipe, qs, cs):
    return F.cosine_similarity(pipe.encode(qs), pipe.encode(cs), dim=-1)


LATTICE = {"name": "lattice", "cell": {"name": "nca", "hidden": 8}, "steps": 4, "boundary": "walls",
           "kernel": "reference"}


def test_pair_faces_places_each_slot_on_its_face():
    r = PairFacesReshaper(DIM, (2, 2, 3), 6, q_face="z=0", adapter="exact")
    q, c = torch.randn(2, DIM), torch.randn(2, DIM)
    field = r.pair_field({"q": q, "c": c})
    assert field.shape == (2, 2, 2, 3, 6)
    torch.testing.assert_close(field[:, :, :, 0, :].reshape(2, -1), q)
    torch.testing.assert_close(field[:, :, :, 2, :].reshape(2, -1), c)
    assert field[:, :, :, 1, :].abs().sum() == 0  # the middle plane starts empty
    r2 = PairFacesReshaper(DIM, (3, 2, 2), 6, q_face="x=0", adapter="exact")
    f2 = r2.pair_field({"q": q, "c": c})
    torch.testing.assert_close(f2[:, 0].reshape(2, -1), q)
    torch.testing.assert_close(f2[:, -1].reshape(2, -1), c)
    assert sum(p.numel() for p in r.parameters() if p is not None) == sum(p.numel() for p in r.readout.parameters())


def test_exact_adapter_needs_the_face_to_hold_the_embedding():
    from cellnet_core.errors import ConfigError

    with pytest.raises(ConfigError, match="face points × channels = D"):
        PairFacesReshaper(DIM, (2, 2, 3), 5, adapter="exact")


@pytest.mark.parametrize("kind", ["faces-learned", "faces-exact", "grid", "grid-projection", "grid-conv", "mlp"])
def test_untrained_pair_scorer_equals_the_identity_cosine(registry, tmp_path, kind):
    from cellnet_lattice.pair import PairMLPReshaper

    core = LATTICE
    if kind.startswith("faces"):
        r = PairFacesReshaper(DIM, (2, 2, 3), 6, adapter=kind.split("-")[1])
    elif kind == "mlp":
        r, core = PairMLPReshaper(DIM, 16), {"name": "identity"}
    else:
        r = InteractionGridReshaper(DIM, (6, 8, 1), 5, projection=2 if kind == "grid-projection" else 0)
        if kind == "grid-conv":
            core = {"name": "conv-grid", "hidden": 4, "layers": 2}
    pipe = make_pipeline(registry, r, core, tmp_path)
    torch.testing.assert_close(pipe.score_pairs(QS, CS), identity_cos(pipe, QS, CS))


def test_interaction_grid_channels_and_padding(registry, tmp_path):
    r = InteractionGridReshaper(DIM, (6, 8, 2), 4)
    pipe = make_pipeline(registry, r, LATTICE, tmp_path)
    inputs = r.pair_inputs(pipe, QS[:1], CS[:1])
    field = r.pair_field(inputs)
    assert field.shape == (1, 6, 8, 2, 4)
    enc = FakeTokenEncoder()
    (qi, qs), (ci, cs) = enc.encode_tokens([QS[0]])[0], enc.encode_tokens([CS[0]])[0]
    lq, lc = len(qi), len(ci)  # 5 and 7 words: inside the 6 × 8 grid
    expect = qs.float() @ cs.float().T
    torch.testing.assert_close(field[0, :lq, :lc, 0, 0], expect, atol=2e-3, rtol=0)
    same = (qi[:, None] == ci[None, :]).float()
    assert same.sum() >= 2  # "the", "red", "cat" occur in both
    torch.testing.assert_close(field[0, :lq, :lc, 0, 1], same)
    assert field[0, lq:].abs().sum() == 0 and field[0, :, lc:].abs().sum() == 0  # padding stays empty
    assert field[0, :, :, 1].abs().sum() == 0  # the second plane starts empty
    assert r.mask(inputs)[0, :lq, :lc].all() and not r.mask(inputs)[0, lq:].any()


def test_long_texts_are_cut_to_the_grid(registry, tmp_path):
    r = InteractionGridReshaper(DIM, (3, 4, 1), 3)
    pipe = make_pipeline(registry, r, LATTICE, tmp_path)
    s = pipe.score_pairs(["a b c d e f g"], ["h i j k l m n o p"])
    assert s.shape == (1,) and torch.isfinite(s).all()


def test_steps_below_the_depth_warn(registry):
    from cellnet_core.config import validate_run_config
    from cellnet_lattice.pair import build_pair_faces

    cfg = validate_run_config(registry, {
        "schema_version": 1, "data": {"name": "chatterbot"}, "encoder": {"name": "hashing", "dim": 24},
        "reshaper": {"name": "pair-faces", "shape": [2, 2, 6], "channels": 6},
        "core": {**LATTICE, "steps": 3}, "decoder": {"name": "nearest"}, "training": {"name": "listwise"}},
        source="test")
    ctx = BuildContext(registry=registry, config=cfg, embedding_dim=DIM)
    with pytest.warns(UserWarning, match="below 5"):
        build_pair_faces(cfg.reshaper, ctx)
    ok = cfg.model_copy(update={"core": cfg.core.model_copy(update={"steps": 5})})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_pair_faces(ok.reshaper, BuildContext(registry=registry, config=ok, embedding_dim=DIM))


def test_listwise_training_moves_the_scores_and_picks_by_per_question_map(registry, tmp_path):
    from cellnet_core.run import RunContext
    from cellnet_training.config import ListwiseConfig
    from cellnet_training.listwise import ListwiseStrategy

    torch.manual_seed(0)
    # the right sentence shares a rare word with the question; a decoy shares more common words
    topics = ["apple", "river", "engine", "violin", "glacier", "tiger", "copper", "planet"]
    items = []
    for i in range(48):
        t = topics[i % len(topics)]
        o = topics[(i + 3) % len(topics)]
        cands = [f"the {t} story number {i}", f"where is the thing about the {o} now {i}",
                 f"a note on the {o} and more"]
        items.append(SelectionItem(f"where is the {t} now {i}", cands, [1, 0, 0]))

    class Data:
        def selection(self, split):
            return {"train": items[:32], "val": items[32:40], "test": items[40:]}[split]

    r = InteractionGridReshaper(DIM, (8, 10, 1), 4)
    pipe = make_pipeline(registry, r, {**LATTICE, "steps": 3}, tmp_path)
    before = pipe.score_pairs([items[0].question] * 3, items[0].candidates).detach().clone()
    cfg = ListwiseConfig(epochs=3, batch_size=8, lr=3e-3, early_stopping=0, restore_best=False,
                         fit_decoder=False)
    result = ListwiseStrategy(cfg).fit(pipe, Data(), RunContext(tmp_path / "run", seed=0))
    after = pipe.score_pairs([items[0].question] * 3, items[0].candidates).detach()
    assert not torch.allclose(before, after)  # the lattice and readout learned something
    rows = [__import__("json").loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3] and all("val_map" in r for r in rows)
    assert result.best_epoch in (0, 1, 2, 3)


def test_reranker_returns_the_bank_answer_while_the_scorer_is_untrained(registry, tmp_path):
    r = InteractionGridReshaper(DIM, (8, 10, 1), 4)
    pipe = make_pipeline(registry, r, LATTICE, tmp_path)
    bank = CS + ["nothing to see here", "cats and dogs"]
    pipe.decoder = FakeBank(bank, pipe.encode(bank))
    answers = pipe.answer(QS, k=3)
    expect = pipe.decoder.decode(pipe.encode(QS))
    assert [a.text for a in answers] == expect
    assert all(len(a.candidates) == 3 for a in answers)


def test_idf_channel_weights_rare_matches_above_common_ones(registry, tmp_path):
    r = InteractionGridReshaper(DIM, (6, 8, 1), 4)
    pipe = make_pipeline(registry, r, LATTICE, tmp_path)
    inputs = r.pair_inputs(pipe, ["the red cat"], ["the red cat sleeps"])
    before = r.pair_field(inputs)[0, :3, :3, 0, 2]
    torch.testing.assert_close(before, r.pair_field(inputs)[0, :3, :3, 0, 1])  # unfitted: idf = exact
    r.fit_tokens(pipe, ["the dog", "the tree", "the red house", "a bird", "the sun"])
    after = r.pair_field(inputs)[0, :3, :3, 0, 2]
    assert after[0, 0] < after[1, 1] < after[2, 2] <= 1.0  # "the" (in 4 of 5 texts) < "red" (1) < "cat" (0)
    assert after[0, 0] == 0.0  # log(5 / (1 + 4)) = 0
    torch.testing.assert_close(pipe.score_pairs(QS, CS), identity_cos(pipe, QS, CS))  # still identity


def test_eval_of_a_selection_file_ranks_by_the_pair_scores(registry, tmp_path):
    from cellnet_core.evaluation import IdentityBaseline, evaluate_selection, format_table

    r = InteractionGridReshaper(DIM, (8, 10, 1), 4)
    pipe = make_pipeline(registry, r, LATTICE, tmp_path)
    items = [SelectionItem(q, [c, CS[(i + 1) % 3]], [1, 0]) for i, (q, c) in enumerate(zip(QS, CS))]
    out = evaluate_selection(pipe, items, [IdentityBaseline()])
    run, ident = out["rows"]
    assert run["name"] == "run" and ident["name"] == "identity"
    assert run["map"] == ident["map"]  # untrained scorer = identity
    assert out["compare"][0]["verdict"] == "same" and "MAP" in format_table(out)
    with torch.no_grad():
        r.readout.out.bias.fill_(0.0)
        r.readout.out.weight.normal_()  # a different scorer may rank differently; the row is its own
    assert evaluate_selection(pipe, items)["rows"][0]["name"] == "run"


def test_grid_pooling_measures_how_much_of_the_question_is_covered():
    from cellnet_lattice.pair import pool_grid

    state = torch.zeros(1, 3, 4, 1, 1)
    state[0, 0, 2, 0, 0] = 1.0  # question token 0 matches candidate token 2; token 1 matches nothing
    state[0, 2, 3, 0, 0] = 5.0  # outside the texts: must not count
    mask = torch.zeros(1, 3, 4, 1, dtype=torch.bool)
    mask[0, :2, :3] = True  # 2 question tokens × 3 candidate tokens
    mean, top, cover = pool_grid(state, mask)[0].tolist()
    assert cover == pytest.approx(0.5) and top == 1.0 and mean == pytest.approx(1 / 6)
