"""Negative samplers, requests, Skive-Above and frequency-ordered vocabularies, checked directly."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from eain_dist.data import sampling, vocab


def test_frequency_rank_sampler_follows_count_power():
    # ids 1..6 with counts 9, 9, 4, 4, 4, 1 (frequency-ordered)
    counts = np.array([9, 9, 4, 4, 4, 1])
    sampler = sampling.FrequencyRankSampler.from_count_ranges([1, 3, 6], [2, 3, 1], [9, 4, 1], power=0.5)
    draws = sampler.draw(np.random.default_rng(0), 300_000)
    expected = np.sqrt(counts) / np.sqrt(counts).sum()
    observed = np.bincount(draws, minlength=7)[1:] / len(draws)
    np.testing.assert_allclose(observed, expected, atol=0.004)


def test_negatives_avoid_the_users_items_and_report_impossible_ones():
    # user 0 reviewed items 1..4 of 5 (only item 5 is left); user 1 reviewed all 5.
    owners = np.array([0] * 200 + [1] * 3)
    keys = np.unique(np.r_[0 * 6 + np.arange(1, 5), 1 * 6 + np.arange(1, 6)])
    items, ok = sampling.draw_negatives(sampling.UniformSampler(6), np.random.default_rng(1), owners, keys, 6)
    assert ok[:200].all() and (items[:200] == 5).all()
    assert not ok[200:].any()


def test_random_positions_are_a_permutation_per_request():
    request = np.array([7, 7, 7, 3, 3, 9])
    position = sampling.random_positions(request, np.random.default_rng(2))
    for r in np.unique(request):
        assert sorted(position[request == r]) == list(range((request == r).sum()))


def test_skive_above_drops_exactly_the_negatives_after_the_last_positive():
    request = np.array([1, 1, 1, 1, 1, 2, 2, 2])
    position = np.array([0, 1, 2, 3, 4, 0, 1, 2])
    label = np.array([0, 1, 0, 1, 0, 1, 0, 0], dtype=np.float32)
    keep = sampling.skive_above_keep(request, position, label)
    assert keep.tolist() == [True, True, True, True, False, True, False, False]


def test_session_starts_split_on_gaps_and_users():
    user_start = np.array([0, 0, 0, 0, 4, 4])
    timestamp = np.array([0, 10, 100, 105, 106, 107])
    assert sampling.session_starts(user_start, timestamp, gap_s=50).tolist() == [0, 0, 2, 2, 4, 4]


def test_partitioned_frequency_index_equals_a_global_sort():
    rng = np.random.default_rng(3)
    raw = np.array([f"id{i:04d}" for i in range(500)])
    counts = rng.integers(1, 20, 500)
    assignment = rng.integers(0, 4, 500)
    partitions = [np.flatnonzero(assignment == p) for p in range(4)]
    histograms = pa.concat_tables([vocab.count_histogram(p, counts[rows]) for p, rows in enumerate(partitions)])
    offsets = vocab.RankOffsets.from_histograms(histograms)
    index = np.zeros(500, np.int64)
    for part, rows in enumerate(partitions):
        index[rows] = vocab.frequency_index(pa.array(raw[rows]), counts[rows], part, offsets)
    assert sorted(index) == list(range(1, 501))
    assert (np.diff(counts[np.argsort(index)]) <= 0).all()  # most frequent first
    first, size, count = offsets.count_ranges()
    for f, s, c in zip(first, size, count):
        assert (counts[(index >= f) & (index < f + s)] == c).all()


def test_hashed_index_is_stable_and_in_range():
    ids = pa.array(["A1", "B2", "C3"])
    first = vocab.hashed_index(ids, 1000)
    assert (first == vocab.hashed_index(ids, 1000)).all()
    assert ((first >= 1) & (first < 1000)).all()
    assert vocab.stable_hash(pa.array(["A1"]))[0] == 12510222629351566670  # fixed across versions and hosts
