"""Text2JSON metric, every expected value computed by hand from DESIGN.md's rules."""

import json
import math

import pytest

from vllm_kvoffload.bench.text2json import sample_score, score

A = {"name": "Alpha", "city": "Paris", "year": "1999"}
B = {"name": "Beta", "city": "Rome", "year": "2001"}
GOLD = json.dumps([A, B])


def pred(*ents) -> str:
    return json.dumps(list(ents))


@pytest.mark.parametrize("prediction, expected", [
    (pred(A, B), 1.0),                                             # perfect
    (pred(B, A), 1.0),                                             # order does not matter
    ("Sure! Here it is: " + pred(A, B) + " Done.", 1.0),            # text around the list
    (pred({"name": "Alpha", "city": "Paris"}, B), (0.5 + 1) / 2),   # missing field: -0.5
    (pred({**A, "year": None}, B), (0.5 + 1) / 2),                   # null field: -0.5
    (pred({"name": "Alpha"}, B), (0.0 + 1) / 2),                    # both fields missing
    (pred({**A, "city": "Lyon"}, B), (0.75 + 1) / 2),               # wrong value: -0.25
    (pred({**A, "city": "Lyon", "year": "1"}, B), (0.5 + 1) / 2),   # two wrong values
    (pred({**A, "year": 1999}, B), 1.0),                            # int compared as a string
    (pred({**A, "year": 2000}, B), (0.75 + 1) / 2),                 # wrong int
    (pred({**A, "year": 1999.0}, B), (0.75 + 1) / 2),               # float is not an int: differs
    (pred({**A, "extra": "x"}, B), 1.0),                            # extra keys are free
    (pred(A, B, {"name": "Gamma", "city": "Oslo", "year": "1"}), 2 / 3),  # extra entity: +1 denominator
    (pred(A, B, {"city": "Oslo"}), 2 / 3),                          # no name: +1 denominator
    (pred(A, B, {**A, "name": 7}), 2 / 3),                          # non-string name
    (pred(A, A, B), 2 / 3),                                         # a name matches only once
    (pred(A), 1 / 2),                                               # missing entity
    (pred(), 0.0),                                                  # empty list
    ("[" + pred(A, B), 0.0),                                        # two '['
    (pred(A, B) + "]", 0.0),                                        # two ']'
    ("] " + pred(A, B)[1:-1] + " [", 0.0),                          # ']' before '['
    ('[{"name": "Alpha", city: Paris}]', 0.0),                      # unparsable JSON
    ('[{"name": "Alpha"},]', 0.0),                                  # trailing comma
    ("", 0.0),                                                      # empty prediction
    ("I could not find any entity.", 0.0),                          # no brackets
])
def test_sample_score(prediction, expected):
    assert sample_score(prediction, GOLD) == pytest.approx(expected)


def test_curly_apostrophe_normalised_in_names_and_values():
    gold = json.dumps([{"name": "O\u2019Brien Ltd", "city": "St. John\u2019s", "year": "1990"},
                       {"name": "Beta", "city": "Rome", "year": "2001"}])
    p = pred({"name": "O'Brien Ltd", "city": "St. John's", "year": "1990"}, B)
    assert sample_score(p, gold) == 1.0
    p = pred({"name": "O\u2019Brien Ltd", "city": "St. John\u2019s", "year": "1990"}, B)
    assert sample_score(p, gold) == 1.0
    p = pred({"name": "O\u2019Brien Ltd", "city": "St. Johns", "year": "1990"}, B)
    assert sample_score(p, gold) == pytest.approx((0.75 + 1) / 2)


def test_duplicate_gold_names_are_excluded():
    dup = json.dumps([A, {**A, "city": "Nice"}])
    assert sample_score(pred(A), dup) is None
    # the same name after apostrophe normalisation is a duplicate too
    curly = json.dumps([{**A, "name": "D\u2019Arcy"}, {**B, "name": "D'Arcy"}])
    assert sample_score("[]", curly) is None
    # excluded from the mean: (1.0 + 0.5) / 2, not / 3
    assert score([pred(A, B), "x", pred(A)], [GOLD, dup, GOLD]) == pytest.approx(75.0)


def test_reported_score_is_100_times_mean():
    assert score([pred(A, B), pred({**A, "city": "Lyon"}, B), ""], [GOLD] * 3) == pytest.approx(
        100 * (1.0 + 0.875 + 0.0) / 3)
    assert score([pred(A, B)], [[A, B]]) == 100.0  # gold given as a parsed list works too
    assert math.isnan(score(["[]"], [json.dumps([A, A])]))
    with pytest.raises(ValueError, match="2 predictions for 1 golds"):
        score(["", ""], [GOLD])
