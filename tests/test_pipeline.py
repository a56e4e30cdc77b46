"""`eain prepare` checked against an independent plain-Python computation of DESIGN.md's rules."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import math
import random
from collections import defaultdict
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from eain_dist.config import load_config
from eain_dist.data.pipeline import prepare

MAX_HISTORY = 5
NEGATIVES = 2
SESSION_GAP = 2 * 86400


TIED_USERS = 60


def write_interactions(path: Path, seed: int = 3) -> list[tuple[str, str, int]]:
    """~3,400 reviews with same-second ties, repeated (user, item) pairs and short users, in
    random order (the rows' order in the file is their input position).

    `tied*` users review 6 items all at one second (as day-granular releases do), items drawn by
    popularity: which of them is the test positive must not depend on it.
    """
    rng = random.Random(seed)
    rows = []
    for u in range(300):
        n = rng.choice([1, 2, 3, 4, 8, 12, 20, 30])
        day0 = rng.randrange(16_000, 19_000)
        for _ in range(n):
            ts = (day0 + rng.randrange(0, 60)) * 86400 + rng.choice([0, 3600, 7200, 50_000])
            rows.append((f"user{u}", f"item{rng.randrange(0, 80 if u % 2 else 400)}", ts))
        if n >= 4:  # a repeated review of an item, later than the first: must be dropped
            user, item, ts = rows[-1]
            rows.append((user, item, ts + 86400 * 90))
    popular_first = [f"item{i}" for i in range(80)]
    for u in range(TIED_USERS):
        ts = rng.randrange(16_000, 19_000) * 86400
        items = []  # a list, not a set: a set's order changes with PYTHONHASHSEED, and so would the input
        while len(items) < 6:  # Zipf-like: item{i} with weight 1 / (i + 1)
            item = rng.choices(popular_first, weights=[1 / (i + 1) for i in range(80)])[0]
            items += [item] if item not in items else []
        rows += [(f"tied{u}", item, ts) for item in items]
    rng.shuffle(rows)
    with open(path, "w") as handle:
        handle.write("user_id\titem_id\ttime\n")
        for user, item, ts in rows:
            handle.write(f"{user}\t{item}\t{ts}\n")
    return rows


def expected_sequences(rows, kept=None):
    """Per user with >= 3 items: (timestamp, item) of the earliest review of each item by
    (timestamp, input position), in that order (DESIGN.md's user order). `kept`: (user, item)
    pairs to keep (a k-core)."""
    first = {}
    for position, (user, item, ts) in enumerate(rows):
        if kept is None or (user, item) in kept:
            first[(user, item)] = min(first.get((user, item), (ts, position)), (ts, position))
    by_user = defaultdict(list)
    for (user, item), (ts, position) in first.items():
        by_user[user].append((ts, position, item))
    return {u: [(ts, item) for ts, _, item in sorted(v)] for u, v in by_user.items() if len(v) >= 3}


def history_before(sequence, r, item_of, max_history=MAX_HISTORY):
    """The row's history as the user's order gives it: the items before the row's own review
    (a positive's, or for a negative the review of its positive: same timestamp, same history)."""
    hist = [item_of(i) for i in r["hist_item"] if i]
    candidates = [k for k, (ts, item) in enumerate(sequence) if ts == r["timestamp"]
                  and (r["label"] == 0 or item == item_of(r["item"]))]
    for k in candidates:
        if [item for _, item in sequence[max(0, k - max_history):k]] == hist:
            return hist
    return None


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, ray_local):
    folder = tmp_path_factory.mktemp("pipeline")
    rows = write_interactions(folder / "interactions.tsv")
    config = load_config(overrides=[
        f"data.source={folder / 'interactions.tsv'}", "data.format=interactions_tsv",
        f"data.output={folder / 'prepared'}", f"data.max_history={MAX_HISTORY}", "data.num_partitions=3",
        f"sampling.negatives={NEGATIVES}", f"sampling.session_gap_s={SESSION_GAP}", "sampling.skive_above=true",
    ])
    result = prepare(config, log=lambda message: None)
    out = folder / "prepared"
    splits = {name: pq.read_table(out / name).to_pylist() for name in ("train", "valid", "test")}
    vocabs = {name: {r["index"]: r for r in pq.read_table(out / "vocab" / f"{name}.parquet").to_pylist()}
              for name in ("user", "item")}
    return rows, result, splits, vocabs, out


def decode(vocab, index):
    return vocab[index]["raw"] if index else None


def test_histories_are_exactly_the_users_earlier_items_in_input_order(prepared):
    rows, _, splits, vocabs, _ = prepared
    sequences = expected_sequences(rows)
    checked = same_time_in_history = 0
    for split in splits.values():
        for r in split:
            sequence = sequences[decode(vocabs["user"], r["user"])]
            history = history_before(sequence, r, lambda i: decode(vocabs["item"], i))
            assert history is not None, r
            assert r["hist_item"][: MAX_HISTORY - len(history)] == [0] * (MAX_HISTORY - len(history))
            assert r["hist_len"] == len(history)
            same_time_in_history += r["label"] == 1 and any(
                ts == r["timestamp"] for ts, item in sequence if item in history)
            checked += 1
    assert checked > 3000
    assert same_time_in_history > 100  # same-second reviews earlier in the input are history


def test_training_rows_are_shuffled_not_grouped_by_user(prepared):
    """Built user by user in time order, the rows would reach SGD one user's history at a time."""
    _, _, _, _, out = prepared
    for part in sorted((out / "train").glob("*.parquet")):
        users = pq.read_table(part, columns=["user"])["user"].to_numpy()
        if len(users) < 200:
            continue
        same_as_previous = float((users[1:] == users[:-1]).mean())
        # Random order: about 1 / (users in the file) of neighbours share a user; grouped: most do.
        assert same_as_previous < 0.1, (part.name, same_as_previous)


def test_leave_last_out_split_in_input_order(prepared):
    rows, _, splits, vocabs, _ = prepared
    sequences = expected_sequences(rows)
    for name, position_from_end in (("test", 1), ("valid", 2)):
        positives = {decode(vocabs["user"], r["user"]): r for r in splits[name] if r["label"] == 1}
        assert set(positives) == set(sequences)
        for user, r in positives.items():
            ts, item = sequences[user][-position_from_end]
            assert (r["timestamp"], decode(vocabs["item"], r["item"])) == (ts, item)
    train_positives = sum(1 for r in splits["train"] if r["label"] == 1)
    assert train_positives == sum(len(seq) - 3 for seq in sequences.values())  # all but the first


def test_same_time_test_positives_are_the_last_input_records_not_the_least_popular(prepared):
    """Item indices are frequency ranks: ordering ties by them would make every tied user's test
    positive its least popular item. Input order carries no such signal."""
    rows, _, splits, vocabs, _ = prepared
    last_written = {}
    for user, item, _ in rows:
        last_written[user] = item
    index = {v["raw"]: i for i, v in vocabs["item"].items()}
    tests = {decode(vocabs["user"], r["user"]): r["item"] for r in splits["test"] if r["label"] == 1}
    tied = [u for u in tests if u.startswith("tied")]
    assert len(tied) == TIED_USERS
    assert all(decode(vocabs["item"], tests[u]) == last_written[u] for u in tied)
    items_of = defaultdict(set)
    for user, item, _ in rows:
        items_of[user].add(index[item])
    least_popular = sum(tests[u] == max(items_of[u]) for u in tied)
    assert least_popular <= TIED_USERS * 0.4  # 1 in 6 expected; ordering ties by index: all of them
    train = [r["item"] for r in splits["train"] if r["label"] == 1 and decode(vocabs["user"], r["user"]) in tied]
    assert sum(tests[u] for u in tied) / len(tied) < 1.3 * sum(train) / len(train)


def test_negatives_are_never_the_users_items(prepared):
    rows, _, splits, vocabs, _ = prepared
    sequences = expected_sequences(rows)
    negatives = [r for split in splits.values() for r in split if r["label"] == 0]
    assert negatives
    for r in negatives:
        user = decode(vocabs["user"], r["user"])
        assert decode(vocabs["item"], r["item"]) not in {item for _, item in sequences[user]}


def test_negatives_share_their_positives_context(prepared):
    _, _, splits, _, _ = prepared
    for split in splits.values():
        by_request = defaultdict(list)
        for r in split:
            by_request[r["request_id"]].append(r)
        for impressions in by_request.values():
            contexts = {(r["user"], r["timestamp"], tuple(r["hist_item"]), r["hour"], r["gap"])
                        for r in impressions}
            positives = {(r["user"], r["timestamp"], tuple(r["hist_item"]), r["hour"], r["gap"])
                         for r in impressions if r["label"] == 1}
            assert contexts == positives


def test_skive_above_keeps_exactly_the_impressions_up_to_the_last_positive(prepared):
    _, result, splits, _, _ = prepared
    by_request = defaultdict(list)
    for r in splits["train"]:
        by_request[r["request_id"]].append(r)
    multi = 0
    for impressions in by_request.values():
        positions = sorted(r["position"] for r in impressions)
        last_positive = max(r["position"] for r in impressions if r["label"] == 1)
        assert positions == list(range(last_positive + 1))
        multi += sum(r["label"] for r in impressions) > 1
    assert multi > 0  # sessions put several positives in one request
    # Valid / test keep every negative; training lost exactly the ones Skive-Above reported.
    counts = result.meta["counts"]
    kept = sum(1 for split in splits.values() for r in split if r["label"] == 0)
    assert kept == counts["negatives"]["drawn"] - counts["skive_above"]["negatives_dropped"]
    for name in ("valid", "test"):
        assert sum(1 for r in splits[name] if r["label"] == 0) == NEGATIVES * len(
            [r for r in splits[name] if r["label"] == 1])


def test_context_features_match_the_calendar(prepared):
    rows, _, splits, vocabs, _ = prepared
    sequences = expected_sequences(rows)
    for r in splits["train"][:500] + splits["test"]:
        moment = dt.datetime.fromtimestamp(r["timestamp"], dt.timezone.utc)
        assert (r["hour"], r["weekday"]) == (moment.hour, moment.weekday())
        time_of = dict((item, ts) for ts, item in sequences[decode(vocabs["user"], r["user"])])
        previous = [time_of[decode(vocabs["item"], i)] for i in r["hist_item"] if i][-1:]  # the history's last
        expected_gap = 0 if not previous else min(31, 1 + int(math.floor(math.log2(1 + r["timestamp"] - previous[0]))))
        assert r["gap"] == expected_gap


def test_vocabularies_are_frequency_ordered_and_complete(prepared):
    rows, _, _, vocabs, _ = prepared
    sequences = expected_sequences(rows)
    assert {v["raw"] for v in vocabs["user"].values()} == set(sequences)
    assert sorted(vocabs["user"]) == list(range(1, len(sequences) + 1))
    item_counts = defaultdict(int)
    for user, item, ts in {(u, i, None) for u, i, _ in rows}:
        item_counts[item] += 1  # distinct users per item, before the user filter
    counts = [vocabs["item"][i]["count"] for i in sorted(vocabs["item"])]
    assert counts == sorted(counts, reverse=True)
    assert {v["raw"]: v["count"] for v in vocabs["item"].values()} == dict(item_counts)


def test_meta_accounts_for_every_row(prepared):
    rows, result, splits, _, out = prepared
    meta = json.loads((out / "meta.json").read_text())
    counts = meta["counts"]
    assert counts["read"]["records"] == len(rows) and counts["read"]["rejects"] == 0
    deduped = len({(u, i) for u, i, _ in rows})
    assert counts["dedupe"]["duplicates"] == len(rows) - deduped
    assert counts["min_user_count"]["rows_dropped"] + sum(len(s) for s in expected_sequences(rows).values()) == deduped
    assert meta["splits"] == {name: len(split) for name, split in splits.items()}
    assert meta["tables"]["user"] == len(expected_sequences(rows)) + 1
    assert meta["max_history"] == MAX_HISTORY


def test_schema_matches_design(prepared):
    _, _, _, _, out = prepared
    schema = pq.read_schema(next((out / "train").glob("*.parquet")))
    assert schema.names == ["label", "user", "item", "category", "hour", "weekday", "gap", "hist_item",
                            "hist_category", "hist_len", "request_id", "position", "timestamp"]
    assert str(schema.field("label").type) == "float" and str(schema.field("hist_len").type) == "int32"
    for column in ("hist_item", "hist_category"):
        assert pa.types.is_list(schema.field(column).type) and schema.field(column).type.value_type == pa.int64()


def plain_k_core(rows, min_user: int, min_item: int):
    pairs = {(u, i) for u, i, _ in rows}
    while True:
        users, items = defaultdict(int), defaultdict(int)
        for u, i in pairs:
            users[u] += 1
            items[i] += 1
        kept = {(u, i) for u, i in pairs if users[u] >= min_user and items[i] >= min_item}
        if kept == pairs:
            return pairs
        pairs = kept


@pytest.fixture(scope="module")
def prepared_hashed(tmp_path_factory, ray_local):
    """Two user buckets: every user shares a table row with about half of the others."""
    folder = tmp_path_factory.mktemp("hashed")
    rows = write_interactions(folder / "interactions.tsv", seed=5)
    config = load_config(overrides=[
        f"data.source={folder / 'interactions.tsv'}", "data.format=interactions_tsv",
        f"data.output={folder / 'prepared'}", f"data.max_history={MAX_HISTORY}", "data.num_partitions=2",
        "data.vocab=hashed", "data.user_buckets=2", "data.item_buckets=1000003",
        "data.k_core=true", "data.min_user_count=4", "data.min_item_count=3",
        "sampling.negatives=3", "sampling.strategy=popularity", "data.history_ties=strict_time",
    ])
    result = prepare(config, log=lambda message: None)
    splits = {name: pq.read_table(folder / "prepared" / name).to_pylist() for name in ("train", "valid", "test")}
    return rows, result, splits, config


def test_hashed_users_sharing_a_bucket_keep_their_own_timelines(prepared_hashed):
    """user_buckets=2: all users share one row, but each keeps its own history, split and
    negatives (grouping by the hashed id merged their timelines: histories held other users'
    items, and one test positive remained per bucket). A request id starts with its user's rank
    (rank << REQUEST_SHIFT): the rows of one rank must be exactly one user's positives, each with
    that user's own history, and its negatives never that user's items. (Row by row, two users
    with the same day and item and no history would be ambiguous.)"""
    from eain_dist.data.stages import REQUEST_SHIFT
    from eain_dist.data.vocab import hashed_index

    rows, result, splits, _ = prepared_hashed
    core = plain_k_core(rows, min_user=4, min_item=3)
    items = sorted({i for _, i in core})
    item_index = dict(zip(items, hashed_index(pa.array(items), 1000003)))
    sequences = {u: [(ts, item_index[i]) for ts, i in seq] for u, seq in expected_sequences(rows, kept=core).items()}
    assert {r["user"] for split in splits.values() for r in split} == {1}

    def strict_history(seq, ts):  # strict_time: the items of strictly earlier timestamps
        return tuple(i for t, i in seq if t < ts)[-MAX_HISTORY:]

    def expected_positives(seq):  # valid and test always; a training row only with a history
        return sorted((name, ts, i, strict_history(seq, ts)) for k, (ts, i) in enumerate(seq)
                      for name in ["test" if k == len(seq) - 1 else "valid" if k == len(seq) - 2 else "train"]
                      if name != "train" or strict_history(seq, ts))

    user_of_positives = {tuple(expected_positives(seq)): u for u, seq in sequences.items()}
    assert len(user_of_positives) == len(sequences)  # no two users with the same rows
    by_rank = defaultdict(list)
    for name, split in splits.items():
        for r in split:
            by_rank[r["request_id"] >> REQUEST_SHIFT].append((name, r))
    owner = {}
    for rank, group in by_rank.items():
        positives = sorted((name, r["timestamp"], r["item"], tuple(i for i in r["hist_item"] if i))
                           for name, r in group if r["label"] == 1)
        owner[rank] = user_of_positives.get(tuple(positives))
        assert owner[rank], positives  # no user has these rows: timelines were merged or split
    assert sorted(owner.values()) == sorted(sequences)  # one rank per user, each user's rows under its rank
    for rank, group in by_rank.items():
        own_items = {i for _, i in sequences[owner[rank]]}
        assert all(r["item"] not in own_items for _, r in group if r["label"] == 0)
    # Popularity sampling: the most reviewed items are drawn as negatives far more often.
    popularity = defaultdict(int)
    for _, i in core:
        popularity[item_index[i]] += 1
    drawn = defaultdict(int)
    for split in splits.values():
        for r in split:
            if r["label"] == 0:
                drawn[r["item"]] += 1
    ranked = sorted(popularity, key=popularity.get)
    quarter = len(ranked) // 4
    assert sum(drawn[i] for i in ranked[-quarter:]) > 3 * sum(drawn[i] for i in ranked[:quarter])
    assert result.meta["counts"]["k_core"]["rounds"] >= 1


def test_threads_in_process_write_what_ray_tasks_write(prepared_hashed, tmp_path):
    """The same k-core, hashed, popularity-sampled preparation on threads in this process: the
    same rows and counts as on Ray's tasks (every random draw is seeded by its partition)."""
    import dataclasses

    _, result, _, config = prepared_hashed
    data = dataclasses.replace(config.data, output=str(tmp_path / "threads"), executor="threads")
    threads = prepare(dataclasses.replace(config, data=data), log=lambda message: None)
    assert (result.meta["executor"], threads.meta["executor"]) == ("ray", "threads")
    assert threads.meta["counts"] == result.meta["counts"]
    assert splits_of(tmp_path / "threads") == splits_of(Path(config.data.output))


def splits_of(out: Path) -> dict[str, list[tuple]]:
    tables = {name: pq.read_table(out / name) for name in ("train", "valid", "test")}
    return {name: sorted(zip(*(t[c].to_pylist() for c in t.column_names))) for name, t in tables.items()}


def test_large_files_read_in_parts_give_the_same_dataset(tmp_path, ray_local):
    """A plain file cut into byte ranges and a gzip file inflated once and parsed in chunks by many
    tasks give exactly the rows of reading each file whole, on Ray tasks and on threads in process
    (data.executor); progress lines come meanwhile."""
    from eain_dist.data.synthetic import generate

    summary = generate(str(tmp_path / "input"), users=300, items=150, reviews=4000, files=2)
    plain = tmp_path / "input" / "reviews" / "part-00000.jsonl"
    with gzip.open(summary["review_files"][0], "rb") as source:
        plain.write_bytes(source.read())  # one plain file (split in ranges), one gzip file (streamed)
    Path(summary["review_files"][0]).unlink()
    results, lines = {}, []
    for name, part_bytes, executor in (("whole", 1 << 28, "ray"), ("parts", 40_000, "ray"),
                                       ("threads", 40_000, "threads")):
        config = load_config(overrides=[
            f"data.source={tmp_path / 'input' / 'reviews'}", f"data.meta={tmp_path / 'input' / 'meta'}",
            f"data.output={tmp_path / name}", "data.num_partitions=3", f"data.part_bytes={part_bytes}",
            f"data.max_history={MAX_HISTORY}", f"sampling.negatives={NEGATIVES}", f"data.executor={executor}"])
        log = lines if name == "parts" else (lambda message: None)
        results[name] = prepare(config, log=getattr(log, "append", log), progress_every_s=0).meta
    whole, parts = results["whole"]["counts"]["read"], results["parts"]["counts"]["read"]
    assert whole["records"] == parts["records"] == 4000 and whole["rejects"] == parts["rejects"] == 0
    plain_ranges = -(-plain.stat().st_size // 40_000)
    assert whole["tasks"] == 2 and parts["tasks"] >= plain_ranges + 2  # ranges + the gzip file's chunks
    assert splits_of(tmp_path / "parts") == splits_of(tmp_path / "whole")
    assert splits_of(tmp_path / "threads") == splits_of(tmp_path / "whole")
    assert results["threads"]["counts"] == results["parts"]["counts"]
    assert (results["threads"]["executor"], results["parts"]["executor"]) == ("threads", "ray")
    assert any("tasks done" in line for line in lines)  # progress while stages run
    read_line = next(line for line in lines if line.startswith("prepare: read 4,000 records"))
    assert read_line.endswith(" rows/s)")  # every stage line: seconds and rows per second
