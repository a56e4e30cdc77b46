"""A 100M-row embedding table, row-wise sharded over 2 CPU ranks: memory, lookups, training steps.

The size of the full Amazon Reviews 2023 user + item vocabularies (54.5M + 48.2M rows) as one
table at dim 16, a `ShardedEmbeddingCollection` with row-wise Adagrad, in 2 processes
(torch.multiprocessing, gloo on 127.0.0.1 / `lo`, 1 torch thread each: the machine has 2 cores).
Every rank looks up its own batches: a target id (B) and a history (B x 50), ids Zipf-distributed
over the whole table (bounded Zipf, exponent --zipf, hot ids scattered over the rows by a
multiplicative hash). Measured per rank:

- bytes of the shard (weights) and of its row-wise Adagrad state, from the tensors;
- init seconds (randn of the shard) and the peak RSS during init;
- lookup throughput: `collection(features)` under no_grad (dedupe -> all-to-alls -> expand), ids/s;
- training steps/s: lookup + a small dense head (mean-pooled history ++ target -> 64 -> 1, under
  DDP) + BCE + backward (gradients routed home by the all-to-all) + Adam on the head +
  `collection.step()` (row-wise Adagrad on the touched rows only);
- peak RSS over the lookups and steps alone (the kernel's high-water mark is reset after init via
  /proc/self/clear_refs): a dense gradient or dense optimizer update of the table would add a
  whole shard (+100%); row-wise updates add only the touched rows.

    python benchmarks/scale.py [--rows 100000000] [--dim 16] [--world 2] [--quick]

Writes benchmarks/results/scale.json and benchmarks/results/scale.md (not with --quick).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from eain_dist.distributed.row_optimizers import RowWiseAdagrad
from eain_dist.distributed.sharded_embedding import RowShard, ShardedEmbeddingCollection
from eain_dist.model.embedding import TableConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, free_port, machine_info, meminfo, write_results, zipf_ids  # noqa: E402

GIB = 1 << 30
MIB = 1 << 20


# ----------------------------------------------------------------------------- ids


def make_batches(rank: int, count: int, batch: int, history: int, rows: int, exponent: float) -> list[dict]:
    rng = np.random.default_rng(1000 + rank)
    out = []
    for _ in range(count):
        out.append({"target": torch.from_numpy(zipf_ids(rng, batch, rows, exponent)),
                    "hist": torch.from_numpy(zipf_ids(rng, (batch, history), rows, exponent)),
                    "label": torch.from_numpy(rng.integers(0, 2, batch).astype(np.float32))})
    return out


# ----------------------------------------------------------------------------- memory


def vm(field: str) -> int:
    """A /proc/self/status field (VmRSS, VmHWM) in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where the kernel refuses."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return vm("VmHWM") <= vm("VmRSS") + 16 * MIB


# ----------------------------------------------------------------------------- one rank


class Head(nn.Module):
    """Mean-pooled history ++ target embedding -> 64 -> 1 logit."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(2 * dim, 64), nn.ReLU(), nn.Linear(64, 1))

    def forward(self, target, hist):  # B x D, B x L x D
        return self.mlp(torch.cat([target, hist.mean(dim=1)], dim=1)).squeeze(1)  # B


def rank_main(rank: int, args: argparse.Namespace, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(GLOO_SOCKET_IFNAME="lo", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=args.world)
    world = args.world
    report: dict = {"rank": rank, "torch_threads": torch.get_num_threads(), "rss_before_init": vm("VmRSS")}
    table = TableConfig(name="id", num_embeddings=args.rows, embedding_dim=args.dim, feature_names=("target", "hist"))
    table_group = dist.new_group()  # the tables' all-to-alls apart from DDP's all-reduces, as the trainer does

    # Init (staggered: one rank at a time, when the machine cannot hold every rank's randn peak at once).
    for turn in range(world if args.stagger else 1):
        if not args.stagger or turn == rank:
            started = time.perf_counter()
            collection = ShardedEmbeddingCollection([table], sharded={"id"}, optimizer=RowWiseAdagrad(lr=0.05),
                                                    process_group=table_group, seed=0)
            report["init_s"] = time.perf_counter() - started
        if args.stagger:
            dist.barrier()
    shard = collection.shards["id"]
    report.update(
        local_rows=shard.weight.shape[0],
        weight_bytes=shard.weight.numel() * shard.weight.element_size(),
        optimizer_state_bytes=sum(t.numel() * t.element_size() for t in shard.state.values()),
        peak_rss_init=vm("VmHWM"), rss_after_init=vm("VmRSS"),
        weight_is_parameter=any(p is shard.weight for p in collection.parameters()),
        weight_requires_grad=shard.weight.requires_grad,
    )

    head = Head(args.dim)
    ddp = DistributedDataParallel(head)
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-3)
    batches = make_batches(rank, args.batches, args.batch, args.history, args.rows, args.zipf)
    unique = [len(torch.unique(torch.cat([b["target"], b["hist"].reshape(-1)]))) for b in batches]
    ids_per_batch = args.batch * (1 + args.history)
    report["unique_ids_per_batch_mean"] = float(np.mean(unique))
    report["peak_rss_reset"] = reset_peak_rss()
    report["rss_before_timed"] = vm("VmRSS")

    def lookup(i: int):
        b = batches[i % len(batches)]
        return collection({"target": b["target"], "hist": b["hist"]})

    def train_step(i: int) -> float:
        b = batches[i % len(batches)]
        out = collection({"target": b["target"], "hist": b["hist"]})
        logits = ddp(out.embeddings["target"], out.embeddings["hist"])
        loss = F.binary_cross_entropy_with_logits(logits, b["label"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        collection.step(grad_scale=1.0 / world)
        return float(loss.detach())

    # A row this rank asks for in every pass over its batches.
    probe = {"target": batches[0]["hist"][0, -1:], "hist": batches[0]["hist"][:1, -1:]}
    with torch.no_grad():
        before = collection(probe).embeddings["target"].clone()
        report["lookup_s"] = timed(lookup, args.warmup, args.lookups)
    report["step_s"] = timed(train_step, args.warmup, args.steps)
    with torch.no_grad():
        after = collection(probe).embeddings["target"]
    report.update(
        lookups=args.lookups, steps=args.steps, ids_per_batch=ids_per_batch,
        lookup_ids_per_s=args.lookups * ids_per_batch / report["lookup_s"],
        lookups_per_s=args.lookups / report["lookup_s"], steps_per_s=args.steps / report["step_s"],
        step_ids_per_s=args.steps * ids_per_batch / report["step_s"],
        peak_rss_timed=vm("VmHWM"), rss_after_timed=vm("VmRSS"),
        probe_row_updated=bool((after != before).any()), weight_grad_is_none=shard.weight.grad is None,
    )
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(report))
    dist.barrier()
    dist.destroy_process_group()


def timed(fn, warmup: int, repeats: int) -> float:
    for i in range(warmup):
        fn(i)
    dist.barrier()
    started = time.perf_counter()
    for i in range(repeats):
        fn(warmup + i)
    dist.barrier()
    return time.perf_counter() - started


# ----------------------------------------------------------------------------- parent


def to_markdown(report: dict) -> str:
    m, s, ranks = report["machine"], report["settings"], report["ranks"]
    g = lambda n: f"{n / GIB:.2f} GiB"  # noqa: E731
    lines = [
        "# A 100M-row embedding table, row-wise sharded over 2 CPU ranks",
        "",
        f"Date {m['date']}, eain_dist at {m['code']}. Machine: {m['processor']}, {m['cpu_count']} CPUs, "
        f"{m['memory_gib']} GiB "
        f"({m['memory_available_gib_at_start']} GiB available at the start), torch {m['torch']}, "
        f"Python {m['python']}.",
        "",
        f"Command: `{s['command']}`",
        "",
        f"One table of {s['rows']:,} rows x dim {s['dim']} (float32; the Amazon 2023 user + item vocabularies, "
        f"54.5M + 48.2M, are this size) as a `ShardedEmbeddingCollection` with `RowWiseAdagrad`, row r on "
        f"rank r % {s['world']}; {s['world']} processes (torch.multiprocessing, gloo over 127.0.0.1 / lo), "
        f"1 torch thread each. Each rank's batch: {s['batch']} target ids + {s['batch']} x {s['history']} "
        f"history ids = {s['batch'] * (1 + s['history']):,} ids, bounded Zipf (exponent {s['zipf']}) over all "
        f"rows; {s['batches']} distinct batches per rank, cycled. Timed: {s['lookups']} lookups and "
        f"{s['steps']} training steps after {s['warmup']} warm-up each. Ranks initialised "
        f"{'one after the other' if s['stagger'] else 'concurrently'}.",
        "",
        f"The machine is shared (other test suites were running): 1-minute load average "
        f"{m['load_average_at_start'][0]:.1f} at the start, {m['load_average_at_end'][0]:.1f} at the end "
        "(2 cores), so the rates are lower bounds.",
        "",
        "| rank | rows | weights | Adagrad state | init s | peak RSS (init) | RSS after init | "
        "peak RSS (lookups + steps) | unique ids / batch | lookup ids/s | train steps/s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in ranks:
        lines.append(
            f"| {r['rank']} | {r['local_rows']:,} | {g(r['weight_bytes'])} | {g(r['optimizer_state_bytes'])} | "
            f"{r['init_s']:.1f} | {g(r['peak_rss_init'])} | {g(r['rss_after_init'])} | {g(r['peak_rss_timed'])} | "
            f"{r['unique_ids_per_batch_mean']:,.0f} | {r['lookup_ids_per_s']:,.0f} | {r['steps_per_s']:.2f} |")
    t = report["totals"]
    lines += [
        "",
        f"- Both ranks together: {g(t['table_bytes'])} of weights + {g(t['state_bytes'])} of Adagrad state; "
        f"lookups {t['lookup_ids_per_s']:,.0f} ids/s ({t['lookups_per_s']:.1f} lookups/s of "
        f"{s['world']} x {s['batch'] * (1 + s['history']):,} ids); training {t['steps_per_s']:.2f} steps/s "
        f"= {t['train_samples_per_s']:,.0f} samples/s ({t['step_ids_per_s']:,.0f} ids/s).",
        f"- No dense gradient: the shard is a plain tensor (parameter: {t['weight_is_parameter']}, "
        f"requires_grad: {t['weight_requires_grad']}, .grad None after training: {t['weight_grad_is_none']}), "
        f"a probed row changed after the steps ({t['probe_row_updated']}); peak RSS over the lookups and steps "
        f"exceeds the RSS before them by at most {g(t['max_timed_growth'])} "
        f"({t['max_timed_growth_fraction_of_shard']:.1%} of a rank's shard + state) -- a dense gradient or "
        f"dense optimizer update would add ~{g(ranks[0]['weight_bytes'])} (100%).",
        f"- Init: peak RSS during init is {t['init_peak_over_shard']:.2f}x the shard + state"
        + (": `ShardedEmbeddingCollection._new_shard` makes `torch.randn(rows, D)` and then `* init_std`, a second "
           "full-size tensor, before the first is freed (an in-place `.mul_(init_std)` or "
           "`torch.empty(rows, D).normal_(0, init_std, generator=g)` would keep it at 1x)."
           if t["init_peak_over_shard"] > 1.5 else "."),
        "",
        *report.get("notes", []),
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000_000)
    parser.add_argument("--dim", type=int, default=16)
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--history", type=int, default=50)
    parser.add_argument("--zipf", type=float, default=1.05)
    parser.add_argument("--batches", type=int, default=8, help="distinct batches per rank, cycled")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--lookups", type=int, default=100)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--stagger", choices=("auto", "yes", "no"), default="auto",
                        help="initialise ranks one at a time (auto: when memory is short for all at once)")
    parser.add_argument("--quick", action="store_true", help="1M rows, few steps; prints, keeps the results files")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.quick:
        args.rows, args.lookups, args.steps = 1_000_000, 10, 10
    command = " ".join(["python benchmarks/scale.py", *map(shlex.quote, sys.argv[1:])])

    shard_bytes = RowShard.rows_on(0, args.world, args.rows) * (args.dim + 1) * 4
    init_peak = 2 * shard_bytes + 512 * MIB  # randn + its scaled copy, + the process itself
    if args.stagger == "auto":
        args.stagger = meminfo("MemAvailable") < args.world * init_peak + 6 * GIB
    else:
        args.stagger = args.stagger == "yes"
    machine = machine_info("torch")
    print(f"{args.rows:,} rows x {args.dim} over {args.world} ranks: {shard_bytes / GIB:.2f} GiB per rank, "
          f"staggered init: {args.stagger}", flush=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as out_dir:
        mp.spawn(rank_main, args=(args, free_port(), out_dir), nprocs=args.world, join=True)
        ranks = [json.loads(Path(out_dir, f"rank{r}.json").read_text()) for r in range(args.world)]
    machine["load_average_at_end"] = os.getloadavg()
    world_ids = args.batch * (1 + args.history)
    totals = {
        "table_bytes": sum(r["weight_bytes"] for r in ranks),
        "state_bytes": sum(r["optimizer_state_bytes"] for r in ranks),
        "lookup_ids_per_s": sum(r["lookup_ids_per_s"] for r in ranks),
        "lookups_per_s": min(r["lookups_per_s"] for r in ranks),
        "steps_per_s": min(r["steps_per_s"] for r in ranks),
        "step_ids_per_s": sum(r["step_ids_per_s"] for r in ranks),
        "train_samples_per_s": min(r["steps_per_s"] for r in ranks) * args.batch * args.world,
        "weight_is_parameter": any(r["weight_is_parameter"] for r in ranks),
        "weight_requires_grad": any(r["weight_requires_grad"] for r in ranks),
        "weight_grad_is_none": all(r["weight_grad_is_none"] for r in ranks),
        "probe_row_updated": all(r["probe_row_updated"] for r in ranks),
        "peak_rss_reset_worked": all(r["peak_rss_reset"] for r in ranks),
        "max_timed_growth": max(r["peak_rss_timed"] - r["rss_before_timed"] for r in ranks),
        "max_timed_growth_fraction_of_shard": max((r["peak_rss_timed"] - r["rss_before_timed"])
                                                  / (r["weight_bytes"] + r["optimizer_state_bytes"]) for r in ranks),
        "init_peak_over_shard": max((r["peak_rss_init"] - r["rss_before_init"])
                                    / (r["weight_bytes"] + r["optimizer_state_bytes"]) for r in ranks),
        "wall_s": time.perf_counter() - started,
    }
    report = {"machine": machine, "settings": {
        "command": command, "rows": args.rows, "dim": args.dim, "world": args.world, "batch": args.batch,
        "history": args.history, "ids_per_rank_batch": world_ids, "zipf": args.zipf, "batches": args.batches,
        "warmup": args.warmup, "lookups": args.lookups, "steps": args.steps, "stagger": args.stagger},
        "ranks": ranks, "totals": totals}
    if not totals["peak_rss_reset_worked"]:
        report["notes"] = ["- WARNING: /proc/self/clear_refs did not reset the peak RSS; the timed peak "
                           "includes init."]
    markdown = to_markdown(report)
    print(markdown)
    if args.quick:
        return
    write_results("scale", report, markdown, args.out)


if __name__ == "__main__":
    main()
