"""Label transfer baselines: name a query's cells from a labelled reference, on a joint embedding, with k-NN.

The starting point for issue 31 (a semi-supervised skvae model): what the lightweight route gives today. Every
embedding of :func:`integration.embeddings` (uncorrected PCA, Harmony, scVI's defaults, the recipe without and with
batches) is fitted once on all cells of a data set with their batches (no labels), then a distance-weighted 15-NN
classifier trained on the reference cells' codes names the query's cells.

Directions:
- ``pair``, reference pbmc_facs -> query pbmc3k (FCGR3A+ monocytes, dendritic cells and platelets are absent from
  the reference), and reference pbmc3k -> query pbmc_facs (CD34+ cells absent); coarse labels as in
  ``integration.py``.
- ``semisynthetic``: batch 3 as the query of batches 1 and 2 (every type shared: no unknown AUROC).

Columns: accuracy and macro-F1 over the query cells whose type the reference has; AUROC of ``1 - max probability``
as an unknown score, absent types against shared ones; the F1 of each shared type (``--per-type``). skvae and scVI
rows: one per ``--seeds`` seed, summarised as mean ± sd.

Usage: python benchmarks/label_transfer.py [--data-home ../shared/data] [--datasets pair,semisynthetic]
                                           [--rows pca,harmony,skvae] [--seeds 0,1,2] [--per-type]
"""

import argparse
import os
import platform
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score
from sklearn.neighbors import KNeighborsClassifier

sys.path.insert(0, str(Path(__file__).parent))
from integration import LOADERS, embeddings, summarise  # noqa: E402 -- the benchmark folder is not a package

import skvae  # noqa: E402

#: (data set, reference batch, query batch)
DIRECTIONS = {
    "pair": [("pbmc_facs", "pbmc3k"), ("pbmc3k", "pbmc_facs")],
    "semisynthetic": [(("batch 1", "batch 2"), "batch 3")],
}


def transfer(codes, batch, labels, reference, query, k=15):
    """Scores of a distance-weighted k-NN from the reference cells' codes to the query's, and each shared type's F1."""
    reference = np.isin(batch, np.atleast_1d(reference))
    query = batch == query
    classifier = KNeighborsClassifier(n_neighbors=k, weights="distance").fit(codes[reference], labels[reference])
    probabilities = classifier.predict_proba(codes[query])
    predicted = classifier.classes_[probabilities.argmax(axis=1)]
    truth = labels[query]
    shared = np.isin(truth, classifier.classes_)
    types = [label for label in classifier.classes_ if label in set(truth[shared])]
    scores = {"accuracy": accuracy_score(truth[shared], predicted[shared]),
              "macro-F1": f1_score(truth[shared], predicted[shared], labels=types, average="macro"),
              "unknown AUROC": roc_auc_score(~shared, 1 - probabilities.max(axis=1)) if (~shared).any() else np.nan}
    per_type = dict(zip(types, f1_score(truth[shared], predicted[shared], labels=types, average=None), strict=True))
    return scores, per_type


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-home", default=os.environ.get("SKVAE_DATA", Path(__file__).parents[1] / ".." / "shared" / "data"))
    parser.add_argument("--datasets", default="pair,semisynthetic")
    parser.add_argument("--rows", default="pca,harmony,skvae", help="of pca, harmony, scvi, skvae (PCA always)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--per-type", action="store_true", help="also the F1 of each shared type")
    args = parser.parse_args()
    rows, seeds = set(args.rows.split(",")), [int(seed) for seed in args.seeds.split(",")]
    print(f"skvae {skvae.__version__}, torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores; seeds {seeds}")
    tables = []
    for dataset in filter(None, args.datasets.split(",")):
        counts, batch, labels = LOADERS[dataset](args.data_home)
        print(f"\n== {dataset}: {counts.shape[0]} cells", flush=True)
        for name, codes, seconds in embeddings(counts, batch, rows, args.epochs, seeds):
            print(f"  {name}: fit {seconds:.1f} s", flush=True)
            for reference, query in DIRECTIONS[dataset]:
                scores, per_type = transfer(codes, batch, labels, reference, query)
                row = {"data": f"{dataset}: {'+'.join(np.atleast_1d(reference))} -> {query}", **scores,
                       **({f"F1 {label}": value for label, value in per_type.items()} if args.per_type else {}),
                       "fit s": seconds}
                tables.append(pd.Series(row, name=name))
    table = pd.DataFrame(tables)
    table = table[[column for column in table.columns if column != "fit s"] + ["fit s"]]
    with pd.option_context("display.width", 250, "display.max_columns", 30):
        for data, part in table.groupby("data", sort=False):
            print(f"\n{data}")
            print(summarise(part.dropna(axis=1, how="all")).to_string())


if __name__ == "__main__":
    main()
