"""Which pick does the output selector make, and what does it retrain to? Generator variant
(refined or the paper's plain) x ranking (dist_ub or the paper's Dist_f), over several noise
seeds, the top K picks of each, every pick retrained with ``--retrain-seeds`` trainer seeds.

One Table-3 pick is one draw; this averages over draws, so the ranking's effect is visible
above the training noise (docs/results/table3.md).

    python benchmarks/bench_ranking.py [--model data_a] [--platform bitfusion] [--condition 1.0]
        [--seeds 3] [--top 3] [--retrain-seeds 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics

from inag.dataset import DatasetStore, model_dataset
from inag.nagan import REFINE_STEPS, load_model
from inag.platform import load_platform
from inag.select import select
from inag.select.baselines import TrainEvaluator
from inag.tasks import load_task
from inag.threads import single_threaded
from inag.train.trainer import TrainerConfig


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    ap.add_argument("--model", default="data_a")
    ap.add_argument("--platform", default="bitfusion")
    ap.add_argument("--condition", type=float, default=1.0)
    ap.add_argument("-n", type=int, default=5000, help="bag size")
    ap.add_argument("--seeds", type=int, default=3, help="noise seeds of the bag")
    ap.add_argument("--top", type=int, default=3, help="picks per selection")
    ap.add_argument("--retrain-seeds", type=int, default=3)
    args = ap.parse_args()
    model = load_model(args.model)
    db, tried = model_dataset(model.meta)
    if db is None:
        raise SystemExit(f"{args.model}: its dataset is not available ({'; '.join(tried)})")
    with DatasetStore(db) as store:
        meta = store.meta()
    task = load_task(model.task, seed=meta["data_seed"])
    trainer = TrainerConfig.from_record(meta["trainer"])
    plat = load_platform(args.platform)
    variants = [
        (f"refined (refine {REFINE_STEPS}), dist_ub", REFINE_STEPS, "dist_ub"),
        (f"refined (refine {REFINE_STEPS}), dist_f", REFINE_STEPS, "dist_f"),
        ("plain (paper), dist_ub", 0, "dist_ub"),
        ("plain (paper), dist_f (the paper's selector)", 0, "dist_f"),
    ]
    picks: dict[str, list] = {}
    for label, refine, rank_by in variants:
        for seed in range(args.seeds):
            with single_threaded():
                (sel,), _ = select(
                    model, [plat], args.condition, n=args.n, rank_by=rank_by, seed=seed,
                    refine=refine,
                )  # fmt: skip
            recs = sel.records(model, args.top)
            for i, rec in zip(sel.chosen[: args.top], recs, strict=False):
                picks.setdefault(label, []).append((sel.bag.archs[i], rec))
    distinct = {a.arch_id: a for v in picks.values() for a, _ in v}
    perf: dict[str, list[float]] = {k: [] for k in distinct}
    with single_threaded():
        for s in range(args.retrain_seeds):
            ev = TrainEvaluator(task, dataclasses.replace(trainer, seed=trainer.seed + s))
            for k, a in distinct.items():
                perf[k].append(ev([a])[0])
    print(
        f"{args.model} on {args.platform}, c={args.condition}, bag {args.n}, noise seeds "
        f"0..{args.seeds - 1}, top {args.top} per selection, {len(distinct)} distinct picks "
        f"retrained with {args.retrain_seeds} trainer seeds\n"
    )
    print("| variant | picks | mean retrained (%) | worst pick (%) | mean estimate (%) |")
    print("|---|---|---|---|---|")
    for label, got in picks.items():
        real = [statistics.fmean(perf[a.arch_id]) for a, _ in got]
        est = [rec["estimate_perf"] for _, rec in got]
        print(
            f"| {label} | {len(got)} | {100 * statistics.fmean(real):.2f} | "
            f"{100 * min(real):.2f} | {100 * statistics.fmean(est):.2f} |"
        )


if __name__ == "__main__":
    main()
