"""``cellnet eval`` scores the answer text: the metric functions against hand-computed values, the
table, ``--json`` and ``--dump`` on tiny trained runs, abstentions, ``--no-text`` and selection data."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from cellnet_core import api
from cellnet_core import text_metrics as T
from cellnet_core.cli import main
from cellnet_core.testing.fakes import GREETINGS_CONFIG

SELECTION = Path(__file__).resolve().parents[1] / "plugins" / "cellnet-datasets" / "tests" / "data" / "selection.jsonl"
BANK_CONFIG = GREETINGS_CONFIG.replace("decoder: {name: nearest}", "decoder: {name: phrasebank, min_score: 0.6}")
DUMP_KEYS = {"question", "reference", "answer", "abstained", "scores", "answer_score", "rank", "candidates",
             "baselines"}


# -- the metric functions, by hand -------------------------------------------------------------
def test_normalize_answer_is_squads():
    assert T.normalize_answer("The Cat's  hat, a HAT!") == "cats hat hat"
    assert T.normalize_answer("An apple — “the” end…") == "apple end"  # Unicode punctuation too
    assert T.normalize_answer("theory and anagram") == "theory and anagram"  # articles as whole words only


def test_token_f1_and_exact_match_by_hand():
    # prediction tokens cat sat on mat, reference cat on mat: 3 common, P = 3/4, R = 1 → F1 = 6/7
    assert T.token_f1("The cat sat on the mat.", "a cat on a mat") == pytest.approx(6 / 7)
    assert T.token_f1("cat cat", "cat") == pytest.approx(2 * 0.5 * 1 / 1.5)  # counted with multiplicity
    assert T.token_f1("dog", "cat") == 0.0
    assert T.token_f1("", "cat") == 0.0 and T.token_f1("the", "a") == 1.0  # both empty after normalising
    assert T.exact_match("The answer!", "answer") == 1.0 and T.exact_match("answers", "answer") == 0.0


def test_rouge_l_by_hand():
    # LCS of "the cat sat on the mat" and "the cat on mat" is "the cat on mat": P = 4/6, R = 4/4 → F = 0.8
    assert T.rouge_l("the cat sat on the mat", "the cat on mat") == pytest.approx(0.8)
    # a b c against a d c: LCS "a c", P = R = 2/3
    assert T.rouge_l("a b c", "a d c") == pytest.approx(2 / 3)
    assert T.rouge_l("", "the cat") == 0.0 and T.rouge_l("x y", "the cat") == 0.0


def test_bleu_by_hand():
    # hypothesis "the cat sat on the mat", reference "the cat sat on a mat": clipped n-gram matches
    # 5/6, 3/5, 2/4, 1/3, equal lengths (no brevity penalty) → (1/12)^(1/4)
    one = 100 * (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25
    assert T.sentence_bleu("the cat sat on the mat", "the cat sat on a mat") == pytest.approx(one, abs=1e-6)
    assert T.sentence_bleu("the cat sat on the mat", "the cat sat on the mat") == pytest.approx(100.0)
    assert T.sentence_bleu("", "the cat") == 0.0
    hyps, refs = ["the cat sat on the mat", "a b c d"], ["the cat sat on a mat", "a b c d"]
    # corpus BLEU sums the counts first: 9/10, 6/8, 4/6, 2/4 — not the mean of the sentence BLEUs
    assert T.corpus_bleu(hyps, refs) == pytest.approx(100 * (9 / 10 * 6 / 8 * 4 / 6 * 2 / 4) ** 0.25, abs=1e-6)
    # an empty hypothesis adds its reference's length: brevity penalty exp(1 - 10/6)
    assert T.corpus_bleu(["the cat sat on the mat", ""], refs) == pytest.approx(one * math.exp(1 - 10 / 6), abs=1e-6)
    with pytest.raises(ValueError, match="2 predictions for 1 references"):
        T.corpus_bleu(hyps, refs[:1])


def test_abstentions_score_zero_and_are_counted():
    refs = ["the cat sat on a mat", "hello there", "good night"]
    summary, rows = T.score_answers(["the cat sat on the mat", "", "   "], refs, [0.9, None, 0.5])
    assert summary["abstained"] == 2
    assert rows[1] == rows[2] == {k: 0.0 for k in T.QUESTION_KEYS}  # even with a cosine given
    assert rows[0]["token_f1"] == pytest.approx(T.token_f1("the cat sat on the mat", refs[0]))
    assert rows[0]["reembed_cosine"] == 0.9
    for k in T.QUESTION_KEYS:  # means over every question: the abstentions count as 0
        assert summary[k] == pytest.approx(rows[0][k] / 3)
    assert summary["bleu"] == pytest.approx(T.corpus_bleu(["the cat sat on the mat", "", ""], refs))
    assert set(summary) == set(T.SUMMARY_KEYS)


# -- cellnet eval on tiny runs -----------------------------------------------------------------
def _train(tmp_path_factory, name: str, config: str) -> Path:
    d = tmp_path_factory.mktemp(name)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CELLNET_CACHE_DIR", str(d / "emb-cache"))
        api.train(api.load_config(_yaml(d, config)), d / "run", echo=None)
    return d / "run"


def _yaml(d: Path, text: str) -> Path:
    (d / "config.yaml").write_text(text)
    return d / "config.yaml"


@pytest.fixture(scope="module")
def nearest_run(tmp_path_factory) -> Path:
    """Greetings, hashing encoder, identity core, nearest-neighbour decoder: trains in a second."""
    return _train(tmp_path_factory, "nearest", GREETINGS_CONFIG)


@pytest.fixture(scope="module")
def bank_run(tmp_path_factory) -> Path:
    """The same with the phrase bank, which abstains below a cosine of 0.6."""
    return _train(tmp_path_factory, "bank", BANK_CONFIG)


def _json(capsys, *argv: str) -> dict:
    assert main(["eval", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_json_carries_the_text_metrics_of_the_run_and_each_baseline(nearest_run, capsys):
    out = _json(capsys, str(nearest_run), "--baselines", "identity,mean")
    assert [r["name"] for r in out["rows"]] == ["run", "identity", "mean"]
    for row in out["rows"]:
        assert {"recall@1", "recall@10", "mrr", "cosine"} <= set(row)  # the embedding metrics stay
        assert set(row["text"]) == set(T.SUMMARY_KEYS)
        assert 0 <= row["text"]["bleu"] <= 100 and 0 <= row["text"]["token_f1"] <= 1
        assert row["text"]["abstained"] == 0  # the nearest decoder always answers
    assert out["text"]["decoder"] == "nearest" and out["text"]["seconds"] >= 0
    by = {r["name"]: r["text"]["token_f1"] for r in out["rows"]}
    assert [c["baseline"] for c in out["text"]["compare"]] == ["identity", "mean"]
    for c in out["text"]["compare"]:  # paired bootstrap of the per-question token F1, as for MRR
        lo, hi = c["ci95"]
        assert c["metric"] == "token_f1" and lo <= c["token_f1_diff"] <= hi
        assert c["token_f1_diff"] == pytest.approx(by["run"] - by[c["baseline"]])
    assert out["text"]["compare"][0]["verdict"] == "same"
    assert "per_question" not in out and "dump" not in out
    # identity predicts the question's own embedding, as the run (an identity core) does
    assert out["rows"][0]["text"] == out["rows"][1]["text"]


def test_table_shows_the_text_beside_the_embedding_metrics(nearest_run, capsys):
    assert main(["eval", str(nearest_run), "--baselines", "identity"]) == 0
    lines = capsys.readouterr().out.splitlines()
    at = next(i for i, l in enumerate(lines) if l.startswith("answer text, decoded by the run's decoder (nearest)"))
    assert lines[at + 1].split() == ["bleu", "sent-bleu", "rouge-l", "token-f1", "exact", "re-embed", "abstained"]
    assert lines[at + 2].split()[0] == "run" and len(lines[at + 2].split()) == 8
    assert lines[at + 3].split()[0] == "identity"
    assert not any(l.startswith("abstentions") for l in lines)
    assert "run − baseline token f1, 95% paired-bootstrap interval over the test questions:" in lines
    assert lines[-1].split()[:2] == ["vs", "identity"] and lines[-1].endswith("same")


def test_dump_has_one_row_per_question(nearest_run, tmp_path, capsys):
    dump = tmp_path / "out" / "eval.jsonl"
    argv = ["eval", str(nearest_run), "--baselines", "identity,mean", "--dump", str(dump), "-k", "3"]
    assert main(argv) == 2  # a folder that does not exist is refused before any work, not created
    assert "(create it first)" in capsys.readouterr().err
    dump.parent.mkdir()
    assert main(argv) == 0
    assert f"wrote 4 rows (one per question) to {dump}" in capsys.readouterr().err
    rows = [json.loads(line) for line in dump.read_text(encoding="utf-8").splitlines()]
    out = _json(capsys, str(nearest_run), "--baselines", "identity,mean")
    assert len(rows) == out["questions"] == 4
    for r in rows:
        assert set(r) == DUMP_KEYS
        assert set(r["scores"]) == set(T.QUESTION_KEYS)
        assert r["scores"]["token_f1"] == pytest.approx(T.token_f1(r["answer"], r["reference"]))
        assert r["scores"]["rouge_l"] == pytest.approx(T.rouge_l(r["answer"], r["reference"]))
        assert 1 <= len(r["candidates"]) <= 3 and set(r["candidates"][0]) == {"text", "score"}
        assert r["candidates"][0]["text"] == r["answer"]  # the answer is the best candidate
        assert set(r["baselines"]) == {"identity", "mean"}
        assert set(r["baselines"]["mean"]) == {"answer", "abstained", "scores", "rank"}
        assert r["rank"] >= 1
    # the table's means are the dump's rows averaged
    run = out["rows"][0]["text"]
    for k in T.QUESTION_KEYS:
        assert run[k] == pytest.approx(sum(r["scores"][k] for r in rows) / len(rows))
    mean = out["rows"][2]["text"]
    assert mean["token_f1"] == pytest.approx(sum(r["baselines"]["mean"]["scores"]["token_f1"] for r in rows) / 4)


def test_an_abstaining_decoder_scores_zero_counted_and_reported(bank_run, tmp_path, capsys):
    from cellnet_example.components import GreetingsDataset

    # two questions that are training answers themselves (cosine 1: answered exactly), one unrelated
    known = [p.answer for p in GreetingsDataset(0).pairs("train")[:2]]
    data = tmp_path / "mix.jsonl"
    data.write_text("".join(json.dumps({"question": q, "answer": q}) + "\n" for q in known)
                    + json.dumps({"question": "zebra quantum", "answer": "i do not know"}) + "\n")
    dump = tmp_path / "d.jsonl"
    out = _json(capsys, str(bank_run), "--data", str(data), "--baselines", "identity", "--dump", str(dump))
    run = out["rows"][0]["text"]
    assert run["abstained"] == 1 and run["exact_match"] == pytest.approx(2 / 3)
    assert run["token_f1"] == pytest.approx(2 / 3) and run["reembed_cosine"] == pytest.approx(2 / 3, abs=1e-5)
    assert {k: v for k, v in out["text"].items() if k not in ("seconds", "compare")} == {
        "decoder": "phrasebank", "min_score": 0.6}
    rows = [json.loads(line) for line in dump.read_text().splitlines()]
    held = [r for r in rows if r["abstained"]]
    assert [r["question"] for r in held] == ["zebra quantum"] and held[0]["answer"] == ""
    assert held[0]["scores"] == {k: 0.0 for k in T.QUESTION_KEYS}
    assert held[0]["candidates"]  # the nearest phrases are still there to look at
    assert main(["eval", str(bank_run), "--data", str(data), "--baselines", "identity"]) == 0
    text = capsys.readouterr().out
    assert "(phrasebank, min_score 0.6)" in text
    assert "abstentions (empty answers, scored 0 above): run 1/3, identity 1/3" in text


def test_no_text_skips_the_decoding(nearest_run, tmp_path, capsys):
    out = _json(capsys, str(nearest_run), "--no-text", "--baselines", "identity")
    assert all("text" not in r for r in out["rows"]) and out["text"] == {"skipped": "not asked for (--no-text)"}
    assert main(["eval", str(nearest_run), "--no-text", "--dump", str(tmp_path / "x.jsonl")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: eval: --dump writes the decoded answers, which --no-text skips; drop one of them"]
    assert main(["eval", str(nearest_run), "--dump", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert main(["eval", str(nearest_run), "-k", "0"]) == 2


def test_selection_data_says_text_metrics_do_not_apply(nearest_run, tmp_path, capsys):
    out = _json(capsys, str(nearest_run), "--data", str(SELECTION), "--baselines", "identity")
    assert out["text"]["skipped"].startswith("not computed for answer-selection data")
    assert all("text" not in r for r in out["rows"])
    assert main(["eval", str(nearest_run), "--data", str(SELECTION), "--baselines", "identity"]) == 0
    notes = [l for l in capsys.readouterr().out.splitlines() if l.startswith("text metrics")]
    assert notes == ["text metrics: " + api.SELECTION_TEXT_NOTE]
    assert main(["eval", str(nearest_run), "--data", str(SELECTION), "--dump", str(tmp_path / "d.jsonl")]) == 2
    assert "drop --dump" in capsys.readouterr().err and not (tmp_path / "d.jsonl").exists()


def test_a_baseline_the_decoder_cannot_read_gets_no_text(nearest_run):
    import torch

    from cellnet_core.evaluation import format_text_table, predict_run, text_rows

    pipe = api.load_run(nearest_run)
    pairs = pipe.registry.build("dataset", pipe.config.data, None).pairs("test")
    q = pipe.encode([p.question for p in pairs])
    summaries, per_question = text_rows(pipe, pairs, {"run": predict_run(pipe, q), "odd": torch.zeros(len(pairs), 7)})
    assert summaries["odd"] == {"scores": None, "note": "predicts 7-dim embeddings; the run's decoder reads 256: no text"}
    assert summaries["run"]["scores"]["abstained"] == 0 and len(per_question) == len(pairs)
    assert all("odd" not in r["baselines"] for r in per_question)
    result = {"questions": len(pairs), "text": {"decoder": "nearest"},
              "rows": [{"name": "run", "text": summaries["run"]["scores"]},
                       {"name": "odd", "text": None, "text_note": summaries["odd"]["note"]}]}
    assert format_text_table(result)[-1] == "odd          (predicts 7-dim embeddings; the run's decoder reads 256: no text)"
