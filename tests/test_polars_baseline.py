"""The polars baseline of benchmarks/prepare.py does the work of `eain prepare`: the same positives
per split, histories, negatives rules and output schema, so the benchmark compares like with like.

Checked against a plain-Python computation of DESIGN.md's rules (fast), and against `eain
prepare` itself on the same tiny generated dataset (slow: starts Ray).
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import sys
from collections import defaultdict
from pathlib import Path

import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from eain_dist.data.pipeline import SPLIT_COLUMNS
from eain_dist.data.synthetic import generate

BASELINE = Path(__file__).resolve().parents[1] / "benchmarks" / "polars_baseline.py"
MAX_HISTORY = 5
NEGATIVES = 2
SESSION_GAP = 2 * 86400
SPLITS = ("train", "valid", "test")


def load_baseline():
    spec = importlib.util.spec_from_file_location("polars_baseline", BASELINE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("baseline")
    summary = generate(str(folder / "input"), users=400, items=150, reviews=5000, files=2)
    return folder, summary


@pytest.fixture(scope="module")
def baseline(dataset):
    folder, summary = dataset
    module = load_baseline()
    settings = module.Settings(max_history=MAX_HISTORY, negatives=NEGATIVES, session_gap_s=SESSION_GAP)
    meta = module.prepare(summary["review_files"], summary["meta_files"], folder / "polars", settings,
                          log=lambda message: None)
    return folder / "polars", meta


def read_prepared(out: Path) -> tuple[dict, dict]:
    splits = {name: ds.dataset(out / name).to_table().to_pylist() for name in SPLITS}
    vocabs = {name: {r["index"]: r for r in ds.dataset(out / "vocab" / f"{name}.parquet").to_table().to_pylist()}
              for name in ("user", "item", "category")}
    return splits, vocabs


def expected_sequences(summary: dict) -> dict[str, list[tuple[int, str]]]:
    """Per kept user: (seconds, item) of the earliest review of each item by (time, input
    position), in that order."""
    first = {}
    position = 0
    for path in summary["review_files"]:
        with gzip.open(path, "rt") as handle:
            for line in handle:
                record = json.loads(line)
                key, value = (record["user_id"], record["parent_asin"]), (record["timestamp"] // 1000, position)
                first[key] = min(first.get(key, value), value)
                position += 1
    by_user = defaultdict(list)
    for (user, item), (ts, position) in first.items():
        by_user[user].append((ts, position, item))
    return {user: [(ts, item) for ts, _, item in sorted(seq)] for user, seq in by_user.items() if len(seq) >= 3}


def test_positives_per_split_follow_leave_last_out(dataset, baseline):
    _, summary = dataset
    out, meta = baseline
    splits, vocabs = read_prepared(out)
    sequences = expected_sequences(summary)
    expected = {"test": len(sequences), "valid": len(sequences),
                "train": sum(len(seq) - 3 for seq in sequences.values())}
    assert {name: sum(r["label"] == 1 for r in rows) for name, rows in splits.items()} == expected
    assert {vocabs["user"][i]["raw"] for i in vocabs["user"]} == set(sequences)
    assert meta["splits"] == {name: len(rows) for name, rows in splits.items()}


def item_categories(summary: dict) -> dict[str, str]:
    """The most specific category of each item's first metadata record."""
    categories = {}
    for path in summary["meta_files"]:
        with gzip.open(path, "rt") as handle:
            for line in handle:
                record = json.loads(line)
                path_ = [c for c in record["categories"] if c]
                categories.setdefault(record["parent_asin"], path_[-1] if path_ else record["main_category"])
    return categories


def test_histories_are_the_users_earlier_items_in_input_order(dataset, baseline):
    _, summary = dataset
    out, _ = baseline
    splits, vocabs = read_prepared(out)
    sequences, categories = expected_sequences(summary), item_categories(summary)
    for rows in splits.values():
        for r in rows:
            sequence = sequences[vocabs["user"][r["user"]]["raw"]]
            history = [vocabs["item"][i]["raw"] for i in r["hist_item"] if i]
            # A positive's own review; a negative's is one of the same second (its positive's).
            own = [k for k, (ts, item) in enumerate(sequence) if ts == r["timestamp"]
                   and (r["label"] == 0 or item == vocabs["item"][r["item"]]["raw"])]
            earlier = next((h for h in ([item for _, item in sequence[max(0, k - MAX_HISTORY):k]] for k in own)
                            if h == history), None)
            assert earlier is not None, r
            assert [vocabs["category"][c]["raw"] for c in r["hist_category"] if c] == [categories[i] for i in earlier]
            assert vocabs["category"][r["category"]]["raw"] == categories[vocabs["item"][r["item"]]["raw"]]
            assert len(r["hist_item"]) == len(r["hist_category"]) == MAX_HISTORY
            assert r["hist_len"] == len(earlier)


def test_negatives_and_skive_above(dataset, baseline):
    _, summary = dataset
    out, meta = baseline
    splits, vocabs = read_prepared(out)
    sequences = expected_sequences(summary)
    for name, rows in splits.items():
        by_request = defaultdict(list)
        for r in rows:
            by_request[r["request_id"]].append(r)
            if r["label"] == 0:
                own = {item for _, item in sequences[vocabs["user"][r["user"]]["raw"]]}
                assert vocabs["item"][r["item"]]["raw"] not in own
        for impressions in by_request.values():
            positions = sorted(r["position"] for r in impressions)
            if name == "train":  # negatives after the request's last positive are dropped
                last_positive = max(r["position"] for r in impressions if r["label"] == 1)
                assert positions == list(range(last_positive + 1))
            else:  # one positive with all its negatives
                assert positions == list(range(1 + NEGATIVES))
    counts = meta["counts"]
    kept = sum(r["label"] == 0 for rows in splits.values() for r in rows)
    assert kept == counts["negatives"]["drawn"] - counts["skive_above"]["negatives_dropped"]


def test_schema_is_the_prepared_datasets(baseline):
    out, _ = baseline
    for name in SPLITS:
        schema = pq.read_schema(next((out / name).glob("*.parquet")))
        assert tuple(schema.names) == SPLIT_COLUMNS
        types = {field.name: str(field.type) for field in schema}
        assert types["label"] == "float" and types["hist_len"] == types["position"] == "int32"
        assert types["hist_item"] == types["hist_category"] == "list<element: int64>"


@pytest.mark.slow
def test_same_positives_and_schema_as_eain_prepare(dataset, ray_local):
    """Without metadata: the join of item metadata is the slowest part of a tiny `eain prepare`
    (its categories are checked against the rules above)."""
    from eain_dist.config import load_config
    from eain_dist.data.pipeline import prepare

    folder, summary = dataset
    module = load_baseline()
    settings = module.Settings(max_history=MAX_HISTORY, negatives=NEGATIVES, session_gap_s=SESSION_GAP)
    polars_meta = module.prepare(summary["review_files"], [], folder / "polars-reviews-only", settings,
                                 log=lambda message: None)
    config = load_config(overrides=[
        f"data.source={folder / 'input' / 'reviews'}", "data.format=amazon2023", f"data.output={folder / 'eain'}",
        f"data.max_history={MAX_HISTORY}", "data.num_partitions=2", f"sampling.negatives={NEGATIVES}",
        f"sampling.session_gap_s={SESSION_GAP}"])
    eain_meta = prepare(config, log=lambda message: None).meta
    assert eain_meta["counts"]["split"] == polars_meta["counts"]["split"]  # positives per split
    assert eain_meta["tables"] == polars_meta["tables"]
    for name in SPLITS:
        assert ds.dataset(folder / "eain" / name).schema.remove_metadata() == \
            ds.dataset(folder / "polars-reviews-only" / name).schema.remove_metadata()

    def positives(root: Path) -> set:
        """Positives by raw ids (vocabulary ties may number items differently)."""
        splits, vocabs = read_prepared(root)
        return {(name, vocabs["user"][r["user"]]["raw"], vocabs["item"][r["item"]]["raw"], r["timestamp"],
                 r["hour"], r["weekday"], r["gap"], r["hist_len"], r["request_id"] % (1 << 24),
                 tuple(vocabs["item"][i]["raw"] if i else None for i in r["hist_item"]))
                for name, rows in splits.items() for r in rows if r["label"] == 1}

    assert positives(folder / "eain") == positives(folder / "polars-reviews-only")
