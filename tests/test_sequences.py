"""User order, histories and the leave-last-out split of one partition, checked directly."""

from __future__ import annotations

import numpy as np
import pytest

from eain_dist.data import sequences

# Two users; user 7's first three reviews share one second and arrive in input order 30, 10, 20.
USER = np.array([7, 7, 7, 7, 3, 3, 3])
ITEM = np.array([1, 2, 3, 4, 5, 6, 7])
TIME = np.array([100, 100, 100, 200, 50, 60, 60])
POSITION = np.array([30, 10, 20, 5, 1, 3, 2])


def ordered():
    return sequences.sort_by_user_order(USER, ITEM, ITEM * 10, TIME, POSITION)


def test_ties_follow_the_input_position_not_the_item():
    seq = ordered()
    assert seq.user.tolist() == [3, 3, 3, 7, 7, 7, 7]
    assert seq.item.tolist() == [5, 7, 6, 2, 3, 1, 4]


def test_input_order_histories_include_earlier_same_time_reviews():
    seq = ordered()
    end = sequences.history_end(seq, "input_order")
    assert (end - seq.user_start).tolist() == [0, 1, 2, 0, 1, 2, 3]
    split = sequences.split_of(seq, end - seq.user_start)
    assert split.tolist() == [-1, 1, 2, -1, 0, 1, 2]  # the last input record of a tie is the test positive
    gap = sequences.context_features(seq, end)["gap"]
    assert gap.tolist() == [0, 4, 1, 0, 1, 1, 7]  # 1 = a same-second previous review, 0 = none


def test_strict_time_histories_exclude_same_time_reviews():
    seq = ordered()
    end = sequences.history_end(seq, "strict_time")
    assert (end - seq.user_start).tolist() == [0, 1, 1, 0, 0, 0, 3]
    history = sequences.gather_history(seq.item, np.maximum(seq.user_start, end - 2), end, 2)
    assert history.tolist() == [[0, 0], [0, 5], [0, 5], [0, 0], [0, 0], [0, 0], [3, 1]]


def test_an_unknown_history_ties_value_is_a_one_line_error():
    from eain_dist.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="data.history_ties must be input_order or strict_time, got 'time'"):
        load_config(None, ["data.history_ties=time"])
