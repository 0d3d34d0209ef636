"""Rank agreement: Spearman with average ranks, Kendall tau-b, and their refusals."""

import json

import numpy as np
import pytest

from equiprune.engine.errors import InvalidConfigError
from equiprune.engine.ranking import _average_ranks, rank_agreement


def test_rank_agreement_on_known_orderings():
    measured = {"a": 0.1, "b": 0.5, "c": 0.2, "d": 0.9}
    same = rank_agreement({"a": 1, "b": 3, "c": 2, "d": 4}, measured)
    reversed_ = rank_agreement({"a": 4, "b": 2, "c": 3, "d": 1}, measured)
    assert same.spearman == pytest.approx(1.0) and same.kendall == pytest.approx(1.0)
    assert reversed_.spearman == pytest.approx(-1.0) and reversed_.kendall == pytest.approx(-1.0)
    assert same.n_groups == 4 and same.reason is None
    # One swapped adjacent pair of four: Spearman 1 − 6·2/(4·15) = 0.8, Kendall (5 − 1)/6.
    swapped = rank_agreement({"a": 1, "b": 2, "c": 3, "d": 4}, measured)
    assert swapped.spearman == pytest.approx(0.8) and swapped.kendall == pytest.approx(4 / 6)


def test_rank_agreement_with_ties_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    predicted = {"a": 1.0, "b": 2.0, "c": 2.0, "d": 3.0, "e": 3.0, "f": 0.5}
    measured = {"a": 0.3, "b": 0.1, "c": 0.4, "d": 0.4, "e": 0.9, "f": 0.3}
    result = rank_agreement(predicted, measured)
    x, y = list(predicted.values()), [measured[k] for k in predicted]
    assert result.spearman == pytest.approx(stats.spearmanr(x, y).statistic, rel=1e-12)
    assert result.kendall == pytest.approx(stats.kendalltau(x, y).statistic, rel=1e-12)


def test_rank_agreement_excludes_missing_values_and_explains_undefined_results():
    result = rank_agreement({"a": 1, "b": None, "c": float("nan"), "d": 2}, {"a": 1, "b": 2, "c": 3, "e": 4})
    assert result.groups == ("a",) and set(result.excluded) == {"b", "c", "d", "e"}
    assert result.spearman is None and result.kendall is None and "3 groups" in result.reason
    constant = rank_agreement({"a": 1, "b": 1, "c": 1}, {"a": 1, "b": 2, "c": 3})
    assert constant.spearman is None and "constant" in constant.reason
    json.dumps(constant.to_dict(), allow_nan=False)


def test_rank_agreement_rejects_non_numbers():
    with pytest.raises(InvalidConfigError) as err:
        rank_agreement({"a": "high", "b": 1, "c": 2}, {"a": 1, "b": 2, "c": 3})
    assert err.value.field == "rank_agreement.predicted.a"


def test_average_ranks_agree_with_a_hand_count():

    assert _average_ranks(np.array([10.0, 20.0, 20.0, 5.0, 20.0])).tolist() == [2.0, 4.0, 4.0, 1.0, 4.0]


def test_the_prediction_note_names_what_was_predicted_and_both_rankings():
    from equiprune.engine.ranking import prediction_note

    prediction = {"before_recalibration": {"rank_agreement": {"spearman": 0.8}},
                  "after_recalibration": {"rank_agreement": {"spearman": -0.5}}}
    note = prediction_note(prediction)
    assert "dense BatchNorm statistics" in note and "+0.80" in note and "-0.50" in note
    assert "recalibrated" not in prediction_note({"before_recalibration": {"rank_agreement": {"spearman": None}}})
    assert prediction_note(None) == ""
