"""The reject log: records read and rejected, per file and reason, with a few samples of each."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

SAMPLE_CHARS = 300


@dataclass
class RejectLog:
    """Records read and rejected, per file and reason, with a few samples of each.

    Readers call `seen` for every record they read (good or bad) and `reject` for every bad
    one; logs of parallel tasks are combined with `merge`. Plain dicts and lists, so it is
    cheap to pickle between Ray tasks. A reader of a byte range of a file numbers lines from
    the range's start and records how many lines it read (`lines`); whoever merges the parts
    of a file in order moves each part's samples down by the lines before it (`shift_lines`).
    """

    max_samples: int = 20  # per (file, reason)
    records: dict[str, int] = field(default_factory=dict)  # file -> records read, good + bad
    counts: dict[tuple[str, str], int] = field(default_factory=dict)  # (file, reason) -> n
    samples: list[dict] = field(default_factory=list)  # file, line, reason, text[, detail]
    notes: list[str] = field(default_factory=list)  # one line each, e.g. how a file was read
    lines: dict[str, int] = field(default_factory=dict)  # file -> lines read (not in to_json)

    def seen(self, file: str, n: int) -> None:
        self.records[file] = self.records.get(file, 0) + n

    def reject(self, file: str, line: int, reason: str, text: str | bytes, detail: str = "") -> None:
        key = (file, reason)
        self.counts[key] = self.counts.get(key, 0) + 1
        if self.counts[key] <= self.max_samples:
            self.samples.append(_sample(file, line, reason, text, detail))

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def read_lines(self, file: str, n: int) -> None:
        self.lines[file] = self.lines.get(file, 0) + n

    def shift_lines(self, file: str, n: int) -> None:
        """Number this log's lines of `file` from n + 1 on (it read a part that starts there)."""
        for sample in self.samples:
            if sample["file"] == file:
                sample["line"] += n

    def merge(self, other: RejectLog) -> None:
        for file, n in other.records.items():
            self.seen(file, n)
        for key, n in other.counts.items():
            self.counts[key] = self.counts.get(key, 0) + n
        kept = Counter((s["file"], s["reason"]) for s in self.samples)
        for sample in other.samples:
            key = (sample["file"], sample["reason"])
            if kept[key] < self.max_samples:
                kept[key] += 1
                self.samples.append(sample)
        for text in other.notes:
            self.note(text)
        for file, n in other.lines.items():
            self.read_lines(file, n)

    def total_records(self) -> int:
        return sum(self.records.values())

    def total_rejects(self) -> int:
        return sum(self.counts.values())

    def messages(self) -> list[str]:
        """One line per sample: `<file> line <n>: <reason>[ (detail)]`."""
        return [reject_message(sample) for sample in self.samples]

    def to_json(self) -> dict:
        rejects: dict[str, dict[str, int]] = {}
        for (file, reason), n in sorted(self.counts.items()):
            rejects.setdefault(file, {})[reason] = n
        return {
            "max_samples": self.max_samples,
            "records": dict(sorted(self.records.items())),
            "rejects": rejects,
            "samples": list(self.samples),
            "notes": list(self.notes),
        }

    @classmethod
    def from_json(cls, data: dict) -> RejectLog:
        counts = {(file, reason): n
                  for file, reasons in data.get("rejects", {}).items() for reason, n in reasons.items()}
        return cls(max_samples=data.get("max_samples", 20), records=dict(data.get("records", {})),
                   counts=counts, samples=list(data.get("samples", [])), notes=list(data.get("notes", [])))


def reject_message(sample: dict) -> str:
    detail = f" ({sample['detail']})" if sample.get("detail") else ""
    return f"{sample['file']} line {sample['line']}: {sample['reason']}{detail}"


def _sample(file: str, line: int, reason: str, text: str | bytes, detail: str) -> dict:
    if isinstance(text, (bytes, memoryview)):
        text = bytes(text[: SAMPLE_CHARS * 4]).decode("utf-8", errors="replace")
    sample = {"file": file, "line": line, "reason": reason, "text": text[:SAMPLE_CHARS].rstrip("\r\n")}
    if detail:
        sample["detail"] = detail
    return sample


class Reject(Exception):
    """A record is bad for `reason`; raised inside row builders, caught by the reader."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason
