"""Behaviour of the phrase-bank decoder. Fakes are named: ``HashingEncoder`` is the core's
feature-hashing test encoder (stands in for the teacher); ``clustered`` makes random vectors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cellnet_core.builtin.components import HashingEncoder
from cellnet_core.errors import CellnetError, CheckpointError, ConfigError, DataError
from cellnet_phrasebank.config import PhrasebankConfig
from cellnet_phrasebank.decoder import NO_MATCH, PhrasebankDecoder, build_phrasebank
from cellnet_phrasebank.text import is_question, join_phrases, postprocess

PHRASES = [
    "hello there", "how are you today", "i am fine thank you", "what is your name", "my name is cell",
    "the weather is nice", "i like green tea", "goodbye and see you soon", "python is my favourite language",
    "the cat sat on the mat", "it is raining in the city", "we went to the beach on sunday",
]


def clustered(n: int, d: int, seed: int = 0, clusters: int = 64, spread: float = 0.35) -> np.ndarray:
    """Random vectors around random centres (embedding-like structure), float32 ``[n, d]``."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d))
    x = centres[rng.integers(0, clusters, n)] + spread * rng.standard_normal((n, d))
    return x.astype(np.float32)


def make(encoder=None, **kw) -> PhrasebankDecoder:
    return PhrasebankDecoder(PhrasebankConfig(**kw), encoder=encoder)


@pytest.fixture(scope="module", autouse=True)
def one_faiss_thread():
    """Builds on one OpenMP thread: on a busy 2-core machine FAISS's threads mostly wait on each
    other (HNSW builds here are ~5x faster on one thread). Restored afterwards."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


@pytest.fixture(scope="module")
def fake_teacher():
    return HashingEncoder(dim=64)


@pytest.fixture(scope="module")
def vectors():
    return clustered(2000, 32)


# -- exactness ----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_bank_vector_decodes_to_its_phrase(kind, vectors):
    texts = [f"phrase {i}" for i in range(len(vectors))]
    dec = make(index=kind, postprocess=[], recall_sample=300)
    dec.fit(texts, vectors)
    assert dec.index_kind == kind
    assert dec.recall_at_1 is not None and dec.recall_at_1 >= 0.9
    out = dec.decode(vectors[:500])
    hit = np.mean([o == t for o, t in zip(out, texts[:500])])
    if kind == "flat":
        assert hit == 1.0 and dec.recall_at_1 == 1.0
    else:  # queries here are the bank vectors themselves: easier than the noisy recall sample
        assert hit >= dec.recall_at_1 - 0.02, (hit, dec.recall_at_1)


def test_every_text_decodes_to_itself_with_fake_teacher(fake_teacher):
    raw = ["Hello  world,  friend", "see you see you later", "Tea  is  green "]
    dec = make(postprocess=[])
    dec.fit(PHRASES + raw, fake_teacher.encode(PHRASES + raw))
    assert dec.decode(fake_teacher.encode(PHRASES + raw)) == PHRASES + raw
    cleaned = make()  # default post-processing: whitespace and repeated words
    cleaned.fit(raw, fake_teacher.encode(raw))
    assert cleaned.decode(fake_teacher.encode(raw)) == ["Hello world, friend", "see you see you later", "Tea is green"]


def test_auto_picks_exact_below_threshold_and_records_recall(vectors, tmp_path):
    texts = [f"p{i}" for i in range(len(vectors))]
    small = make(index="auto", exact_below=5000)
    small.fit(texts, vectors)
    assert small.index_kind == "flat" and small.recall_at_1 == 1.0
    spread = clustered(2000, 32, spread=1.0)  # harder for IVF: one cell is not enough
    untuned = make(index="ivf", nprobe=1, recall_sample=300, target_recall=0)
    untuned.fit(texts, spread)
    assert untuned.recall_at_1 < 0.95 and untuned.meta["nprobe"] == 1
    big = make(index="auto", exact_below=1000, approximate="ivf", nprobe=1, recall_sample=300)
    big.fit(texts, spread)
    assert big.index_kind == "ivf"
    assert big.recall_at_1 >= 0.95  # tuning doubled nprobe until the target was met
    assert big.meta["recall_doublings"] >= 1 and big.meta["nprobe"] > 1
    big.save(tmp_path / "d")
    meta = json.loads((tmp_path / "d" / "meta.json").read_text())
    assert meta["recall_at_1"] == big.recall_at_1 and meta["index"] == "ivf" and meta["recall_sample"] == 300


# -- threshold ------------------------------------------------------------------------------------
def test_min_score_gives_explicit_no_match(fake_teacher):
    dec = make(min_score=0.6)
    dec.fit(PHRASES, fake_teacher.encode(PHRASES))
    q = fake_teacher.encode(["hello there", "quantum chromodynamics lecture notes"])
    assert dec.decode(q) == ["hello there", NO_MATCH]
    rows = dec.candidates(q, 3)
    assert rows[0][0].confident and rows[0][0].text == "hello there"
    assert rows[1] and not any(c.confident for c in rows[1])
    assert all(c.score < 0.6 for c in rows[1])
    for method in ("mmr", "compose"):
        other = make(fake_teacher, min_score=0.6, method=method)
        other.fit(PHRASES, fake_teacher.encode(PHRASES))
        assert other.decode(q)[1] == NO_MATCH


# -- assembly methods -------------------------------------------------------------------------------
def test_mmr_reranks_for_diversity():
    a = np.array([1.0, 0.0, 0.0, 0.0], np.float32)
    a2 = np.array([0.98, 0.2, 0.0, 0.0], np.float32)  # near-duplicate of a
    b = np.array([0.7, 0.0, 0.71, 0.0], np.float32)  # relevant but different
    c = np.array([0.0, 0.0, 0.0, 1.0], np.float32)
    texts = ["a", "a again", "b", "c"]
    q = np.array([[1.0, 0.05, 0.3, 0.0]], np.float32)
    best = make(method="best")
    best.fit(texts, np.stack([a, a2, b, c]))
    mmr = make(method="mmr", mmr_lambda=0.5, mmr_margin=0.3, max_phrases=2, mmr_pool=3)
    mmr.fit(texts, np.stack([a, a2, b, c]))
    assert [x.text for x in best.candidates(q, 3)[0]] == ["a", "a again", "b"]
    rows = mmr.candidates(q, 3)[0]
    assert [x.text for x in rows] == ["a", "b", "a again"]
    assert [x.score for x in rows] == sorted((x.score for x in rows), reverse=True)
    assert best.decode(q) == ["a"]
    assert mmr.decode(q) == ["a. b"]


def test_compose_builds_a_multi_phrase_answer_verified_by_the_teacher(fake_teacher):
    target_text = "my name is cell. i like green tea"
    q = fake_teacher.encode([target_text])
    best = make(fake_teacher)
    best.fit(PHRASES, fake_teacher.encode(PHRASES))
    best_row = best.candidates(q, 1)[0][0]
    for search in ("greedy", "beam"):
        comp = make(fake_teacher, method="compose", compose_search=search, max_phrases=3)
        comp.fit(PHRASES, fake_teacher.encode(PHRASES))
        out = comp.decode(q)[0]
        assert out == target_text, search
        top = comp.candidates(q, 5)[0][0]
        assert top.text == out and len(top.ids) == 2
        # the score is the teacher's cosine of the composed text, well above the best single phrase
        re_embedded = fake_teacher.encode([out])[0].numpy()
        assert top.cosine == pytest.approx(float(re_embedded @ (q[0].numpy() / np.linalg.norm(q[0].numpy()))),
                                           abs=1e-5)
        assert top.cosine > best_row.score + 0.1
        assert comp.compose_encoded > 0


def test_compose_keeps_a_single_phrase_when_more_does_not_help(fake_teacher):
    comp = make(fake_teacher, method="compose", compose_search="beam")
    comp.fit(PHRASES, fake_teacher.encode(PHRASES))
    assert comp.decode(fake_teacher.encode(PHRASES[:4])) == PHRASES[:4]


def test_compose_needs_teacher_or_sum_scoring(fake_teacher):
    vecs = fake_teacher.encode(PHRASES)
    dec = make(None, method="compose")
    dec.fit(PHRASES, vecs)
    with pytest.raises(ConfigError, match="needs the teacher encoder"):
        dec.decode(vecs[:1])
    summed = make(None, method="compose", compose_score="sum")
    summed.fit(PHRASES, vecs)
    q = fake_teacher.encode(["my name is cell. i like green tea"])
    assert summed.decode(q) == ["my name is cell. i like green tea"]


def test_methods_really_differ(fake_teacher):
    q = fake_teacher.encode(["hello there, what is your name, i like green tea"])
    outs = {}
    for method in ("best", "mmr", "compose"):
        dec = make(fake_teacher, method=method, mmr_margin=0.5)
        dec.fit(PHRASES, fake_teacher.encode(PHRASES))
        outs[method] = dec.decode(q)[0]
    assert len(set(outs.values())) == 3, outs


# -- text, cache, batches ----------------------------------------------------------------------------
def test_postprocess_steps():
    assert postprocess("  hello   world \n", ["whitespace"]) == "hello world"
    assert postprocess("hi. how are you? fine", ["capitalize"]) == "Hi. How are you? Fine"
    assert postprocess("I I think the the cat is is here", ["repeats"]) == "I think the cat is here"
    assert postprocess("keep  as is", []) == "keep  as is"
    assert join_phrases(["hello there", "How are you?", "fine"]) == "hello there. How are you? fine"


def test_capitalize_option_applies_to_decode(fake_teacher):
    dec = make(postprocess=["whitespace", "capitalize"])
    dec.fit(PHRASES, fake_teacher.encode(PHRASES))
    assert dec.decode(fake_teacher.encode(["hello there"])) == ["Hello there"]


def test_lru_cache_hits_and_evicts(vectors):
    texts = [f"p{i}" for i in range(200)]
    dec = make(cache_size=50)
    dec.fit(texts, vectors[:200])
    first = dec.decode(vectors[:10])
    assert dec.cache_misses == 10 and dec.cache_hits == 0
    assert dec.decode(vectors[:10] + 1e-7) == first  # rounded key: tiny noise hits the cache
    assert dec.cache_hits == 10
    dec.decode(vectors[100:200])
    assert len(dec._cache) == 50
    dec.decode(vectors[:1])
    assert dec.cache_misses == 111  # evicted


def test_batch_decoding_matches_one_call(vectors):
    texts = [f"p{i}" for i in range(1000)]
    dec = make(cache_size=0, batch_size=64)
    dec.fit(texts, vectors[:1000])
    q = vectors[:300] + 0.05
    assert dec.decode_batch(q, batch_size=7) == dec.decode(q) == [r[0].text for r in dec.candidates(q, 1)]


# -- incremental add, de-duplication ---------------------------------------------------------------
@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_add_without_rebuild(kind, vectors):
    texts = [f"p{i}" for i in range(len(vectors))]
    dec = make(index=kind, postprocess=[], recall_sample=200)
    dec.fit(texts[:1400], vectors[:1400])
    index_before = dec.bank.index
    added = dec.add(texts[1390:], vectors[1390:])  # 10 already there
    assert added == 600 and len(dec) == 2000
    assert dec.bank.index is index_before and dec.bank.ntotal == 2000  # same index object: no rebuild
    assert dec.meta["added_after_build"] == 600
    out = dec.decode(vectors[1400:1600])
    assert np.mean([o == t for o, t in zip(out, texts[1400:1600])]) >= 0.95


def test_fit_drops_identical_texts(fake_teacher):
    dec = make()
    meta = dec.fit(PHRASES + PHRASES[:3], fake_teacher.encode(PHRASES + PHRASES[:3]))
    assert len(dec) == len(PHRASES) and meta["duplicates_dropped"] == 3
    assert dec.add(PHRASES[:2], fake_teacher.encode(PHRASES[:2])) == 0


# -- answers, not questions -------------------------------------------------------------------------
def test_is_question_needs_every_sentence_to_ask():
    assert is_question("How are you doing?") and is_question("Why?  When?") and is_question('Is it "true?"')
    assert is_question("¿Qué tal？")
    assert not is_question("I'm doing well. How are you?")  # an answer that asks back
    assert not is_question("No.  Do you?") and not is_question("Yes I am.") and not is_question("")


def test_fit_leaves_questions_out_unless_asked_to_keep_them(fake_teacher):
    texts = ["How are you doing?", "I am doing well.", "What is your name?", "My name is Cell. And yours?"]
    dec = make(fake_teacher)
    meta = dec.fit(texts, fake_teacher.encode(texts))
    assert dec.texts == ["I am doing well.", "My name is Cell. And yours?"]
    assert meta["questions_dropped"] == 2 and meta["texts"] == 2
    # the question's own embedding now retrieves an answer, not the question back
    assert dec.decode(fake_teacher.encode(["How are you doing?"])) == ["I am doing well."]
    keep = make(fake_teacher, include_questions=True)
    assert keep.fit(texts, fake_teacher.encode(texts))["questions_dropped"] == 0
    assert keep.texts == texts
    assert keep.decode(fake_teacher.encode(["How are you doing?"])) == ["How are you doing?"]


def test_a_bank_of_only_questions_is_refused_with_the_option_named(fake_teacher):
    texts = ["How are you?", "Why?"]
    with pytest.raises(DataError, match="all 2 texts given to fit.. are questions; set decoder.include_questions"):
        make(fake_teacher).fit(texts, fake_teacher.encode(texts))


def test_chatterbot_bank_holds_answers(fake_teacher):
    """On the default dataset the training answers include chained turns that only ask ("How are
    you doing?" answers "Hi"): the bank built from them holds none of those."""
    pytest.importorskip("cellnet_datasets")
    pytest.importorskip("chatterbot_corpus")
    from cellnet_datasets.corpora import build_chatterbot
    from cellnet_datasets.config import ChatterbotConfig

    answers = list(dict.fromkeys(p.answer for p in build_chatterbot(ChatterbotConfig()).pairs("train")))
    asked = [t for t in answers if is_question(t)]
    assert "How are you doing?" in asked and len(asked) > 50
    dec = make()
    dec.fit(answers, clustered(len(answers), 16, seed=1))
    assert not [t for t in dec.texts if is_question(t)]
    assert len(dec) == len(answers) - len(asked)
    assert "I'm doing well. How are you?" in dec.texts  # an answer with a question back stays


# -- files ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_save_load_round_trip(kind, vectors, tmp_path):
    texts = [f"phrase {i} ünïcode" for i in range(len(vectors))]
    dec = make(index=kind, recall_sample=200, nprobe=2, ef_search=8)
    dec.fit(texts, vectors)
    files = dec.save(tmp_path / "bank")
    assert sorted(p.name for p in files) == ["index.faiss", "meta.json", "texts.jsonl"]
    again = make(index="flat")  # the saved index wins over the config's index type
    again.load(tmp_path / "bank")
    assert again.index_kind == kind and again.recall_at_1 == dec.recall_at_1
    assert again.bank.search_param() == dec.bank.search_param()
    q = vectors[:200] + 0.1
    assert again.decode(q) == dec.decode(q)
    again.add(["new phrase"], vectors[:1] * -1.0)
    assert again.decode(vectors[:1] * -1.0) == ["new phrase"]


def test_size_mismatch_is_a_checkpoint_error(vectors, tmp_path):
    dec = make()
    dec.fit([f"p{i}" for i in range(10)], vectors[:10])
    dec.save(tmp_path / "bank")
    lines = (tmp_path / "bank" / "texts.jsonl").read_text().splitlines()
    (tmp_path / "bank" / "texts.jsonl").write_text("\n".join(lines[:9]) + "\n")
    with pytest.raises(CheckpointError, match="index.faiss holds 10 vectors but texts.jsonl has 9 texts"):
        make().load(tmp_path / "bank")


def test_missing_or_damaged_files(vectors, tmp_path):
    dec = make()
    dec.fit([f"p{i}" for i in range(10)], vectors[:10])
    dec.save(tmp_path / "bank")
    (tmp_path / "bank" / "index.faiss").write_bytes(b"not an index")
    with pytest.raises(CheckpointError, match="index.faiss: damaged or not a FAISS index"):
        make().load(tmp_path / "bank")
    (tmp_path / "bank" / "index.faiss").unlink()
    with pytest.raises(CheckpointError, match="index.faiss: missing"):
        make().load(tmp_path / "bank")


def test_wrong_dimension_names_both_sizes(vectors):
    dec = make()
    dec.fit([f"p{i}" for i in range(10)], vectors[:10])
    with pytest.raises(ConfigError, match="query embedding has 16 dims but the bank holds 32-dim vectors"):
        dec.decode(np.zeros((2, 16), np.float32))
    with pytest.raises(CellnetError, match="add\\(\\) embeddings have 48 dims but the bank holds 32-dim"):
        dec.add(["x"], np.ones((1, 48), np.float32))
    piped = PhrasebankDecoder(PhrasebankConfig(), embedding_dim=64)
    with pytest.raises(ConfigError, match="fit\\(\\) embeddings have 32 dims but the pipeline gives the decoder 64"):
        piped.fit(["a"], vectors[:1])


def test_empty_bank_and_bad_inputs(vectors):
    with pytest.raises(CheckpointError, match="has no phrases"):
        make().decode(vectors[:1])
    with pytest.raises(DataError, match="3 texts but 2 embeddings"):
        make().fit(["a", "b", "c"], vectors[:2])
    with pytest.raises(DataError, match="got no texts"):
        make().fit([], np.zeros((0, 32), np.float32))


# -- texts_file ---------------------------------------------------------------------------------------
def test_texts_file_builds_on_first_use_and_merges_on_fit(fake_teacher, tmp_path):
    txt = tmp_path / "phrases.txt"
    txt.write_text("\n".join(PHRASES[:6]) + "\n\n")
    dec = make(fake_teacher, texts_file=str(txt))
    assert dec.decode(fake_teacher.encode(["my name is cell"])) == ["my name is cell"]
    assert len(dec) == 6
    dec.fit(PHRASES[4:], fake_teacher.encode(PHRASES[4:]))
    assert len(dec) == len(PHRASES)  # 6 fit-only + 6 from the file, 2 shared
    jl = tmp_path / "phrases.jsonl"
    jl.write_text(json.dumps({"text": "from jsonl"}) + "\n" + "{broken\n")
    with pytest.raises(DataError, match="phrases.jsonl: line 2: expected a JSON object"):
        make(fake_teacher, texts_file=str(jl)).decode(fake_teacher.encode(["x"]))
    with pytest.raises(ConfigError, match="needs the run's encoder"):
        make(None, texts_file=str(txt)).fit(["a"], fake_teacher.encode(["a"]))


def test_factory_keeps_the_teacher_and_checks_compose_dims(registry, fake_teacher):
    from cellnet_core.pipeline import BuildContext

    ctx = BuildContext(registry=registry, encoder=fake_teacher, embedding_dim=64)
    dec = registry.build("decoder", {"name": "phrasebank", "method": "compose"}, ctx)
    assert dec.encoder is fake_teacher and dec.embedding_dim == 64
    ctx.embedding_dim = 32
    with pytest.raises(ConfigError, match="teacher, which gives 64 dims, but the decoder receives 32"):
        build_phrasebank(registry.config_for("decoder", {"name": "phrasebank", "method": "compose"}), ctx)


def test_config_errors_are_readable(registry):
    with pytest.raises(ConfigError, match="decoder.index"):
        registry.config_for("decoder", {"name": "phrasebank", "index": "lsh"})
    with pytest.raises(ConfigError, match="decoder.postprocess"):
        registry.config_for("decoder", {"name": "phrasebank", "postprocess": ["shout"]})


def test_threads_option_is_scoped(vectors):
    import faiss

    faiss.omp_set_num_threads(2)
    try:
        dec = make(index="ivf", threads=1, recall_sample=50)
        dec.fit([f"p{i}" for i in range(500)], vectors[:500])
        assert dec.decode(vectors[:3]) == ["p0", "p1", "p2"]
        assert faiss.omp_get_max_threads() == 2  # restored after build and search
    finally:
        faiss.omp_set_num_threads(1)


def test_candidates_show_the_same_text_as_decode(fake_teacher):
    raw = ["Hello  world,  friend", "the the cat sat"]
    dec = make(fake_teacher)
    dec.fit(raw, fake_teacher.encode(raw))
    q = fake_teacher.encode(raw)
    rows = dec.candidates(q, 1)
    assert dec.decode(q) == [r[0].text for r in rows] == ["Hello world, friend", "the cat sat"]
    assert [dec.texts[r[0].ids[0]] for r in rows] == raw
