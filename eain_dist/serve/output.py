"""Output folders that never look done before they are: written aside, then moved into place.

    <parent>/.<name>.staging-<random>/   everything is written here first (hidden: readers of
                                         the parent folder skip it)
    <parent>/<name>/                     moved here once complete, then `_SUCCESS` (a JSON
                                         summary) is written last

A failed command removes its staging folder, so a folder without `_SUCCESS` was never finished.
An existing output is replaced only if it is an earlier finished one (it has `_SUCCESS`) or
empty: any other folder is refused rather than deleted. Local paths and s3:// alike (on S3 the
move is a copy, hence the marker).
"""

from __future__ import annotations

import json
import uuid

from fsspec.implementations.local import LocalFileSystem

from eain_dist.config import S3Config
from eain_dist.data.errors import InputError
from eain_dist.data.fs import filesystem_for, pyarrow_filesystem, url_of

SUCCESS = "_SUCCESS"


class StagedOutput:
    """`with StagedOutput(url, s3) as staging: write under staging.path; staging.commit(summary)`."""

    def __init__(self, url: str, s3: S3Config) -> None:
        self.url = url.rstrip("/")
        self.s3 = s3
        self.fs, self.target = filesystem_for(self.url, s3)
        self._refuse_foreign_folder()
        parent, _, name = self.target.rpartition("/")
        self.path = f"{parent}/.{name}.staging-{uuid.uuid4().hex[:12]}"
        self.committed = False

    def __enter__(self) -> "StagedOutput":
        self.fs.makedirs(self.path, exist_ok=True)
        return self

    def __exit__(self, *exc_info) -> None:
        if not self.committed and self.fs.exists(self.path):
            self.fs.rm(self.path, recursive=True)

    @property
    def url_of_staging(self) -> str:
        return url_of(self.fs, self.path)

    def arrow(self):
        """(pyarrow filesystem, path) of the staging folder, for Ray Data's writers."""
        return pyarrow_filesystem(self.url_of_staging, self.s3)

    def commit(self, summary: dict) -> None:
        if self.fs.exists(self.target):
            self.fs.rm(self.target, recursive=True)  # checked in __init__: an earlier finished output
        self._move_into_place()
        with self.fs.open(f"{self.target}/{SUCCESS}", "w") as handle:
            json.dump(summary, handle, indent=2, default=str)
        self.committed = True

    def _move_into_place(self) -> None:
        if isinstance(self.fs, LocalFileSystem):
            self.fs.mv(self.path, self.target, recursive=True)  # one rename
            return
        for source in self.fs.find(self.path):  # object stores have no folders to rename: file by file
            self.fs.copy(source, f"{self.target}/{source[len(self.path) + 1:]}")
        self.fs.rm(self.path, recursive=True)

    def _refuse_foreign_folder(self) -> None:
        if not self.fs.exists(self.target):
            return
        if not self.fs.isdir(self.target):
            raise InputError(f"{self.url} exists and is a file; choose a folder for the output")
        if self.fs.ls(self.target, detail=False) and not self.fs.exists(f"{self.target}/{SUCCESS}"):
            raise InputError(f"{self.url} exists and is not a finished eain output (no {SUCCESS}); "
                             "choose another folder or remove it")
