"""Filesystems: source expansion, S3 options without secrets, pyarrow filesystems."""

from __future__ import annotations

import fsspec
import pyarrow.fs as pafs
import pytest

from eain_dist.config import S3Config
from eain_dist.data.errors import InputError
from eain_dist.data.fs import expand_sources, filesystem_for, pyarrow_filesystem, redact_secrets, storage_options

SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzzSECRETKEY"


@pytest.fixture
def tree(tmp_path):
    """A folder as Spark / Hadoop writers leave it, with data in a subfolder."""
    files = ["a.jsonl", "b.jsonl.gz", "sub/c.jsonl", "sub/deeper/d.csv",
             "_SUCCESS", ".a.jsonl.crc", "part-0.crc", ".hidden/e.jsonl", "_temporary/f.jsonl"]
    for name in files:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x\n")
    return tmp_path


def test_directory_is_walked_without_bookkeeping_files(tree):
    assert expand_sources(str(tree), S3Config()) == [
        str(tree / "a.jsonl"), str(tree / "b.jsonl.gz"), str(tree / "sub/c.jsonl"), str(tree / "sub/deeper/d.csv")]


def test_globs_lists_and_duplicates(tree):
    s3 = S3Config()
    assert expand_sources(str(tree / "*.jsonl*"), s3) == [str(tree / "a.jsonl"), str(tree / "b.jsonl.gz")]
    assert expand_sources(str(tree / "**/*.jsonl"), s3) == [str(tree / "a.jsonl"), str(tree / "sub/c.jsonl")]
    # A glob that matches a folder takes the folder's files.
    assert expand_sources(str(tree / "s*"), s3) == [str(tree / "sub/c.jsonl"), str(tree / "sub/deeper/d.csv")]
    listed = expand_sources([str(tree / "sub"), str(tree / "a.jsonl"), str(tree / "sub/c.jsonl"),
                             f"file://{tree}/a.jsonl"], s3)
    assert listed == [str(tree / "a.jsonl"), str(tree / "sub/c.jsonl"), str(tree / "sub/deeper/d.csv")]


def test_explicit_file_is_taken_even_if_it_looks_hidden(tree):
    assert expand_sources(str(tree / "_SUCCESS"), S3Config()) == [str(tree / "_SUCCESS")]


def test_relative_paths_become_absolute(tree, monkeypatch):
    monkeypatch.chdir(tree)
    assert expand_sources("sub/c.jsonl", S3Config()) == [str(tree / "sub/c.jsonl")]


@pytest.mark.parametrize("source, message", [
    ("missing.jsonl", r"missing\.jsonl: no such file or directory"),
    ("*.parquet", r"\*\.parquet: the pattern matches no input files"),
    ("empty", r"empty: the directory holds no input files"),
    ("only_hidden", r"only_hidden: the directory holds no input files"),
    ("", "empty input path"),
    ("nosuchprotocol://bucket/x", r"nosuchprotocol://bucket/x: unsupported location"),
])
def test_sources_that_match_nothing_are_input_errors(tree, monkeypatch, source, message):
    (tree / "empty").mkdir()
    (tree / "only_hidden").mkdir()
    (tree / "only_hidden" / "_SUCCESS").write_text("")
    monkeypatch.chdir(tree)
    with pytest.raises(InputError, match=message) as caught:
        expand_sources(["a.jsonl", source], S3Config())
    assert "\n" not in str(caught.value)


def test_remote_sources_keep_their_protocol():
    memory = fsspec.filesystem("memory")
    for name in ("bucket/reviews/part-0.jsonl.gz", "bucket/reviews/part-1.jsonl.gz", "bucket/reviews/_SUCCESS"):
        memory.pipe(f"/{name}", b"x\n")
    try:
        # fsspec's memory filesystem roots its paths at "/", hence three slashes.
        assert expand_sources("memory://bucket/reviews", S3Config()) == [
            "memory:///bucket/reviews/part-0.jsonl.gz", "memory:///bucket/reviews/part-1.jsonl.gz"]
        assert expand_sources("memory://bucket/reviews/*-1.*", S3Config()) == [
            "memory:///bucket/reviews/part-1.jsonl.gz"]
    finally:
        memory.rm("/bucket", recursive=True)


def test_storage_options_take_endpoint_region_and_anonymous(monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    assert storage_options(S3Config()) == {"anon": False}
    assert storage_options(S3Config(endpoint_url="http://minio:9000", region="eu-west-1", anonymous=True)) == {
        "anon": True, "endpoint_url": "http://minio:9000", "client_kwargs": {"region_name": "eu-west-1"}}
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://generic:1")
    assert storage_options(S3Config())["endpoint_url"] == "http://generic:1"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://s3-specific:2")
    assert storage_options(S3Config())["endpoint_url"] == "http://s3-specific:2"
    assert storage_options(S3Config(endpoint_url="http://config:3"))["endpoint_url"] == "http://config:3"


def test_credentials_never_reach_options_reprs_or_messages(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEKEYID")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_SESSION_TOKEN", "session-token-value")
    s3 = S3Config(endpoint_url="http://127.0.0.1:1", region="us-east-1")
    options = storage_options(s3)
    fs, path = filesystem_for("s3://bucket/key.jsonl", s3)
    exposed = " ".join([repr(options), repr(s3), repr(fs), repr(getattr(fs, "storage_options", "")), path])
    for secret in (SECRET, "session-token-value"):
        assert secret not in exposed
    assert redact_secrets(f"signature for {SECRET} and session-token-value failed") == \
        "signature for *** and *** failed"


def test_filesystems_for_local_and_s3(tmp_path):
    fs, path = filesystem_for(str(tmp_path / "x.jsonl"), S3Config())
    assert fs.protocol[0] == "file" and path == str(tmp_path / "x.jsonl")
    fs, path = filesystem_for("s3://bucket/dir/x.jsonl", S3Config(endpoint_url="http://127.0.0.1:1"))
    assert "s3" in fs.protocol and path == "bucket/dir/x.jsonl"
    assert fs.unstrip_protocol(path) == "s3://bucket/dir/x.jsonl"

    arrow, path = pyarrow_filesystem(f"file://{tmp_path}/out", S3Config())
    assert isinstance(arrow, pafs.LocalFileSystem) and path == f"{tmp_path}/out"
    arrow, path = pyarrow_filesystem("s3://bucket/out", S3Config(endpoint_url="http://127.0.0.1:1"))
    assert isinstance(arrow, pafs.PyFileSystem) and arrow.type_name == "py::fsspec+('s3', 's3a')" \
        and path == "bucket/out"
