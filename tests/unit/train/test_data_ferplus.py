"""FERPlus label rules against an independent implementation of the reference rules
(microsoft/FERPlus ``src/ferplus.py``: ``_process_data`` followed by the unknown/NF drop)."""
from __future__ import annotations

import numpy as np
import pytest

from train.data.ferplus import (majority_distribution, plurality_distribution, probability_distribution,
                                to_canonical)
from train.labels import CANONICAL8

COLUMNS = ["neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt", "unknown", "NF"]


def ref_majority(votes):
    """Reference majority: singles dropped, winner needs > half of all remaining votes, not unknown/NF."""
    v = [x if x > 1 else 0 for x in votes]
    total, top = sum(v), max(v)
    if top > 0.5 * total and v.index(top) < 8:
        return v.index(top)
    return None


def ref_probability(votes):
    """Reference probability: greedy tie groups (max 3 entries) until 75% covered; >50% must be covered."""
    v = [x if x > 1 else 0 for x in votes]
    total = sum(v)
    kept: dict[int, float] = {}
    count = 0
    while sum(kept.values()) < 0.75 * total and count < 3:
        top = max(v)
        hit_unknown = False
        for i in [j for j in range(10) if v[j] == top]:
            kept[i], v[i] = top, 0
            count += 1
            if i >= 8:
                hit_unknown = True
                if sum(kept.values()) > top:  # emotions were taken before unknown/NF: drop unknown/NF
                    del kept[i]
                    count -= 1
                break
        if hit_unknown:
            break
    if sum(kept.values()) <= 0.5 * total or count > 3:
        return None
    dist = np.array([kept.get(i, 0.0) for i in range(10)])
    if dist.argmax() >= 8:
        return None
    return dist[:8] / dist[:8].sum()


def ref_plurality(votes):
    top = int(np.argmax(votes))
    return top if votes[top] > 0 and top < 8 else None


def row(**votes) -> np.ndarray:
    return np.array([votes.get(c, 0) for c in COLUMNS], dtype=np.float64)


# (votes, majority winner, plurality winner) with winners as FERPlus column names, None = dropped
HAND_MADE = [
    (row(happiness=8, surprise=1, sadness=1), "happiness", "happiness"),
    (row(neutral=4, happiness=1, surprise=1, sadness=1, anger=1, disgust=1, fear=1), "neutral", "neutral"),  # singles
    (row(neutral=4, happiness=4, anger=2), None, "neutral"),                 # tie: no majority; plurality -> first
    (row(neutral=5, sadness=5), None, "neutral"),                            # exactly half is not a majority
    (row(neutral=2, unknown=6, NF=2), None, None),                           # unknown wins
    (row(NF=10), None, None),                                                # not a face
    (row(happiness=5, unknown=5), None, "happiness"),                        # tie with unknown
    (row(anger=3, contempt=7), "contempt", "contempt"),
    (row(**dict.fromkeys(COLUMNS, 1)), None, "neutral"),                     # only single votes
    (row(surprise=3, fear=3, unknown=1, NF=1, happiness=2), None, "surprise"),
]


@pytest.mark.parametrize("votes,majority,plurality", HAND_MADE)
def test_hand_made_rows(votes, majority, plurality):
    got = majority_distribution(votes)
    assert (None if got is None else COLUMNS[int(got.argmax())]) == majority
    ref = ref_majority(list(votes))
    assert (None if ref is None else COLUMNS[ref]) == majority
    got = plurality_distribution(votes)
    assert (None if got is None else COLUMNS[int(got.argmax())]) == plurality
    ref_p = ref_probability(list(votes))
    got_p = probability_distribution(votes)
    assert (ref_p is None) == (got_p is None)
    if ref_p is not None:
        assert np.allclose(got_p, ref_p)


def test_probability_examples():
    d = probability_distribution(row(neutral=4, happiness=4, anger=2))
    assert np.allclose(d, [0.5, 0.5, 0, 0, 0, 0, 0, 0])  # 8 of 10 votes cover 75%: anger is left out
    d = probability_distribution(row(surprise=6, fear=4))
    assert np.allclose(d[[2, 6]], [0.6, 0.4])
    assert probability_distribution(row(happiness=5, unknown=5)) is None  # only 50% covered


def test_random_rows_match_reference():
    rng = np.random.default_rng(0)
    for _ in range(3000):
        p = rng.dirichlet(np.full(10, 0.4))
        votes = rng.multinomial(rng.integers(6, 13), p).astype(np.float64)
        m, r = majority_distribution(votes), ref_majority(list(votes))
        assert (m is None and r is None) or (m is not None and r is not None and int(m.argmax()) == r)
        pl, rp = plurality_distribution(votes), ref_plurality(votes)
        assert (pl is None and rp is None) or (pl is not None and int(pl.argmax()) == rp)
        pr, rr = probability_distribution(votes), ref_probability(list(votes))
        assert (pr is None) == (rr is None)
        if pr is not None:
            assert np.allclose(pr, rr) and pr.sum() == pytest.approx(1.0)


def test_canonical_order():
    for j, name in enumerate(COLUMNS[:8]):
        onehot = np.eye(8)[j]
        assert CANONICAL8[int(to_canonical(onehot, 8).argmax())] == name
    assert to_canonical(np.eye(8)[7], 7) is None  # contempt only: dropped in 7-class mode
    mixed = to_canonical(np.array([0.5, 0, 0, 0, 0, 0, 0, 0.5]), 7)
    assert mixed.tolist() == [1, 0, 0, 0, 0, 0, 0]
