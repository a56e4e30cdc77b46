"""Training-step throughput of every model and every EAIN ablation on CPU.

One step = forward + backward + Adam step on a fixed synthetic batch (batch 1024, history 50),
over the demo dataset's table sizes, with local (unsharded) tables. Reported: the median over
repeats of samples/s, after warm-up steps; and parameter counts.

    python benchmarks/models.py [--quick]

Writes benchmarks/results/models.json and benchmarks/results/models.md (not with --quick).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import Tensor, nn

from eain_dist.model import MODEL_NAMES, ModelConfig, build_model, ctr_loss

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, write_results  # noqa: E402
from common import machine_info as common_machine_info  # noqa: E402
# The embedded demo dataset's meta.json (rows include the padding row 0).
META = {
    "tables": {"user": 4001, "item": 2001, "category": 25, "hour": 24, "weekday": 7, "gap": 32},
    "features": {"user": "user", "item": "item", "hist_item": "item", "category": "category",
                 "hist_category": "category", "hour": "hour", "weekday": "weekday", "gap": "gap"},
    "max_history": 50,
}
ABLATION_FLAGS = ("use_din_attention", "use_mask_block", "use_senet", "use_paim", "use_second_order")
TARGET_SAMPLES_PER_S = 10_000  # EAIN at dim 16 on 2 CPU threads


@dataclasses.dataclass(frozen=True)
class Timing:
    warmup_steps: int
    steps: int
    repeats: int


def variants(embedding_dim: int) -> dict[str, ModelConfig]:
    """Every model, then EAIN with each block switched off."""
    configs = {name: ModelConfig(name=name, embedding_dim=embedding_dim) for name in MODEL_NAMES}
    for flag in ABLATION_FLAGS:
        configs[f"eain -{flag.removeprefix('use_')}"] = ModelConfig(embedding_dim=embedding_dim, **{flag: False})
    return configs


def synthetic_batch(batch_size: int, seed: int = 0) -> dict[str, Tensor]:
    """Uniform ids, history lengths uniform in [0, max_history], left-padded like the loader's."""
    g = torch.Generator().manual_seed(seed)
    tables, length = META["tables"], META["max_history"]
    hist_len = torch.randint(0, length + 1, (batch_size,), generator=g)
    real = torch.arange(length) >= (length - hist_len).unsqueeze(1)  # B x L
    batch = {name: torch.randint(0, tables[name], (batch_size,), generator=g)
             for name in ("user", "item", "category", "hour", "weekday", "gap")}
    batch["hist_item"] = torch.randint(1, tables["item"], (batch_size, length), generator=g) * real
    batch["hist_category"] = torch.randint(1, tables["category"], (batch_size, length), generator=g) * real
    batch["hist_len"] = hist_len.to(torch.int32)
    batch["label"] = torch.randint(0, 2, (batch_size,), generator=g).float()
    return batch


class TrainingStep:
    """One model with its optimizer; calling it runs forward + backward + Adam step."""

    def __init__(self, config: ModelConfig, batch: dict[str, Tensor]) -> None:
        torch.manual_seed(0)
        self.config, self.batch = config, batch
        self.model = build_model(config, META)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)

    def __call__(self) -> None:
        out = self.model(self.batch)
        total, _ = ctr_loss(out.logits, self.batch["label"], self.model, l2=self.config.l2,
                            embedding_l2=self.config.embedding_l2)
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()


def measure(configs: dict[str, ModelConfig], batch: dict[str, Tensor], timing: Timing) -> dict[str, dict]:
    """samples/s of every variant, median over repeats.

    Repeats go round-robin over the variants, so a burst of other load on the machine slows one
    repeat of several variants (which the median drops) rather than every repeat of one variant.
    """
    steps = {variant: TrainingStep(config, batch) for variant, config in configs.items()}
    for step in steps.values():
        for _ in range(timing.warmup_steps):
            step()
    rates: dict[str, list[float]] = {variant: [] for variant in steps}
    for _ in range(timing.repeats):
        for variant, step in steps.items():
            start = time.perf_counter()
            for _ in range(timing.steps):
                step()
            rates[variant].append(timing.steps * len(batch["label"]) / (time.perf_counter() - start))
    return {
        variant: {"samples_per_s": statistics.median(rates[variant]), "best_samples_per_s": max(rates[variant]),
                  "repeats_samples_per_s": rates[variant], **parameter_counts(step.model)}
        for variant, step in steps.items()
    }


def parameter_counts(model: nn.Module) -> dict[str, int]:
    embedding = sum(p.numel() for p in model.embeddings.parameters())
    return {"dense_parameters": sum(p.numel() for p in model.parameters()) - embedding,
            "embedding_parameters": embedding}


def machine_info() -> dict:
    return {**common_machine_info("torch"), "torch_threads": torch.get_num_threads(),
            "load_average_1m_at_start": os.getloadavg()[0]}


def to_markdown(report: dict) -> str:
    machine, settings = report["machine"], report["settings"]
    lines = [
        "# Model training-step throughput (CPU)",
        "",
        f"Forward + backward + Adam step, batch {settings['batch_size']}, history {settings['history']}, "
        f"local tables of the demo dataset ({settings['tables']}). Median of {settings['repeats']} repeats of "
        f"{settings['steps']} steps after {settings['warmup_steps']} warm-up steps.",
        "",
        f"Machine: {machine['processor']}, {machine['cpu_count']} CPUs, torch {machine['torch']} with "
        f"{machine['torch_threads']} threads, Python {machine['python']}.",
        "",
        f"The machine is shared: its 1-minute load average was {machine['load_average_1m_at_start']:.1f} at the "
        f"start and {machine['load_average_1m_at_end']:.1f} at the end; 'best' is the fastest repeat.",
        "",
        "| model | dim | samples/s (median) | best | step ms (median) | dense params | embedding params |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["results"]:
        step_ms = 1000 * settings["batch_size"] / row["samples_per_s"]
        lines.append(f"| {row['variant']} | {row['embedding_dim']} | {row['samples_per_s']:,.0f} | "
                     f"{row['best_samples_per_s']:,.0f} | {step_ms:.1f} | {row['dense_parameters']:,} | "
                     f"{row['embedding_parameters']:,} |")
    eain = next(r for r in report["results"] if r["variant"] == "eain" and r["embedding_dim"] == 16)
    verdict = "meets" if eain["samples_per_s"] >= TARGET_SAMPLES_PER_S else "MISSES"
    lines += ["", f"EAIN at dim 16: {eain['samples_per_s']:,.0f} samples/s, {verdict} the target of "
                  f"{TARGET_SAMPLES_PER_S:,} samples/s.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="dim 16 only, few steps; prints the table and keeps the results files as they are")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    dims = (16,) if args.quick else (16, 64)
    timing = Timing(warmup_steps=2, steps=3, repeats=3) if args.quick else Timing(warmup_steps=5, steps=8, repeats=7)
    batch = synthetic_batch(args.batch_size)
    machine = machine_info()
    results = []
    for dim in dims:
        configs = variants(dim)
        for variant, measured in measure(configs, batch, timing).items():
            row = {"variant": variant, "model": configs[variant].name, "embedding_dim": dim, **measured}
            print(f"{variant:>24} dim {dim:>3}: {row['samples_per_s']:>10,.0f} samples/s", flush=True)
            results.append(row)
    machine["load_average_1m_at_end"] = os.getloadavg()[0]
    report = {
        "machine": machine,
        "settings": {"batch_size": args.batch_size, "history": META["max_history"], "tables": META["tables"],
                     **dataclasses.asdict(timing), "quick": args.quick},
        "results": results,
    }
    if args.quick:
        print(to_markdown(report))
        return
    write_results("models", report, to_markdown(report), args.out)


if __name__ == "__main__":
    main()
