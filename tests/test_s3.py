"""S3 round trip against a real S3-protocol server (moto's server mode) on 127.0.0.1.

Raw reviews are read from s3:// and the prepared dataset is written to s3://, through s3fs and
pyarrow exactly as on AWS; nothing is patched. The result must equal a local run's.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pyarrow.parquet as pq
import pytest

from eain_dist.config import load_config
from eain_dist.data.pipeline import prepare
from eain_dist.data.synthetic import generate

pytestmark = pytest.mark.slow
BUCKET = "eain-test"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint():
    port = _free_port()
    moto = shutil.which("moto_server") or f"{sys.prefix}/bin/moto_server"
    server = subprocess.Popen([moto, "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(endpoint, server)
        yield endpoint
    finally:
        server.terminate()
        server.wait(timeout=30)


def _wait_until_up(endpoint: str, server: subprocess.Popen) -> None:
    deadline = time.time() + 60
    while time.time() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"moto_server exited with {server.returncode}")
        try:
            urllib.request.urlopen(endpoint, timeout=2)
            return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError("moto_server did not start within 60 s")


def _config(source, meta, output, endpoint=None, executor="auto"):
    overrides = [f"data.source={source}", f"data.meta={meta}", f"data.output={output}",
                 "data.format=amazon2023", "data.max_history=10", "data.num_partitions=2",
                 f"data.executor={executor}"]
    if endpoint:
        overrides.append(f"data.s3.endpoint_url={endpoint}")
    return load_config(overrides=overrides)


def _rows(table):
    return sorted(json.dumps(row, sort_keys=True) for row in table.to_pylist())


@pytest.mark.parametrize("executor", ["ray", "threads"])
def test_prepare_reads_and_writes_s3(tmp_path, s3_endpoint, ray_local, executor):
    """s3:// in and out on Ray tasks and on threads in process (what a laptop run of auto does)."""
    import s3fs

    generate(str(tmp_path / "raw"), users=300, items=200, reviews=4000, categories=6, seed=1, files=2)
    fs = s3fs.S3FileSystem(endpoint_url=s3_endpoint)
    if not fs.exists(BUCKET):
        fs.mkdir(BUCKET)
    root = f"{BUCKET}/{executor}"
    fs.put(str(tmp_path / "raw") + "/", f"{root}/raw/", recursive=True)

    remote = _config(f"s3://{root}/raw/reviews/", f"s3://{root}/raw/meta/", f"s3://{root}/prepared",
                     s3_endpoint, executor)
    local = _config(tmp_path / "raw" / "reviews", tmp_path / "raw" / "meta", tmp_path / "prepared")
    remote_result = prepare(remote, log=lambda message: None)
    prepare(local, log=lambda message: None)

    meta = json.loads(fs.cat(f"{root}/prepared/meta.json"))
    assert meta["executor"] == executor
    assert meta["sources"]["reviews"][0].startswith("s3://")
    assert meta["counts"]["read"]["records"] == 4000
    assert meta["splits"] == remote_result.meta["splits"]
    for split in ("train", "valid", "test"):
        remote_table = pq.read_table(f"{root}/prepared/{split}", filesystem=fs)
        local_table = pq.read_table(tmp_path / "prepared" / split)
        assert _rows(remote_table) == _rows(local_table)


def test_missing_s3_source_is_a_clear_error(s3_endpoint, ray_local):
    from eain_dist.data.errors import InputError

    config = _config(f"s3://{BUCKET}/nothing-here/", f"s3://{BUCKET}/nothing-here/", f"s3://{BUCKET}/out",
                     s3_endpoint)
    with pytest.raises(InputError, match="nothing-here"):
        prepare(config, log=lambda message: None)
