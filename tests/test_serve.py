"""Using a trained run: `eain score`, `eain recommend`, `eain export` and `eain_dist.load_model`.

One small run (generated reviews, 1 epoch, 2 workers: its checkpoint has two shard files) is
scored, ranked and exported; every figure is checked against an independent computation: the
run's own metrics.json, the trainer's worker restoring the same checkpoint, a brute-force
ranking written with pandas, and the vocabulary files.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from eain_dist.cli import main
from eain_dist.config import load_config
from eain_dist.data.loader import to_tensors
from eain_dist.train import metrics
from test_s3 import BUCKET, s3_endpoint  # noqa: F401  (the moto server fixture)
from wandb_records import read_artifacts

pytestmark = pytest.mark.slow
MAX_HISTORY = 8


def eain(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def trained(tmp_path_factory, ray_local):
    """A prepared dataset, a 1-epoch run on 2 workers, and its export."""
    from eain_dist.data.pipeline import prepare
    from eain_dist.data.synthetic import generate
    from eain_dist.serve.export import export
    from eain_dist.train.trainer import train

    folder = tmp_path_factory.mktemp("serve")
    generate(str(folder / "raw"), users=250, items=120, reviews=3000, categories=5, seed=5, files=1)
    overrides = [f"data.source={folder / 'raw/reviews'}", f"data.meta={folder / 'raw/meta'}",
                 f"data.output={folder / 'prepared'}", f"data.max_history={MAX_HISTORY}", "data.format=amazon2023",
                 f"train.run_dir={folder / 'run'}", "train.epochs=1", "train.num_workers=2", "train.batch_size=256",
                 "model.mlp_hidden=[32]", "wandb.mode=disabled"]
    prepare(load_config(overrides=overrides), log=lambda message: None)
    train(load_config(overrides=overrides), log=lambda message: None)
    export(str(folder / "run"), str(folder / "exported"), log=lambda message: None)
    return folder


def vocabulary(folder: Path, table: str) -> dict[str, int]:
    ids = pq.read_table(folder / "prepared" / "vocab" / f"{table}.parquet")
    return dict(zip(ids["raw"].to_pylist(), ids["index"].to_pylist()))


def test_score_reproduces_the_runs_test_metrics_with_raw_ids(trained, capsys):
    output = trained / "scores"
    code, out, err = eain(capsys, "score", "--run", trained / "run", "--input", trained / "prepared/test",
                          "--output", output)
    assert code == 0, err
    scored = pq.read_table(output)
    test = pq.read_table(trained / "prepared/test")
    assert scored.num_rows == test.num_rows and f"scored {test.num_rows:,} rows" in out
    assert scored.column_names == ["user", "item", "score", "logit", "label", "request_id", "position", "timestamp"]
    # The AUC, gAUC and logloss of the scored file are the run's test metrics (metrics.json).
    expected = json.loads((trained / "run/metrics.json").read_text())["test"]
    users = np.unique(scored["user"].to_numpy(zero_copy_only=False), return_inverse=True)[1]
    found = metrics.evaluate(scored["logit"].to_numpy(), scored["label"].to_numpy(), users)  # ranked by logit
    assert found["auc"] == pytest.approx(expected["auc"], abs=1e-9)
    assert found["gauc"] == pytest.approx(expected["gauc"], abs=1e-9)
    assert found["logloss"] == pytest.approx(expected["logloss"], abs=1e-7)
    np.testing.assert_allclose(scored["score"].to_numpy(), 1 / (1 + np.exp(-scored["logit"].to_numpy())), rtol=1e-6)
    # Raw ids are the vocabulary's ids of each row's indices (rows matched by request and position).
    rows = scored.to_pandas().merge(test.to_pandas(), on=["request_id", "position"], suffixes=("_raw", ""))
    assert len(rows) == test.num_rows
    assert (rows["user_raw"].map(vocabulary(trained, "user")) == rows["user"]).all()
    assert (rows["item_raw"].map(vocabulary(trained, "item")) == rows["item"]).all()
    summary = json.loads((output / "_SUCCESS").read_text())
    assert summary["rows"] == test.num_rows and summary["unknown_ids"] == {}


def _trainer_logits(trained: Path, table: pa.Table) -> np.ndarray:
    """The trainer's own path (`eain evaluate`'s worker): sharded tables, checkpoint.load, forward."""
    import torch.distributed as dist

    from eain_dist.distributed import checkpoint
    from eain_dist.train import worker as workers
    from eain_dist.train.trainer import read_meta

    config = load_config(trained / "run/config.yaml")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        worker = workers.build_worker(config, read_meta(config), torch.device("cpu"))
        checkpoint.load((trained / "run/checkpoints/BEST").read_text().strip(), model=worker.model,
                        dense_optimizer=None, collection=worker.collection)
        worker.ddp.eval()
        with torch.no_grad():
            return worker.model(to_tensors(table, MAX_HISTORY)).logits.numpy()
    finally:
        dist.destroy_process_group()


LOAD_WITHOUT_RAY = """
import json, sys
import numpy as np, pyarrow.parquet as pq, torch
import eain_dist
from eain_dist.data.loader import to_tensors
model = eain_dist.load_model(sys.argv[1])
meta = json.loads(open(sys.argv[1] + "/meta.json").read())
with torch.no_grad():
    logits = model(to_tensors(pq.read_table(sys.argv[2]), meta["max_history"])).logits
np.save(sys.argv[3], logits.numpy())
assert isinstance(model, torch.nn.Module) and not torch.distributed.is_initialized()
assert not any(name == "ray" or name.startswith("ray.") for name in sys.modules), "load_model imported Ray"
"""


def test_exported_model_scores_equal_the_trainers(trained, tmp_path):
    exported = trained / "exported"
    assert sorted(p.name for p in exported.iterdir()) == ["_SUCCESS", "config.yaml", "export.json", "meta.json",
                                                        "model.safetensors", "vocab"]
    subprocess.run([sys.executable, "-c", LOAD_WITHOUT_RAY, str(exported), str(trained / "prepared/test"),
                    str(tmp_path / "logits.npy")], check=True)
    exported_logits = np.load(tmp_path / "logits.npy")
    test = pq.read_table(trained / "prepared/test")
    np.testing.assert_allclose(exported_logits, _trainer_logits(trained, test), atol=1e-6, rtol=0)
    expected_auc = json.loads((trained / "run/metrics.json").read_text())["test"]["auc"]
    found = metrics.evaluate(exported_logits, test["label"].to_numpy(), test["user"].to_numpy())
    assert found["auc"] == pytest.approx(expected_auc, abs=1e-9)
    # The vocabularies travel with the model.
    assert vocabulary(trained, "item") == dict(zip(*pq.read_table(exported / "vocab/item.parquet")
                                                   .select(["raw", "index"]).to_pydict().values()))


def test_gathered_tables_of_a_two_worker_checkpoint_reproduce_its_predictions(tmp_path):
    """Shards written by 2 ranks (each its rows r % 2) become full tables; a lost shard is an error."""
    import test_training

    from eain_dist.data.errors import InputError
    from eain_dist.serve.tables import gather_model_state, local_model

    written = test_training.run(2, save_dir=str(tmp_path))
    config, meta = test_training.config(), test_training.META
    model = local_model(config, meta, gather_model_state(str(tmp_path), config, meta))
    batch = to_tensors(test_training.global_batches(1, 40)[0], test_training.MAX_HISTORY)
    with torch.no_grad():
        predictions = torch.sigmoid(model(batch).logits).numpy()
    np.testing.assert_allclose(predictions, written[0]["predictions"], rtol=1e-6)
    (tmp_path / "shards-rank=1.pt").unlink()
    with pytest.raises(InputError, match="a shard file is missing"):
        gather_model_state(str(tmp_path), config, meta)


def _raw_rows(trained: Path, test: pa.Table) -> pa.Table:
    """The test split as a user would write it: raw ids, variable-length raw histories."""
    raw = {table: {index: raw for raw, index in vocabulary(trained, table).items()} for table in
           ("user", "item", "category")}
    frame = test.to_pandas()
    histories = [list(h[MAX_HISTORY - n:]) if n else [] for h, n in zip(frame["hist_item"], frame["hist_len"])]
    categories = [list(h[MAX_HISTORY - n:]) if n else [] for h, n in zip(frame["hist_category"], frame["hist_len"])]
    return pa.table({
        "user": [raw["user"][u] for u in frame["user"]],
        "item": [raw["item"][i] for i in frame["item"]],
        "category": [raw["category"].get(c) for c in frame["category"]],
        "hour": frame["hour"], "weekday": frame["weekday"], "gap": frame["gap"],
        "hist_item": [[raw["item"][i] for i in h] for h in histories],
        "hist_category": [[raw["category"].get(c) for c in h] for h in categories],
        "request_id": frame["request_id"], "position": frame["position"], "my_key": np.arange(len(frame)),
    })


def test_raw_ids_score_like_indices_and_write_to_s3(trained, capsys, s3_endpoint):  # noqa: F811
    import s3fs

    test = pq.read_table(trained / "prepared/test")
    raw = _raw_rows(trained, test)
    unknown = raw.slice(0, 1).set_column(1, "item", pa.array(["NOT-AN-ITEM"]))
    unknown = unknown.set_column(unknown.schema.get_field_index("my_key"), "my_key", pa.array([len(test)]))
    pq.write_table(pa.concat_tables([raw, unknown]), trained / "raw-test.parquet")
    fs = s3fs.S3FileSystem(endpoint_url=s3_endpoint)
    fs.mkdir(BUCKET)
    code, out, err = eain(capsys, "score", "--run", trained / "run", "--input", trained / "raw-test.parquet",
                          "--output", f"s3://{BUCKET}/scores", "--set", f"data.s3.endpoint_url={s3_endpoint}")
    assert code == 0, err
    assert "unknown ids (scored as 0): item 1" in out
    assert json.loads(fs.cat(f"{BUCKET}/scores/_SUCCESS"))["unknown_ids"] == {"item": 1}
    scored = pq.read_table(f"{BUCKET}/scores", filesystem=pa.fs.PyFileSystem(pa.fs.FSSpecHandler(fs))).to_pandas()
    assert list(scored.columns) == ["user", "item", "score", "logit", "request_id", "position", "my_key"]
    assert (scored["my_key"] == len(test)).sum() == 1  # the unknown item's row is scored too (as item 0)
    by_index = pq.read_table(trained / "scores").to_pandas()
    same = scored[scored["my_key"] < len(test)].merge(by_index, on=["request_id", "position"])
    assert len(same) == test.num_rows and (same["item_x"] == same["item_y"]).all()
    np.testing.assert_allclose(same["logit_x"], same["logit_y"], atol=1e-6)


@pytest.fixture(scope="module")
def recommended_to_all(trained):
    """`eain recommend --all --top-k 5 --candidates 30`: the rankings and what it printed."""
    from eain_dist.serve.recommend import recommend

    printed = []
    overrides = ["serve.top_k=5", "serve.candidates=30"]
    result = recommend(str(trained / "run"), None, str(trained / "recommendations"), overrides, log=printed.append)
    assert result.pairs_per_s > 0 and result.cold_users == 0
    return pq.read_table(trained / "recommendations").to_pandas(), result


def test_recommend_equals_a_brute_force_ranking(trained, recommended_to_all):
    ranked, result = recommended_to_all
    users = vocabulary(trained, "user")
    assert set(ranked["user"]) == set(users) and (ranked.groupby("user").size() == 5).all()
    assert result.users == len(users) and result.pairs == 30 * len(users)
    model = __import__("eain_dist").load_model(trained / "exported")
    expected = BruteForce(trained / "prepared", model, candidates=30, k=5)
    items = vocabulary(trained, "item")
    for raw_user in sorted(users)[:4]:
        mine = ranked[ranked["user"] == raw_user].sort_values("rank")
        best_items, best_scores = expected.top_k(users[raw_user])
        assert [items[i] for i in mine["item"]] == best_items
        np.testing.assert_allclose(mine["score"], best_scores, rtol=1e-5)
        assert not set(best_items) & expected.reviewed[users[raw_user]]


def test_recommend_for_listed_users_ranks_unknown_ones_too(trained, recommended_to_all, capsys):
    known = sorted(vocabulary(trained, "user"))[0]
    (trained / "users.txt").write_text(f"{known}\nSOMEBODY-NEW\n{known}\n")
    code, out, err = eain(capsys, "recommend", "--run", trained / "run", "--users", trained / "users.txt",
                          "--top-k", 3, "--candidates", 30, "--output", trained / "listed")
    assert code == 0, err
    ranked = pq.read_table(trained / "listed").to_pandas()
    assert sorted(ranked["user"].unique()) == sorted([known, "SOMEBODY-NEW"]) and len(ranked) == 6
    assert "users without a history (got the most popular items): 1" in out
    # The listed user gets the first 3 of what --all ranked for them (same candidates, same model).
    everyone, _ = recommended_to_all
    then = everyone[everyone["user"] == known].sort_values("rank")
    assert list(ranked[ranked["user"] == known].sort_values("rank")["item"]) == list(then["item"])[:3]


class BruteForce:
    """The recommendation rules of DESIGN (eain_dist/serve/recommend.py's docstring), in pandas."""

    def __init__(self, prepared: Path, model, candidates: int, k: int) -> None:
        frame = pd.concat([pq.read_table(prepared / split).to_pandas() for split in ("train", "valid", "test")])
        self.positives = frame[frame["label"] == 1]
        self.model, self.candidates, self.k = model, candidates, k
        self.reviewed: dict[int, set[int]] = {}
        self.category: dict[int, int] = {}
        for row in self.positives.itertuples():
            real = range(MAX_HISTORY - row.hist_len, MAX_HISTORY)
            self.reviewed.setdefault(row.user, set()).update([row.item, *(row.hist_item[j] for j in real)])
            self.category.update({row.item: row.category, **{row.hist_item[j]: row.hist_category[j] for j in real}})
        popularity = Counter(item for items in self.reviewed.values() for item in items)
        self.popular = sorted(popularity, key=lambda item: (-popularity[item], item))
        self.at = int(self.positives["timestamp"].max())

    def top_k(self, user: int) -> tuple[list[int], list[float]]:
        rows = self.positives[self.positives["user"] == user]
        latest = rows.sort_values(["timestamp", "hist_len"]).iloc[-1]
        tied = rows[(rows["timestamp"] == latest["timestamp"]) & (rows["hist_len"] == latest["hist_len"])]
        real = slice(MAX_HISTORY - latest["hist_len"], MAX_HISTORY)
        history = [*latest["hist_item"][real], *sorted(tied["item"])][-MAX_HISTORY:]
        categories = [self.category[i] for i in history]
        candidates = [i for i in self.popular if i not in self.reviewed[user]][: self.candidates]
        logits = self._logits(user, candidates, history, categories, int(latest["timestamp"]))
        order = sorted(range(len(candidates)), key=lambda j: (-logits[j], j))[: self.k]
        return [candidates[j] for j in order], [1 / (1 + np.exp(-float(logits[j]))) for j in order]

    def _logits(self, user, candidates, history, categories, last_time) -> np.ndarray:
        from eain_dist.data import context

        n, pad = len(candidates), [0] * (MAX_HISTORY - len(history))
        table = pa.table({
            "label": np.zeros(n, np.float32), "user": [user] * n, "item": candidates,
            "category": [self.category[i] for i in candidates],
            "hour": [int(context.hour_of_day(self.at))] * n, "weekday": [int(context.day_of_week(self.at))] * n,
            "gap": [int(context.gap_bucket(np.array([self.at - last_time]), np.array([True]))[0])] * n,
            "hist_item": [pad + history] * n, "hist_category": [pad + categories] * n,
            "hist_len": pa.array([len(history)] * n, pa.int32()), "request_id": [0] * n,
            "position": pa.array([0] * n, pa.int32()), "timestamp": [self.at] * n})
        with torch.no_grad():
            return self.model(to_tensors(table, MAX_HISTORY)).logits.numpy()


# A line Ray forwards from one of its worker processes, e.g. "\x1b[36m(MapWorker(...) pid=123)\x1b[0m ...":
# Ray prints them on the driver's stderr whenever they arrive, also from earlier commands.
RAY_WORKER_LINE = re.compile(r"^(\x1b\[\d+m)?\(.*pid=\d+")


def _one_line_failure(code: int, err: str, *words: str) -> None:
    assert code == 2
    own = [line for line in err.strip().splitlines() if not RAY_WORKER_LINE.match(line)]
    assert len(own) == 1, err
    for word in words:
        assert word in own[0], err


def test_bad_input_fails_in_one_line_and_leaves_nothing_done(trained, tmp_path, capsys):
    run = trained / "run"
    # A run without checkpoints.
    (tmp_path / "unfinished").mkdir()
    shutil.copy(run / "config.yaml", tmp_path / "unfinished/config.yaml")
    code, _, err = eain(capsys, "score", "--run", tmp_path / "unfinished", "--input", trained / "prepared/test")
    _one_line_failure(code, err, "checkpoints/BEST")
    code, _, err = eain(capsys, "export", "--run", tmp_path / "unfinished", "--out", tmp_path / "model")
    _one_line_failure(code, err, "checkpoints/BEST")
    assert not (tmp_path / "model").exists()
    # An input missing a column the model needs.
    pq.write_table(pq.read_table(trained / "prepared/test").drop_columns(["hist_item"]), tmp_path / "partial.parquet")
    code, _, err = eain(capsys, "score", "--run", run, "--input", tmp_path / "partial.parquet",
                        "--output", tmp_path / "out")
    _one_line_failure(code, err, "'hist_item'", "partial.parquet")
    # Indices beyond the run's tables: found by an actor, reported in one line, nothing written.
    big = pq.read_table(trained / "prepared/test")
    big = big.set_column(big.schema.get_field_index("item"), "item", pa.array(big["item"].to_numpy() + 10_000))
    pq.write_table(big, tmp_path / "big.parquet")
    code, _, err = eain(capsys, "score", "--run", run, "--input", tmp_path / "big.parquet",
                        "--output", tmp_path / "out")
    _one_line_failure(code, err, "'item'", "not a row of the run's item table")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.staging-*"))
    # Raw ids of another dataset: mostly unknown.
    foreign = _raw_rows(trained, pq.read_table(trained / "prepared/test"))
    foreign = foreign.set_column(1, "item", pa.array([f"OTHER-{i}" for i in range(foreign.num_rows)]))
    pq.write_table(foreign, tmp_path / "foreign.parquet")
    code, _, err = eain(capsys, "score", "--run", run, "--input", tmp_path / "foreign.parquet",
                        "--output", tmp_path / "out")
    _one_line_failure(code, err, "item ids (100%) are not in the run's vocabulary", "nothing was written")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.staging-*"))
    # An output folder that is not an earlier eain output is never replaced.
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine/notes.txt").write_text("keep me")
    code, _, err = eain(capsys, "score", "--run", run, "--input", trained / "prepared/test",
                        "--output", tmp_path / "mine")
    _one_line_failure(code, err, "not a finished eain output")
    assert (tmp_path / "mine/notes.txt").read_text() == "keep me"


def test_a_vocabulary_of_another_dataset_is_refused(trained, tmp_path, capsys):
    run = trained / "run"
    # The run's prepared dataset re-prepared from other data: its tables no longer fit the checkpoint.
    other = tmp_path / "other"
    shutil.copytree(trained / "prepared", other)
    meta = json.loads((other / "meta.json").read_text())
    meta["tables"]["item"] += 7
    meta["sources"]["fingerprint"] = "another dataset"
    (other / "meta.json").write_text(json.dumps(meta))
    code, _, err = eain(capsys, "export", "--run", run, "--out", tmp_path / "model", "--set", f"data.output={other}")
    _one_line_failure(code, err, "re-prepared from other data")
    # A split of another prepared dataset as the input: its indices mean other ids.
    code, _, err = eain(capsys, "score", "--run", run, "--input", other / "test", "--output", tmp_path / "out")
    _one_line_failure(code, err, "made from other data than the run's")
    # A vocabulary file that does not number the run's table.
    shutil.rmtree(other)
    shutil.copytree(trained / "prepared", other)
    ids = pq.read_table(other / "vocab/category.parquet")
    pq.write_table(ids.slice(0, ids.num_rows - 1), other / "vocab/category.parquet")
    code, _, err = eain(capsys, "export", "--run", run, "--out", tmp_path / "model", "--set", f"data.output={other}")
    _one_line_failure(code, err, "vocab/category.parquet", "belongs to another dataset")
    assert not (tmp_path / "model").exists() and not list(tmp_path.glob(".model.staging-*"))


def test_export_is_logged_as_a_wandb_model_artifact(trained, tmp_path):
    # A fresh process, as a user runs it (W&B's service in the test process would outlive the session).
    environment = {**os.environ, "WANDB_MODE": "offline"}
    done = subprocess.run([Path(sys.executable).parent / "eain", "export", "--run", trained / "run", "--out",
                           tmp_path / "model", "--set", "wandb.mode=auto"], env=environment, capture_output=True,
                          text=True, check=True)
    assert "logged to W&B as model artifact" in done.stdout
    run_files = sorted((trained / "run/wandb").glob("offline-run-*/run-*.wandb"))
    artifacts = [a for path in run_files for a in read_artifacts(path)]
    assert [a["type"] for a in artifacts] == ["model"]
    assert {"model.safetensors", "config.yaml", "meta.json", "vocab/item.parquet"} <= set(artifacts[0]["files"])
