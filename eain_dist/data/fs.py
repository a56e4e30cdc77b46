"""Filesystems for input and output: local paths, s3:// (any S3-compatible store) and whatever
else fsspec knows.

Credentials never pass through this module: s3fs (botocore) finds them in the standard chain
(environment variables, ~/.aws, instance profile). What we hand over is only the endpoint, the
region and anonymous access, so options, reprs and messages cannot leak a secret.
"""

from __future__ import annotations

import os
import posixpath

import fsspec
import pyarrow.fs as pafs
from fsspec.implementations.local import LocalFileSystem

from eain_dist.config import S3Config
from eain_dist.data.errors import InputError

_S3_PROTOCOLS = ("s3", "s3a")
# Service-specific first, as botocore reads them.
_ENDPOINT_VARIABLES = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
_SECRET_VARIABLES = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")
_GLOB_CHARACTERS = frozenset("*?[")


def storage_options(s3: S3Config) -> dict:
    """Keyword arguments for `s3fs.S3FileSystem`: endpoint, region, anonymous access; never keys."""
    options: dict = {"anon": s3.anonymous}
    endpoint = s3.endpoint_url or next(
        (os.environ[name] for name in _ENDPOINT_VARIABLES if os.environ.get(name)), None)
    if endpoint:
        options["endpoint_url"] = endpoint
    if s3.region:
        options["client_kwargs"] = {"region_name": s3.region}
    return options


def filesystem_for(url: str, s3: S3Config) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem for `url` and the path inside it (absolute for local paths,
    `bucket/key` for s3)."""
    protocol, _ = fsspec.core.split_protocol(url)
    options = storage_options(s3) if protocol in _S3_PROTOCOLS else {}
    try:
        return fsspec.core.url_to_fs(url, **options)
    except ImportError as exc:
        raise InputError(f"{url}: no filesystem installed for {protocol}:// ({exc})") from None
    except ValueError as exc:
        raise InputError(f"{url}: unsupported location ({exc})") from None


def pyarrow_filesystem(url: str, s3: S3Config) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem for `url` (for Parquet reads and writes) and the path inside it.

    Remote stores go through the same fsspec instance as everything else, so the endpoint and
    the credential chain are the same for Ray Data as for the readers.
    """
    fs, path = filesystem_for(url, s3)
    if isinstance(fs, LocalFileSystem):
        return pafs.LocalFileSystem(), path
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def expand_sources(sources: str | list[str], s3: S3Config) -> list[str]:
    """Input files named by paths, directories (walked recursively), globs, or a list of those.

    Returns sorted, unique local paths / URLs (remote ones keep their `s3://`). Files that
    Hadoop-style writers leave beside the data are skipped inside directories and globs:
    names starting with `.` or `_` (`_SUCCESS`, `.part-0.crc`) and `*.crc`. Raises InputError
    naming the source when it does not exist or matches no file.
    """
    found: set[str] = set()
    for source in [sources] if isinstance(sources, str) else sources:
        found.update(_expand_source(source, s3))
    return sorted(found)


def redact_secrets(text: str) -> str:
    """`text` with the values of the AWS secret variables in this environment masked; for
    messages built from third-party exceptions."""
    for name in _SECRET_VARIABLES:
        secret = os.environ.get(name)
        if secret and len(secret) >= 8:  # a dummy like "testing" would mangle ordinary words
            text = text.replace(secret, "***")
    return text


def url_of(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """The URL of `path` inside `fs` (plain for local files): what `filesystem_for` takes."""
    if isinstance(fs, LocalFileSystem):
        return path
    return fs.unstrip_protocol(path)


def _expand_source(source: str, s3: S3Config) -> list[str]:
    if not source.strip():
        raise InputError("empty input path in data.source / data.meta")
    fs, path = filesystem_for(source, s3)
    try:
        files = _files_for(fs, path, source)
    except (OSError, ValueError) as exc:
        reason = redact_secrets(f"{type(exc).__name__}: {exc}").replace("\n", " ")
        raise InputError(f"{source}: cannot list ({reason})") from None
    return [url_of(fs, file) for file in files]


def _files_for(fs: fsspec.AbstractFileSystem, path: str, source: str) -> list[str]:
    if _GLOB_CHARACTERS & set(path):
        root = _literal_prefix(path)
        matches = [match for match in fs.glob(path) if _is_visible(match, root)]
        files = [file for match in matches for file in _visible_files(fs, match)]
        if not files:
            raise InputError(f"{source}: the pattern matches no input files")
        return files
    if fs.isdir(path):
        files = _visible_files(fs, path)
        if not files:
            raise InputError(f"{source}: the directory holds no input files")
        return files
    if fs.isfile(path):
        return [path]  # named explicitly: taken even when its name looks hidden
    raise InputError(f"{source}: no such file or directory")


def _visible_files(fs: fsspec.AbstractFileSystem, path: str) -> list[str]:
    """Regular files at or under `path`, without the writer's bookkeeping files below it."""
    if not fs.isdir(path):
        return [path]
    root = path.rstrip("/")
    return [file for file in fs.find(root, withdirs=False) if _is_visible(file, root)]


def _literal_prefix(pattern: str) -> str:
    """The folders of a glob pattern before its first wildcard."""
    parts = pattern.split("/")
    literal = next(i for i, part in enumerate(parts) if _GLOB_CHARACTERS & set(part))
    return "/".join(parts[:literal])


def _is_visible(path: str, root: str) -> bool:
    """No component of `path` below `root` is hidden (`.x`, `_x`) or a checksum (`x.crc`)."""
    relative = posixpath.relpath(path, root) if root else path
    return all(name and not name.startswith((".", "_")) and not name.endswith(".crc")
               for name in relative.split("/"))
