"""`eain prepare`'s positives beside the reference protocol's (../shared/peers/prepare_reference.py).

Both make DIN / BARS leave-last-out splits; this compares, by raw ids, what does not depend on
random draws: which users are kept, each user's valid and test positive item, and the history
(items, most recent last) of every positive of every split. Negatives are drawn from other
random streams and are not compared.

    python /work/shared/peers/prepare_reference.py ../shared/data/grocery/interactions.tsv \\
        --meta ../shared/data/grocery/item_meta.tsv --out-dir REF
    eain prepare --config configs/grocery.yaml --set data.output=OURS
    python benchmarks/prepare_vs_reference.py --reference REF --prepared OURS [--results DIR]

Writes DIR/prepare-reference.json and .md when --results is given.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pyarrow.dataset as ds
import pyarrow.parquet as pq

SPLITS = ("train", "valid", "test")


def reference_positives(folder: Path) -> dict[str, dict[tuple[str, str], tuple[str, ...]]]:
    """split -> {(user, item): history} of the reference's positives, ids as text."""
    out = {}
    for split in SPLITS:
        rows = pq.read_table(folder / f"{split}.parquet", columns=["label", "user_id", "item_id", "item_history"])
        out[split] = {(str(r["user_id"]), str(r["item_id"])): tuple(str(i) for i in r["item_history"])
                      for r in rows.to_pylist() if r["label"] == 1}
    return out


def prepared_positives(folder: Path) -> dict[str, dict[tuple[str, str], tuple[str, ...]]]:
    """The same from a prepared dataset, its indices decoded through vocab/."""
    raw = {name: dict(zip(*(t.column(c).to_pylist() for c in ("index", "raw"))))
           for name in ("user", "item") for t in [pq.read_table(folder / "vocab" / f"{name}.parquet")]}
    out = {}
    for split in SPLITS:
        rows = ds.dataset(folder / split).to_table(columns=["label", "user", "item", "hist_item"])
        out[split] = {(raw["user"][r["user"]], raw["item"][r["item"]]): tuple(raw["item"][i] for i in r["hist_item"] if i)
                      for r in rows.to_pylist() if r["label"] == 1}
    return out


def compare(reference: dict, ours: dict) -> dict:
    result = {}
    ref_users = {user for user, _ in reference["test"]}
    our_users = {user for user, _ in ours["test"]}
    result["users"] = {"reference": len(ref_users), "prepared": len(our_users), "common": len(ref_users & our_users)}
    for split in SPLITS:
        ref, our = reference[split], ours[split]
        same_item = set(ref) & set(our)
        same_history = sum(ref[key] == our[key] for key in same_item)
        result[split] = {"reference_positives": len(ref), "prepared_positives": len(our),
                         "same_user_and_item": len(same_item), "same_history_too": same_history,
                         "match_rate": round(same_history / max(len(ref), 1), 6)}
    return result


def to_markdown(result: dict, reference: Path, prepared: Path) -> str:
    lines = ["# `eain prepare` against the reference protocol (DIN / BARS leave-last-out)", "",
             "Made by the commands in `benchmarks/prepare_vs_reference.py`'s docstring (Grocery: "
             "`configs/grocery.yaml`).", "",
             f"Reference rows: `{reference}` (../shared/peers/prepare_reference.py); prepared: `{prepared}`. "
             "A positive matches when the same user has the same positive item in the split with the same "
             "history (raw ids, most recent last, max_history 50).", "",
             f"Users kept: reference {result['users']['reference']:,}, prepared {result['users']['prepared']:,}, "
             f"common {result['users']['common']:,}.", "",
             "| split | reference positives | prepared positives | same user + item | same history too | match rate |",
             "|---|---:|---:|---:|---:|---:|"]
    for split in SPLITS:
        r = result[split]
        lines.append(f"| {split} | {r['reference_positives']:,} | {r['prepared_positives']:,} | "
                     f"{r['same_user_and_item']:,} | {r['same_history_too']:,} | {100 * r['match_rate']:.2f}% |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, required=True, help="--out-dir of prepare_reference.py")
    parser.add_argument("--prepared", type=Path, required=True, help="data.output of eain prepare")
    parser.add_argument("--results", type=Path, default=None)
    args = parser.parse_args()
    result = compare(reference_positives(args.reference), prepared_positives(args.prepared))
    print(json.dumps(result, indent=2))
    if args.results:
        args.results.mkdir(parents=True, exist_ok=True)
        (args.results / "prepare-reference.json").write_text(json.dumps(result, indent=2) + "\n")
        (args.results / "prepare-reference.md").write_text(to_markdown(result, args.reference, args.prepared))


if __name__ == "__main__":
    main()
