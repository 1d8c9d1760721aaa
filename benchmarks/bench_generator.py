"""Generator quality per condition: the paper's plain generator against INAG's refined one.

For every model (bundled name or artifact) and c = 0.1 ... 1.0, one bag per condition (same
noise for both variants) is decoded plainly (``refine=0``, the paper's generator) and with the
encoder-guided refinement (``--refine``, default ``inag.nagan.REFINE_STEPS``), and the table
gives the share of the bag within Dist_f <= 0.05 ("confident"), distinct architectures per
generated one, the whole-bag mDist_f and the time per bag. The last line per model is the
issue-17 check: the bag-weighted confident share and distinct share of the refined generator
(goal: >= 60 % confident at >= 0.8 distinct).

``--train '{"gan_steps": 4000, "g_lr": 6e-4, "d_lr": 6e-4}'`` first trains a variant of the
config (``NaganConfig`` fields) on the model's own dataset and measures that instead, with the
training time: how the defaults were chosen (docs/nagan.md).

    python benchmarks/bench_generator.py [--model data_a --model digits] [-n 2000]
        [--refine 50] [--train JSON]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import numpy as np

CONDITIONS = tuple(round(0.1 * i, 1) for i in range(1, 11))
THRESHOLD = 0.05


def _train_variant(name: str, overrides: dict) -> tuple[object, float]:
    from inag.dataset import DatasetStore, model_dataset
    from inag.nagan import NaganConfig, fit_nagan, load_model

    base = load_model(name)
    db, tried = model_dataset(base.meta)
    if db is None:
        raise SystemExit(f"{name}: its dataset is not available ({'; '.join(tried)})")
    with DatasetStore(db) as store:
        archs, perf = store.archs_and_performance()
    cfg = dataclasses.replace(NaganConfig(), **overrides)
    t = time.perf_counter()
    model, _ = fit_nagan(base.space, archs, perf, base.task, base.task_kind, cfg, info=base.meta)
    return model, time.perf_counter() - t


def _row(model, c: float, n: int, refine: int) -> tuple[float, float, float, float]:
    t = time.perf_counter()
    enc = model.generate_encoded(c, n, seed=1, refine=refine)
    dt = time.perf_counter() - t
    d = np.abs(model.estimate_encoded(enc) - c)
    distinct = len(np.unique(enc, axis=0)) / n
    return float(np.mean(d <= THRESHOLD)), distinct, float(d.mean()), dt


def main() -> None:
    from inag.nagan import REFINE_STEPS, load_model

    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    ap.add_argument("--model", action="append", help="bundled name or artifact (repeatable)")
    ap.add_argument("-n", type=int, default=2000, help="bag size per condition")
    ap.add_argument("--refine", type=int, default=REFINE_STEPS)
    ap.add_argument("--train", help="JSON of NaganConfig overrides to train and measure")
    args = ap.parse_args()
    for name in args.model or ["data_a", "digits", "digits_cnn"]:
        if args.train:
            model, secs = _train_variant(name, json.loads(args.train))
            print(f"\n## {name}, trained with {args.train} in {secs:.1f} s")
        else:
            model = load_model(name)
            print(f"\n## {name}")
        print(
            f"bag {args.n} per c; confident = Dist_f <= {THRESHOLD}; plain = the paper's "
            f"generator, refined = {args.refine} refinement steps\n"
        )
        print(
            "| c | plain: confident | distinct | mDist_f | refined: confident | distinct | "
            "mDist_f | refine time |"
        )
        print("|---|---|---|---|---|---|---|---|")
        tot = {"plain": np.zeros(3), "refined": np.zeros(3)}
        for c in CONDITIONS:
            p = _row(model, c, args.n, 0)
            r = _row(model, c, args.n, args.refine)
            tot["plain"] += p[:3]
            tot["refined"] += r[:3]
            print(
                f"| {c:g} | {p[0]:.0%} | {p[1]:.2f} | {p[2]:.1%} | {r[0]:.0%} | {r[1]:.2f} | "
                f"{r[2]:.1%} | {r[3]:.2f} s |"
            )
        k = len(CONDITIONS)
        for variant, t in tot.items():
            conf, distinct, mdist = t / k
            print(
                f"{name} {variant}: {conf:.0%} confident, {distinct:.2f} distinct per "
                f"generated, mDist_f {mdist:.1%}"
                + (
                    f" (goal >= 60 % at >= 0.8: {'met' if conf >= 0.6 and distinct >= 0.8 else 'NOT met'})"  # noqa: E501
                    if variant == "refined"
                    else ""
                )
            )


if __name__ == "__main__":
    main()
