"""How Ray Train deals the splits out: equal shares, every row once, a new file order each epoch."""

from __future__ import annotations

import threading

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from eain_dist.config import load_config
from eain_dist.train.data import EqualSharesDataConfig, datasets, padding_rows, without_padding

pytestmark = pytest.mark.slow


def write_split(folder, rows_per_file: list[int]) -> dict:
    """A train split of len(rows_per_file) files; `request_id` numbers the rows, `user` the file."""
    (folder / "train").mkdir(parents=True)
    start = 0
    for number, rows in enumerate(rows_per_file):
        ids = np.arange(start, start + rows)
        pq.write_table(pa.table({"label": np.float32(ids % 2), "user": np.full(rows, number),
                                 "request_id": ids}), folder / "train" / f"part-{number}.parquet")
        start += rows
    return {"splits": {"train": start}}


def shares(prepared, meta: dict, workers: int, epochs: int = 2) -> list[list[np.ndarray]]:
    """The request_ids each rank reads per epoch, ranks consuming at once as the trainer's do
    (rank 0 through the default 100k-row shuffle buffer, which drains blocks fast)."""
    config = load_config(overrides=[f"data.output={prepared}", f"train.num_workers={workers}"])
    train = datasets(config, meta, ("train",))
    splits = EqualSharesDataConfig().configure(train, world_size=workers, worker_handles=None, worker_node_ids=None)
    seen = []
    for _ in range(epochs):
        ids = [[] for _ in range(workers)]

        def consume(rank: int) -> None:
            buffer = {"local_shuffle_buffer_size": 100_000} if rank == 0 else {}
            for batch in splits[rank]["train"].iter_batches(batch_size=256, batch_format="pyarrow", **buffer):
                ids[rank].append(without_padding(batch)["request_id"].to_numpy())

        threads = [threading.Thread(target=consume, args=(rank,)) for rank in range(workers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        seen.append([np.concatenate(parts) if parts else np.zeros(0, np.int64) for parts in ids])
    return seen


@pytest.mark.parametrize("rows_per_file", [[3001, 2950, 3100, 2990], [12_001]], ids=["4 files", "1 file"])
def test_two_workers_get_equal_shares_of_every_row(tmp_path, ray_local, rows_per_file):
    meta = write_split(tmp_path, rows_per_file)  # an odd number of rows: one padding row is added
    total = meta["splits"]["train"]
    for epoch in shares(tmp_path, meta, workers=2):
        assert [abs(len(rank) / total - 0.5) <= 0.05 for rank in epoch] == [True, True]
        everything = np.concatenate(epoch)
        assert len(everything) == total and np.array_equal(np.sort(everything), np.arange(total))


def test_the_file_order_changes_every_epoch(tmp_path, ray_local):
    meta = write_split(tmp_path, [200] * 6)

    def file_orders(shuffle: str) -> list[list[int]]:
        config = load_config(overrides=[f"data.output={tmp_path}", f"train.shuffle={shuffle}"])
        train = datasets(config, meta, ("train",))["train"]
        train.context.execution_options.preserve_order = True  # only the plan's order, not task timing
        orders = []
        for _ in range(3):
            users = np.concatenate([b["user"].to_numpy() for b in train.iter_batches(batch_format="pyarrow")])
            orders.append([int(u) for u in users[np.r_[True, users[1:] != users[:-1]]]])
        return orders

    shuffled = file_orders("files")
    assert all(sorted(order) == list(range(6)) for order in shuffled)
    assert len({tuple(order) for order in shuffled}) > 1
    fixed = file_orders("none")
    assert fixed == [list(range(6))] * 3


def test_padding_rows_are_removed_and_nothing_else():
    schema = pa.schema([("label", pa.float32()), ("hist_item", pa.list_(pa.int64()))])
    real = pa.table({"label": np.float32([1, 0]), "hist_item": [[1, 2], [3]]}, schema=schema)
    batch = pa.concat_tables([real, padding_rows(schema, 3)])
    assert without_padding(batch).equals(real)
    assert without_padding(real) is real
