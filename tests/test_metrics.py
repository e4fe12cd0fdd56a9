import pytest
import torch

from cellnet_core import metrics as M


def test_ranks_recall_mrr_by_hand():
    scores = torch.tensor([[0.9, 0.1, 0.3], [0.2, 0.8, 0.9], [0.1, 0.2, 0.3]])
    ranks = M.ranks_of_targets(scores, [0, 1, 0])
    assert ranks == [1, 2, 3]
    assert M.recall_at_k(ranks, 1) == pytest.approx(1 / 3)
    assert M.recall_at_k(ranks, 2) == pytest.approx(2 / 3)
    assert M.mrr(ranks) == pytest.approx((1 + 1 / 2 + 1 / 3) / 3)


def test_ties_count_against_target():
    assert M.ranks_of_targets(torch.zeros(1, 4), [2]) == [4]


def test_map_and_selection_mrr_by_hand():
    # q1: ranked labels 1,0,1 → AP = (1/1 + 2/3)/2 = 5/6, RR = 1
    # q2: ranked labels 0,1,0 → AP = 1/2, RR = 1/2
    items = [([0.9, 0.5, 0.4], [1, 0, 1]), ([0.9, 0.8, 0.1], [0, 1, 0])]
    assert M.mean_average_precision(items) == pytest.approx((5 / 6 + 1 / 2) / 2)
    assert M.selection_mrr(items) == pytest.approx((1 + 1 / 2) / 2)
    assert M.mean_average_precision([([0.1], [0])]) == 0.0


def test_text_metrics():
    assert M.token_f1("the cat sat", "the cat sat") == 1.0
    assert M.token_f1("the cat sat", "a cat ran") == pytest.approx(0.5)  # articles do not count (SQuAD)
    assert M.token_f1("", "x") == 0.0
    assert M.exact_match("Hello, world!", "hello world") == 1.0
    assert M.corpus_bleu(["the cat sat on the mat"], ["the cat sat on the mat"]) == pytest.approx(100.0)
    assert M.corpus_bleu(["a b c d"], ["w x y z"]) < 1.0


def test_cosine():
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    b = torch.tensor([[1.0, 0.0], [-1.0, -1.0]])
    assert M.cosine(a, b).tolist() == pytest.approx([1.0, -1.0])


def test_paired_bootstrap_separates_a_real_difference_from_noise():
    import random

    rng = random.Random(0)
    base = [rng.random() for _ in range(200)]
    better = [x + 0.1 for x in base]
    r = M.paired_bootstrap(better, base)
    assert r["diff"] == pytest.approx(0.1) and r["lo"] == pytest.approx(0.1) and r["p"] == 0.0
    noisy = [x + rng.gauss(0, 0.3) for x in base]
    r = M.paired_bootstrap(noisy, base)
    assert r["lo"] < 0 < r["hi"] and 0.05 < r["p"] < 0.95
    with pytest.raises(ValueError, match="equally long"):
        M.paired_bootstrap([1.0], [1.0, 2.0])
