"""The training budget: embedding quality against gradient steps, on labelled cells replicated to a larger data set.

``max_epochs="auto"`` trains 200 epochs up to 20,000 cells, then keeps the gradient steps of
20,000 cells x 200 epochs (about 15,600 minibatches of 256). The question it rests on: once a
data set is large, does quality follow the gradient steps rather than the epochs? Labelled
million-cell data is not in this repository, so the benchmark makes a larger set from
labelled cells: pbmc_facs (3,774 purified blood cells, labels from the purification, the
Seurat tutorial's QC) and ``--copies - 1`` copies of it, each binomially thinned (every count
kept with probability 0.9), so that no two cells are identical. It then trains
``make_count_embedder()`` on the replicated set with a fraction of the auto budget's
gradient steps (1/8, 1/4, 1/2, 1; the last is ``max_epochs="auto"``), and, as the reference,
on the original cells alone with their 200 epochs (today's recommendation at this size).

Every row is scored on the codes of the original 3,774 cells (the first copy): KMeans ARI
(k = number of labels, on the codes), 15-NN accuracy and silhouette against the purified
populations (``subpop``, 5 groups, and ``celltype``, 10), the mean over ``--seeds``
training seeds with the spread (max - min), and fit seconds. Fits run one at a time, on
every core unless ``--n-jobs`` says otherwise.

Usage: python benchmarks/budget.py [--data-home ../shared/data] [--copies 8] [--seeds 0,1]
                                   [--fractions 0.125,0.25,0.5,1] [--n-jobs -1] [--out table.csv]
"""

import argparse
import os
import platform
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from quality import load
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

import skvae
from skvae import make_count_embedder
from skvae.study.evaluation import latent_scores
from skvae.train.loop import AUTO_EPOCHS, AUTO_FULL_CELLS, epochs_for

BATCH_SIZE = 256  # the recommendation's minibatch


def replicate(counts, copies, keep=0.9, seed=0):
    """The cells and ``copies - 1`` binomially thinned copies of them, stacked (the originals first)."""
    rng = np.random.RandomState(seed)
    counts = counts.tocsr().astype(np.int64)
    parts = [counts]
    for _ in range(copies - 1):
        thinned = counts.copy()
        thinned.data = rng.binomial(counts.data, keep)
        thinned.eliminate_zeros()
        parts.append(thinned)
    return sp.vstack(parts, format="csr").astype(np.float32)


def scores(codes, labels):
    row = {}
    for name, truth in labels.items():
        k = len(np.unique(truth))
        row[f"{name} ARI"] = adjusted_rand_score(truth, KMeans(k, n_init=10, random_state=0).fit_predict(codes))
        latent = latent_scores(codes, truth)
        row[f"{name} kNN"], row[f"{name} silhouette"] = latent["kNN accuracy"], latent["silhouette"]
    return row


def fit(counts, n_original, epochs, seed, n_jobs):
    embedder = make_count_embedder(max_epochs=epochs, random_state=seed, n_jobs=n_jobs)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        embedder.fit(counts)
    seconds = time.perf_counter() - start
    return embedder.transform(counts[:n_original]).astype(np.float64), seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-home", default=os.environ.get("SKVAE_DATA", Path(__file__).parents[1] / ".." / "shared" / "data"))
    parser.add_argument("--copies", type=int, default=8)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--fractions", default="0.125,0.25,0.5,1", help="of the auto budget's gradient steps")
    parser.add_argument("--n-jobs", type=int, default=-1, help="torch threads of each fit (-1: every core)")
    parser.add_argument("--out", default=None, help="also write the per-fit table as CSV here")
    args = parser.parse_args()
    seeds = [int(seed) for seed in args.seeds.split(",")]
    print(f"skvae {skvae.__version__}, torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores; auto budget: {AUTO_EPOCHS} epochs up to {AUTO_FULL_CELLS} cells, then their steps")
    loaded = load("pbmc_facs", args.data_home)  # QC'd counts; labels "celltype" and "subpop"
    if loaded is None:
        raise SystemExit("budget.py needs pbmc_facs in the data folder (--data-home or SKVAE_DATA)")
    counts, labels = loaded
    n_original = counts.shape[0]
    large = replicate(counts, args.copies)
    # the recipe trains on all the cells it is given (no validation split), so the steps per epoch are these
    steps_per_epoch = -(-large.shape[0] // BATCH_SIZE)
    auto = epochs_for(large.shape[0])
    runs = [("original", counts.astype(np.float32), AUTO_EPOCHS)]
    for fraction in (float(value) for value in args.fractions.split(",")):
        runs.append((f"x{args.copies}", large, max(2, round(auto * fraction))))
    rows = []
    for name, data, epochs in runs:
        for seed in seeds:
            codes, seconds = fit(data, n_original, epochs, seed, args.n_jobs)
            steps = epochs * -(-data.shape[0] // BATCH_SIZE)
            row = {"data": name, "cells": data.shape[0], "epochs": epochs, "gradient steps": steps,
                   "cells seen": epochs * data.shape[0], "seed": seed, **scores(codes, labels), "fit s": seconds}
            rows.append(row)
            print(f"  {name} ({data.shape[0]} cells), {epochs} epochs ({steps} steps), seed {seed}: "
                  f"subpop ARI {row['subpop ARI']:.3f}, celltype ARI {row['celltype ARI']:.3f}, "
                  f"celltype kNN {row['celltype kNN']:.3f}, fit {seconds:.0f} s", flush=True)
    table = pd.DataFrame(rows)
    print(f"\nauto: {auto} epochs x {steps_per_epoch} steps at {large.shape[0]} cells; mean over seeds {seeds}, "
          "spread = max - min")
    metrics = [column for column in table.columns if column.endswith(("ARI", "kNN", "silhouette"))]
    grouped = table.groupby(["data", "cells", "epochs", "gradient steps"], sort=False)
    summary = grouped[metrics + ["fit s"]].mean()
    for column in ("subpop ARI", "celltype ARI", "celltype kNN"):
        summary[f"{column} spread"] = grouped[column].agg(lambda values: values.max() - values.min())
    with pd.option_context("display.width", 250, "display.max_columns", 30):
        print(summary.to_string(float_format="{:.3f}".format))
    if args.out:
        table.to_csv(args.out, index=False)


if __name__ == "__main__":
    main()
