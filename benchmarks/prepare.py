"""`eain prepare` beside a single-process polars implementation of the same steps: throughput,
peak memory of the whole process tree, per-stage seconds, and the row-by-row checks.

Runs (`--runs`, comma-separated TOOL:SIZE, measured one after the other in a fresh subprocess
each, so Ray starts clean; SIZE in reviews, with M for millions):
  polars:N        benchmarks/polars_baseline.py, POLARS_MAX_THREADS = --cpus
  eain:N          eain prepare --set ray.num_cpus=--cpus (exact vocabularies; data.executor=auto:
                  threads in process when the input fits this machine, else Ray tasks)
  eain-ray:N      the same on Ray tasks (data.executor=ray)
  eain-threads:N  the same on threads in process (data.executor=threads)
  eain-hashed:N   the same as eain with data.vocab=hashed
  eain-single:N   eain prepare of ONE uncompressed .jsonl file of N reviews (read in byte ranges)
Inputs: 2023-format reviews + metadata from `eain generate` (users = N / 8, items = N / 20, one
gzip review file per 250k reviews), cached under --work; outputs are deleted once measured.
After every eain run of at most --check-up-to reviews, benchmarks/check_prepared.py checks
the prepared rows against the raw reviews (not timed).

    python benchmarks/prepare.py --generate-only --runs ...                     # inputs, outside quiet
    /work/tools/quiet python benchmarks/prepare.py        # the default --runs below
    /work/tools/quiet python benchmarks/prepare.py --runs polars:2M,eain:100M --name prepare-100m

Writes benchmarks/results/<name>.json and .md (name: prepare).
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import measure  # benchmarks/measure.py
from check_prepared import check
from common import machine_info, write_results

ROOT = Path(__file__).resolve().parents[1]
EAIN = Path(sys.executable).parent / "eain"
BASELINE = Path(__file__).parent / "polars_baseline.py"
SETTINGS = ["data.format=amazon2023", "data.max_history=50", "sampling.negatives=1", "sampling.strategy=uniform",
            "sampling.skive_above=true"]
TARGET_PSS_MIB = 12 * 1024
EXECUTORS = {"eain-ray": "ray", "eain-threads": "threads"}  # data.executor; every other eain tool: auto


# ----------------------------------------------------------------------------- inputs


def reviews_of(size: str) -> int:
    return int(float(size[:-1]) * 1_000_000) if size.upper().endswith("M") else int(size)


def ensure_input(work: Path, reviews: int) -> Path:
    """Generate (once) reviews + metadata of one size; a DONE file records the shape."""
    shape = {"reviews": reviews, "users": reviews // 8, "items": reviews // 20, "files": max(2, -(-reviews // 250_000))}
    folder = work / f"input-{reviews}"
    done = folder / "DONE"
    if not done.exists() or json.loads(done.read_text()).get("shape") != shape:
        print(f"generating {reviews:,} reviews in {folder}", flush=True)
        shutil.rmtree(folder, ignore_errors=True)
        subprocess.run([str(EAIN), "generate", "--out", str(folder), "--users", str(shape["users"]), "--items",
                        str(shape["items"]), "--reviews", str(reviews), "--files", str(shape["files"])],
                       check=True, stdout=subprocess.DEVNULL)
        done.write_text(json.dumps({"shape": shape}))
    return folder


def ensure_single_file(work: Path, reviews: int) -> Path:
    """One uncompressed .jsonl of `reviews` reviews (generated as one gzip file, inflated once)."""
    folder = work / f"single-{reviews}"
    target = folder / "reviews" / "all.jsonl"
    if not target.exists():
        generated = work / f"single-{reviews}-gz"
        subprocess.run([str(EAIN), "generate", "--out", str(generated), "--users", str(reviews // 8), "--items",
                        str(reviews // 20), "--reviews", str(reviews), "--files", "1"], check=True,
                       stdout=subprocess.DEVNULL)
        target.parent.mkdir(parents=True, exist_ok=True)
        with gzip.open(next((generated / "reviews").glob("*.gz")), "rb") as source, open(target, "wb") as out:
            shutil.copyfileobj(source, out, 16 << 20)
        shutil.move(str(generated / "meta"), str(folder / "meta"))
        shutil.rmtree(generated)
    return folder


def input_for(tool: str, reviews: int, work: Path) -> Path:
    return ensure_single_file(work, reviews) if tool == "eain-single" else ensure_input(work, reviews)


# ----------------------------------------------------------------------------- runs


def run(tool: str, reviews: int, cpus: int, work: Path, logs: Path, check_up_to: int) -> dict:
    folder = input_for(tool, reviews, work)
    out = work / f"output-{tool}-{reviews}"
    shutil.rmtree(out, ignore_errors=True)
    log = logs / f"{tool}-{reviews}.log"
    if tool == "polars":
        command = [sys.executable, str(BASELINE), "--reviews", str(folder / "reviews"), "--meta", str(folder / "meta"),
                   "--out", str(out), "--max-history", "50", "--negatives", "1"]
        result = measure.measure(command, log, env={"POLARS_MAX_THREADS": str(cpus)})
    else:
        overrides = [f"data.source={folder / 'reviews'}", f"data.meta={folder / 'meta'}", f"data.output={out}",
                     *SETTINGS, f"ray.num_cpus={cpus}", f"data.vocab={'hashed' if tool == 'eain-hashed' else 'exact'}",
                     f"data.executor={EXECUTORS.get(tool, 'auto')}"]
        result = measure.measure([str(EAIN), "prepare", *[a for o in overrides for a in ("--set", o)]], log)
    output = result.pop("output")
    row = {"tool": tool, "reviews": reviews, "cpus": cpus, **result, "ok": result["returncode"] == 0}
    if row["ok"]:
        row.update(_parsed(tool, output, out))
        if tool.startswith("eain") and reviews <= check_up_to:
            row["checks"] = check(sorted(str(p) for p in (folder / "reviews").glob("*.json*")), out)
    else:
        row["failure"] = output.strip().splitlines()[-1][:300] if output.strip() else f"exit {result['returncode']}"
    row["reviews_per_s"] = round(reviews / row["wall_s"]) if row["ok"] else None
    shutil.rmtree(out, ignore_errors=True)
    return row


def _parsed(tool: str, output: str, out: Path) -> dict:
    meta = json.loads((out / "meta.json").read_text())
    if tool == "polars":
        return {"pipeline_s": meta["seconds"], "stages_s": meta["stages_s"], "splits": meta["splits"]}
    stages = {re.sub(r"\d[\d,]*", "N", what): float(s) for what, s in re.findall(r"^prepare: (.*) \(([\d.]+)s[,)]",
                                                                                 output, re.M)}
    pipeline_s = float(re.search(r"^prepare: wrote [\d,]+ impressions to .* in ([\d.]+)s \(", output, re.M).group(1))
    return {"pipeline_s": pipeline_s, "stages_s": stages, "splits": meta["splits"], "read": meta["counts"]["read"],
            "executor": meta.get("executor"),
            "progress_lines": len(re.findall(r"^prepare:   ", output, re.M)),
            "task_peak_rss_mib": meta.get("task_peak_rss_mib", {})}


# ----------------------------------------------------------------------------- report


def _median_runs(runs: list[dict]) -> dict:
    """(tool, reviews) -> its run, or where it ran several times (alternating with the other
    tool, to even out the machine's drift) the run of median wall time."""
    groups: dict = {}
    for r in runs:
        groups.setdefault((r["tool"], r["reviews"]), []).append(r)
    return {key: sorted(group, key=lambda r: r["wall_s"])[len(group) // 2] for key, group in groups.items()}


def verdicts(runs: list[dict]) -> list[str]:
    by = _median_runs(runs)
    lines = []
    polars2, eain2 = by.get(("polars", 2_000_000)), by.get(("eain", 2_000_000))
    if polars2 and eain2 and eain2["ok"]:
        ratio = eain2["reviews_per_s"] / polars2["reviews_per_s"]
        repeats = sum(r["tool"] == "eain" and r["reviews"] == 2_000_000 for r in runs)
        lines.append(f"2M reviews, {eain2['cpus']} CPUs: eain / polars = {ratio:.2f} (wall, start-up included"
                     + (f"; median of {repeats} alternating runs each" if repeats > 1 else "") + "): "
                     + ("**met**" if ratio >= 1 else "**missed**"))
    for (tool, reviews), r in by.items():
        if tool in ("eain", "eain-ray", "eain-threads") and reviews >= 50_000_000 and polars2:
            rate = r["reviews_per_s"] or 0
            lines.append(f"{reviews / 1e6:.0f}M reviews, {_label(r)}: peak tree PSS {r['peak_tree_pss_mib']:,} MiB "
                         f"({'**met**' if r['ok'] and r['peak_tree_pss_mib'] <= TARGET_PSS_MIB else '**missed**'}, "
                         f"target <= {TARGET_PSS_MIB:,}); {rate:,} reviews/s = {rate / polars2['reviews_per_s']:.2f} x "
                         f"polars' 2M rate ({'**met**' if rate >= 0.7 * polars2['reviews_per_s'] else '**missed**'}, "
                         "target >= 0.70)")
    polars20, eain20 = by.get(("polars", 20_000_000)), by.get(("eain", 20_000_000))
    if eain20 and polars20:
        if not polars20["ok"]:
            lines.append(f"20M reviews: the polars baseline failed ({polars20['failure']}); eain "
                         f"{eain20['reviews_per_s']:,} reviews/s")
        else:
            ratio = eain20["reviews_per_s"] / polars20["reviews_per_s"]
            lines.append(f"20M reviews: eain / polars baseline = {ratio:.2f}: " + ("**met**" if ratio >= 1 else "**missed**"))
    for r in runs:
        if r["tool"] == "eain-single" and r["ok"]:
            most = r["read"]["most_tasks_on_one_file_at_once"]
            lines.append(f"one {r['reviews'] / 1e6:g}M-review .jsonl file: read by {r['read']['tasks']} tasks, "
                         f"{most} at once: " + ("**met**" if most >= 2 else "**missed**"))
        if "checks" in r:
            lines.append(f"row-by-row checks, {r['tool']} {r['reviews'] / 1e6:g}M: "
                         + ("**hold**" if r["checks"]["ok"] else f"**fail** ({json.dumps(r['checks'])})"))
    return lines


def _label(run: dict) -> str:
    """The tool, and for eain where its tasks ran (meta.json executor)."""
    return f"{run['tool']} ({run['executor']})" if run.get("executor") else run["tool"]


def to_markdown(report: dict) -> str:
    m, runs = report["machine"], report["runs"]
    lines = [f"# `eain prepare` against a single-process polars implementation: {report['name']}", "",
             f"`{report['command']}` under `/work/tools/quiet`, {m['date']}, commit {m['code']}.", "",
             f"Machine: {m['processor']}, {m['cpu_count']} cores, {m['memory_gib']} GiB, ray {m['ray']}, polars "
             f"{m['polars']}, pyarrow {m['pyarrow']}, numpy {m['numpy']}, Python {m['python']}. 1-minute load "
             f"average {m['load_average_at_start'][0]:.2f} at the start, {m['load_avg_1m_at_end']} at the end (column load: "
             "just before each run).", "",
             "Settings: " + ", ".join(f"`{s}`" for s in SETTINGS) + "; wall = the whole command (eain: Python, Ray "
             "start and shutdown included); rate = reviews / wall. Memory: peak over the run, sampled every 0.2 s, of "
             "the command's whole process tree (PSS: shared pages such as Ray's object store divided among "
             "their processes).", "", "## Targets", "", *[f"- {line}" for line in report["verdicts"]], "",
             "## Runs", "",
             "| tool | reviews | CPUs | wall s | reviews/s | pipeline s | peak tree PSS MiB | peak tree RSS MiB | "
             "object store MiB | impressions | load |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in runs:
        if not r["ok"]:
            lines.append(f"| {_label(r)} | {r['reviews']:,} | {r['cpus']} | {r['wall_s']:.1f} | failed: {r['failure']} "
                         f"| | {r['peak_tree_pss_mib']:,} | {r['peak_tree_rss_mib']:,} | | | {r['load_avg_1m_before']} |")
            continue
        lines.append(f"| {_label(r)} | {r['reviews']:,} | {r['cpus']} | {r['wall_s']:.1f} | {r['reviews_per_s']:,} | "
                     f"{r['pipeline_s']:.1f} | {r['peak_tree_pss_mib']:,} | {r['peak_tree_rss_mib']:,} | "
                     f"{r['peak_object_store_mib']:,} | {sum(r['splits'].values()):,} | {r['load_avg_1m_before']} |")
    for r in runs:
        if r["ok"]:
            stages = "; ".join(f"{stage} {s:.1f}" for stage, s in r["stages_s"].items())
            start = "Python + Ray start and shutdown" if r.get("executor") == "ray" else "Python start"
            extra = f" {start}: {r['wall_s'] - r['pipeline_s']:.1f}." + (
                f" Executor: {r['executor']}." if r.get("executor") else "")
            lines += ["", f"Stages (s), {r['tool']} {r['reviews']:,}: {stages}.{extra}"]
            if "read" in r:
                lines[-1] += (f" Read by {r['read']['tasks']} tasks, at most {r['read']['most_tasks_on_one_file_at_once']}"
                              f" on one file at once; {r['progress_lines']} progress lines.")
                if r["task_peak_rss_mib"]:  # Ray tasks only: threads share the process
                    lines[-1] += (" Largest task peak RSS (MiB) per stage: "
                                  + ", ".join(f"{k} {v:,}" for k, v in r["task_peak_rss_mib"].items()) + ".")
    for r in runs:
        if "checks" in r:
            lines += ["", f"Checks, {r['tool']} {r['reviews']:,}: `{json.dumps(r['checks'])}`"]
    return "\n".join(lines + ["", *report.get("notes", [])]) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="polars:2M,eain:2M,polars:2M,eain:2M,polars:2M,eain:2M,eain-ray:2M,"
                                          "eain-hashed:2M,eain-single:10M,polars:20M,eain:20M,eain-ray:20M")
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path(__file__).parent / "work")
    parser.add_argument("--name", default="prepare")
    parser.add_argument("--results", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--check-up-to", type=int, default=2_000_000, help="check runs of at most this many reviews")
    parser.add_argument("--generate-only", action="store_true", help="make the inputs, measure nothing")
    args = parser.parse_args()
    runs = [(tool, reviews_of(size)) for tool, size in (item.split(":") for item in args.runs.split(","))]
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    if args.generate_only:
        for tool, reviews in runs:
            input_for(tool, reviews, work)
        return
    machine = machine_info("ray", "polars", "pyarrow", "numpy")
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    results, checked = [], set()
    for tool, reviews in runs:
        check_up_to = 0 if (tool, reviews) in checked else args.check_up_to  # a repeated run: checked once
        checked.add((tool, reviews))
        results.append(run(tool, reviews, args.cpus, work, logs, check_up_to))
        r = results[-1]
        print(f"{tool:>12} {reviews:>12,}: wall {r['wall_s']:.1f}s, {r['reviews_per_s'] or 0:,}/s, tree PSS "
              f"{r['peak_tree_pss_mib']:,} MiB, load {r['load_avg_1m_before']}" + ("" if r["ok"] else " FAILED"),
              flush=True)
    machine["load_avg_1m_at_end"] = measure.load_average()
    report = {"name": args.name, "command": "python benchmarks/prepare.py " + " ".join(sys.argv[1:]),
              "machine": machine, "runs": results}
    report["verdicts"] = verdicts(results)
    write_results(args.name, report, to_markdown(report), args.results)


if __name__ == "__main__":
    main()
