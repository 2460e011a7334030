"""Batch integration: skvae with and without batches against uncorrected PCA, Harmony and scVI, scored by scib-metrics.

Data sets (read from the data folder; see ``../shared/data/pbmc_pair/README.md``):
- ``pair``: pbmc3k (10x v1, one donor, its 2,638 labelled cells) and pbmc_facs (10x GemCode,
  purified populations of other donors, 3,774 cells) as two batches, genes matched by Ensembl
  id, the README's coarse labels. T, B, NK cells and CD14+ monocytes are in both batches; FCGR3A+
  monocytes, dendritic cells and platelets only in pbmc3k, CD34+ cells only in pbmc_facs.
- ``semisynthetic``: pbmc_facs split at random into three batches, each thinned binomially
  per gene (a per-gene multiplicative effect, ``exp(-|N(0, 0.5)|)``) and per cell (library size
  x 1.0, 0.75, 0.5); labels the purified populations (``subpop``), which no clustering made.
- ``toy``: 1,500 synthetic cells of 3 types in 2 batches (200 genes, per-gene log-normal effect),
  a quick check that needs no data folder.

Rows: PCA(50) of the scaled log-normalised genes (2,000 chosen within each batch); Harmony
(harmonypy) on that PCA; scVI's defaults with ``batch_key`` on the same genes' counts;
``make_count_embedder()`` on the counts of all genes without and with batches (its gene selection
then ranks genes within each batch); the autoencoder and the beta-VSC with the recommended
count settings and batches on the 2,000 genes. Every skvae model trains with random_state=0 on
every core; fits run one at a time.

Columns: scib-metrics' ``Benchmarker`` with its defaults, ``get_results(min_max_scale=False)``
(bio conservation: isolated labels, KMeans NMI / ARI, silhouette label, cLISI; batch correction:
silhouette batch, iLISI, kBET, graph connectivity, PCR comparison; total = 0.6 bio + 0.4 batch),
and fit seconds. scib-metrics, harmonypy and scvi-tools are benchmark-only extras; a row whose
tool is missing is skipped with a message.

``--sweep`` replaces the rows by PCA and the previous round's batch-aware recipe (hidden layers
(128, 128), no adversary) with one change at a time, each trained with every ``--seeds`` seed:
the evidence for the current recipe's settings (the user guide's "Integrating batches").

Usage: python benchmarks/integration.py [--data-home ../shared/data] [--datasets pair,semisynthetic]
                                        [--epochs 200] [--rows pca,harmony,scvi,skvae] [--out table.csv]
                                        [--sweep "previous recipe;batch_adversary=10" --seeds 0,1]
"""

import argparse
import itertools
import os
import platform
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from sklearn.decomposition import PCA
from sklearn.pipeline import make_pipeline

import skvae
from skvae import AutoencoderEmbedder, BetaVSCEmbedder, make_count_embedder
from skvae.datasets import fetch_pbmc3k, read_10x_mtx
from skvae.preprocessing import ClippedStandardScaler, HighlyVariableGenes, LogNormalizer
from skvae.recipes import RECOMMENDED_COUNT_SETTINGS

ROWS = ("pca", "harmony", "scvi", "skvae")
THREADS = -1
# pbmc3k's Seurat labels and pbmc_facs' subpop, in the pair README's shared vocabulary
COARSE = {"Naive CD4 T": "T cell", "Memory CD4 T": "T cell", "CD8 T": "T cell", "B": "B cell", "NK": "NK cell",
          "CD14+ Mono": "CD14+", "FCGR3A+ Mono": "FCGR3A+ Mono", "DC": "DC", "Platelet": "Platelet",
          "T cell": "T cell", "B cell": "B cell", "NK cell": "NK cell", "CD14+": "CD14+", "CD34+": "CD34+"}


def _facs(data_home):
    folder = Path(data_home) / "pbmc_facs"
    data = read_10x_mtx(folder)
    labels = pd.read_csv(folder / "celltypes.csv", index_col=0).reindex(np.asarray(data.obs_names))
    return data, labels


def load_pair(data_home):
    """Counts (CSR, cells x matched genes), batch and coarse label of each cell."""
    pbmc3k = fetch_pbmc3k(data_home, download_if_missing=False, qc=False)
    labelled = pbmc3k.target >= 0  # the 2,638 cells that pass the study's QC carry the Seurat labels
    facs, facs_labels = _facs(data_home)
    column = {gene: i for i, gene in enumerate(pbmc3k.gene_ids)}
    matched = [column[gene] for gene in facs.gene_ids]
    counts = sp.vstack([pbmc3k.data[labelled][:, matched], facs.data], format="csr").astype(np.float32)
    batch = np.array(["pbmc3k"] * int(labelled.sum()) + ["pbmc_facs"] * facs.data.shape[0], dtype=object)
    labels = np.concatenate([np.asarray(pbmc3k.target_names)[pbmc3k.target[labelled]], facs_labels["subpop"]])
    return counts, batch, np.array([COARSE[label] for label in labels])


def load_semisynthetic(data_home, seed=0):
    """pbmc_facs in three random batches, each thinned per gene and per cell; labels the purified populations."""
    facs, labels = _facs(data_home)
    counts = facs.data.tocsr().astype(np.int64)
    rng = np.random.RandomState(seed)
    batch = rng.randint(3, size=counts.shape[0])
    gene_factor = np.exp(-np.abs(rng.normal(0.0, 0.5, size=(3, counts.shape[1]))))
    library_factor = np.array([1.0, 0.75, 0.5])
    rows = np.repeat(np.arange(counts.shape[0]), np.diff(counts.indptr))
    keep = library_factor[batch[rows]] * gene_factor[batch[rows], counts.indices]
    thinned = sp.csr_matrix((rng.binomial(counts.data, keep), counts.indices, counts.indptr), counts.shape)
    thinned.eliminate_zeros()
    return thinned.astype(np.float32), np.array(["batch 1", "batch 2", "batch 3"], dtype=object)[batch], \
        labels["subpop"].to_numpy()


def load_toy(data_home=None, n=1500, n_genes=200, seed=0):
    rng = np.random.RandomState(seed)
    profiles = rng.gamma(0.5, 2.0, size=(3, n_genes))
    types, batch = rng.randint(3, size=n), rng.randint(2, size=n)
    effect = np.exp(rng.normal(0, 0.5, size=(2, n_genes)))
    counts = rng.poisson(profiles[types] * effect[batch] * 3).astype(np.float32)
    return sp.csr_matrix(counts), np.array(["a", "b"], dtype=object)[batch], np.array(["x", "y", "z"])[types]


LOADERS = {"pair": load_pair, "semisynthetic": load_semisynthetic, "toy": load_toy}


def timed(fit):
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        codes = fit()
    return np.asarray(codes, dtype=np.float32), time.perf_counter() - start


#: ``--sweep``: the batch-aware recipe of the previous round, (128, 128) without an adversary, with one change at a
#: time (the evidence for the current recipe, which is the last row)
PREVIOUS_RECIPE = {"hidden_layer_sizes": (128, 128), "batch_adversary": 0.0}
SWEEP = {
    "previous recipe": {},
    "encode_batch=True": {"encode_batch": True},
    "beta=2": {"beta": 2.0},
    "hidden (128,)": {"hidden_layer_sizes": (128,)},
    "400 epochs, warm-up 400": {"kl_warmup_epochs": 400, "max_epochs": 400},
    "dispersion=gene-batch": {"dispersion": "gene-batch"},
    "batch_adversary=1": {"batch_adversary": 1.0},
    "batch_adversary=10": {"batch_adversary": 10.0},
    "hidden (128,), batch_adversary=1": {"hidden_layer_sizes": (128,), "batch_adversary": 1.0},
    "hidden (128,), batch_adversary=10": {"hidden_layer_sizes": (128,), "batch_adversary": 10.0},
}


def sweep(counts, batch, seeds, names):
    """Yield (row name, codes, fit seconds) of the previous batch-aware recipe with each ``SWEEP`` change, per seed."""
    for name in names:
        for seed in seeds:
            recipe = make_count_embedder(random_state=seed, n_jobs=THREADS, **{**PREVIOUS_RECIPE, **SWEEP[name]})
            # an encoder that reads the batch needs it in transform as well
            read = {"batch": batch} if recipe["embedder"].encode_batch else {}
            yield (f"{name}, seed {seed}", *timed(lambda r=recipe, read=read: r["embedder"].transform(
                r.fit(counts, genes__batch=batch, embedder__batch=batch)["genes"].transform(counts), **read)))


def embeddings(counts, batch, rows, epochs):
    """Yield (row name, codes, fit seconds); the PCA is yielded first (scib-metrics compares with it)."""
    genes = HighlyVariableGenes(min(2000, counts.shape[1])).fit(counts, batch=batch)
    selected = genes.transform(counts)
    scaled = make_pipeline(LogNormalizer(), ClippedStandardScaler()).fit_transform(selected)
    pca, seconds = timed(lambda: PCA(50, random_state=0).fit_transform(scaled))
    yield "PCA(50), uncorrected", pca, seconds
    if "harmony" in rows:
        try:
            import harmonypy
        except ImportError:
            print("[skip] Harmony: harmonypy is not installed (pip install harmonypy)")
        else:
            meta = pd.DataFrame({"batch": batch})
            codes, seconds = timed(lambda: np.asarray(harmonypy.run_harmony(pca, meta, ["batch"], random_state=0).Z_corr))
            yield f"Harmony {harmonypy.__version__} on PCA(50)", codes if codes.shape[0] == len(batch) else codes.T, seconds
    if "scvi" in rows:
        try:
            import anndata
            import scvi
        except ImportError:
            print("[skip] scVI: scvi-tools is not installed (pip install scvi-tools)")
        else:
            scvi.settings.seed = 0
            adata = anndata.AnnData(selected.astype(np.float32), obs=pd.DataFrame({"batch": batch}))
            scvi.model.SCVI.setup_anndata(adata, batch_key="batch")
            model = scvi.model.SCVI(adata)
            _, seconds = timed(lambda: model.train(accelerator="cpu", enable_progress_bar=False))
            epochs_run = len(model.history["elbo_train"])
            yield f"scVI {scvi.__version__} defaults, batch_key ({epochs_run} epochs)", \
                model.get_latent_representation().astype(np.float32), seconds
    if "skvae" in rows:
        common = {"random_state": 0, "n_jobs": THREADS, "max_epochs": epochs}
        recipe = make_count_embedder(**common)
        yield ("skvae make_count_embedder(), no batch", *timed(lambda: recipe.fit_transform(counts)))
        recipe = make_count_embedder(**common)
        yield ("skvae make_count_embedder(), batch", *timed(
            lambda: recipe.fit(counts, genes__batch=batch, embedder__batch=batch).transform(counts)))
        settings = {**RECOMMENDED_COUNT_SETTINGS, **common}
        no_kl = {key: value for key, value in settings.items() if key not in ("beta", "kl_warmup_epochs")}
        for name, estimator in (("autoencoder", AutoencoderEmbedder(**no_kl)), ("beta-VSC", BetaVSCEmbedder(**settings))):
            yield (f"skvae {name} nb, batch (2,000 genes)", *timed(lambda e=estimator: e.fit_transform(selected, batch=batch)))


def scib_table(codes, batch, labels):
    """scib-metrics' unscaled scores of every embedding (rows), with the PCA as the pre-integration reference."""
    import anndata
    from scib_metrics.benchmark import Benchmarker

    adata = anndata.AnnData(np.zeros((len(batch), 1), dtype=np.float32),
                            obs=pd.DataFrame({"batch": pd.Categorical(batch), "label": pd.Categorical(labels)}))
    keys = {}
    for i, (name, values) in enumerate(codes.items()):
        keys[f"X_{i}"] = name
        adata.obsm[f"X_{i}"] = values
    benchmarker = Benchmarker(adata, batch_key="batch", label_key="label", embedding_obsm_keys=list(keys),
                              pre_integrated_embedding_obsm_key="X_0", n_jobs=os.cpu_count())
    benchmarker.benchmark()
    table = benchmarker.get_results(min_max_scale=False)
    table = table[table.index != "Metric Type"].rename(index=keys)
    return table.apply(pd.to_numeric, errors="coerce")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-home", default=os.environ.get("SKVAE_DATA", Path(__file__).parents[1] / ".." / "shared" / "data"))
    parser.add_argument("--datasets", default="pair,semisynthetic")
    parser.add_argument("--epochs", type=int, default=200, help="epochs of every skvae model")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"which rows, of {', '.join(ROWS)} (PCA always)")
    parser.add_argument("--out", default=None, help="also write the tables as CSV here")
    parser.add_argument("--sweep", default=None,
                        help="instead of the rows: PCA and these changes (';'-separated) to the previous batch-aware "
                             f"recipe, of {'; '.join(SWEEP)}")
    parser.add_argument("--seeds", default="0", help="random_state of each --sweep fit, comma-separated")
    args = parser.parse_args()
    rows = set(args.rows.split(","))
    print(f"skvae {skvae.__version__}, torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores")
    tables = []
    for dataset in args.datasets.split(","):
        counts, batch, labels = LOADERS[dataset](args.data_home)
        print(f"\n== {dataset}: {counts.shape[0]} cells x {counts.shape[1]} genes, batches "
              f"{dict(zip(*np.unique(batch, return_counts=True), strict=True))}", flush=True)
        codes, seconds = {}, {}
        if args.sweep:
            pca = next(embeddings(counts, batch, (), args.epochs))
            runs = itertools.chain([pca], sweep(counts, batch, [int(seed) for seed in args.seeds.split(",")],
                                                  args.sweep.split(";")))
        else:
            runs = embeddings(counts, batch, rows, args.epochs)
        for name, values, fit_seconds in runs:
            codes[name], seconds[name] = values, fit_seconds
            print(f"  {name}: {values.shape[1]} dimensions, fit {fit_seconds:.1f} s", flush=True)
        table = scib_table(codes, batch, labels)
        table["fit s"] = pd.Series(seconds)
        table.insert(0, "data", dataset)
        tables.append(table)
        summary = table[["Batch correction", "Bio conservation", "Total", "fit s"]]
        with pd.option_context("display.width", 250, "display.max_columns", 20):
            print(summary.to_string(float_format="{:.3f}".format), flush=True)
    table = pd.concat(tables)
    with pd.option_context("display.width", 300, "display.max_columns", 30):
        print("\nAll metrics (unscaled):")
        print(table.to_string(float_format="{:.3f}".format))
    if args.out:
        table.to_csv(args.out)


if __name__ == "__main__":
    main()
