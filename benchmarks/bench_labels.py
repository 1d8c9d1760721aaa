"""How reproducible are dataset labels under a training recipe? (issues 3 and 4)

The surrogate encoder can only learn the part of a label that the architecture determines: if
the same architecture, trained again with another seed, lands somewhere else, no encoder can
predict that. This measures, for each recipe given on the command line, on ``--n`` sampled
architectures (the first rows ``inag sample --seed 0`` would train) each trained with
``--seeds`` training seeds:

- repeatability = 1 - mean within-architecture variance / total variance of the labels: the
  best held-out R^2 any surrogate could reach on single-build labels;
- the mean |p - mean p| over seeds (the noise floor of issue 4, before dividing by P_R);
- the label quantiles (the condition range the generator has to learn) and seconds of training.

    python benchmarks/bench_labels.py --task data_a --n 48 --seeds 3 \
        --recipe epochs=40,restarts=3 --recipe epochs=120,restarts=1
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import fields, replace

import numpy as np
import torch

from inag.space import load_space
from inag.tasks import load_task
from inag.train.trainer import BatchedMLPTrainer, TrainerConfig


def parse_recipe(text: str) -> TrainerConfig:
    kinds = {f.name: f.type for f in fields(TrainerConfig)}
    values: dict[str, object] = {}
    for part in filter(None, text.split(",")):
        key, _, raw = part.partition("=")
        if key not in kinds:
            raise SystemExit(f"unknown TrainerConfig field {key!r}; available: {sorted(kinds)}")
        kind = kinds[key]
        values[key] = raw if kind in ("str", str) else (float(raw) if "." in raw else int(raw))
    return replace(TrainerConfig(), **values)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--task", default="data_a")
    ap.add_argument("--space", default="mlp")
    ap.add_argument("--n", type=int, default=48)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--recipe", action="append", default=[], help="k=v,... TrainerConfig fields")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    task = load_task(args.task, seed=0)
    space = load_space(args.space).bind(task.input_shape, task.output_size)
    archs = space.sample_many(np.random.default_rng(0), args.n)
    print(f"{args.task}: {len(archs)} archs x {args.seeds} seeds\n")
    print("| recipe | repeatability | mean abs dev | q10 | q50 | q90 | s per arch-seed |")
    print("|---|---|---|---|---|---|---|")
    for text in args.recipe or [""]:
        cfg = parse_recipe(text)
        t0 = time.perf_counter()
        perf = np.array(
            [
                [r.performance for r in BatchedMLPTrainer(task, replace(cfg, seed=s)).train(archs)]
                for s in range(args.seeds)
            ]
        )
        secs = time.perf_counter() - t0
        within = perf.var(axis=0, ddof=1).mean()
        rep = 1.0 - within / perf.var(ddof=1)
        dev = np.abs(perf - perf.mean(axis=0)).mean()
        q = np.quantile(perf, [0.1, 0.5, 0.9])
        print(
            f"| {text or 'defaults'} | {rep:.3f} | {dev:.4f} | {q[0]:.3f} | {q[1]:.3f} | "
            f"{q[2]:.3f} | {secs / perf.size:.3f} |",
            flush=True,
        )
    print(file=sys.stderr)


if __name__ == "__main__":
    main()
