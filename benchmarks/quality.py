"""Embedding quality on labelled data: PCA, the Gaussian models, the count models, the recommendation, scVI.

Data sets (each read from the data folder, skipped with a message when absent):
- ``pbmc3k``: 10x PBMC3k with the Seurat tutorial's 9 cluster labels (found by clustering
  PCA components: they favour PCA);
- ``pbmc_facs``: 3,774 bead-purified blood cells (Zheng et al. 2017), labels from the
  purification: ``celltype`` (10 populations) and ``subpop`` (5 coarse groups).
Both get the Seurat tutorial's QC and the same 2,000 highly variable genes
(``HighlyVariableGenes`` on the counts) for every method.

Rows:
- PCA(10) and PCA(50) of the scaled log-normalised genes;
- each skvae model with the Gaussian likelihood at the seed study's settings (6 latent
  dimensions, beta 2, 200 epochs) on the same scaled genes;
- each model with each count likelihood on the counts, with the recommended settings
  (:data:`skvae.recipes.RECOMMENDED_COUNT_SETTINGS`; the autoencoder without beta and warm-up);
- ``make_count_embedder()`` on the counts of all QC'd genes (it selects its genes itself);
- scVI with its defaults on the same counts and genes, when scvi-tools is installed (a
  benchmark-only extra: ``pip install scvi-tools``).

Columns: the study's NMI, ARI, homogeneity and completeness (2-D t-SNE with perplexity 40,
then KMeans with one cluster per label; mean over ``--seeds`` seeds), silhouette and 5-fold
15-NN accuracy on the codes, ARI of KMeans on the codes, fit seconds and seconds per epoch.
Every neural model trains with random_state=0 and every core; fits run one at a time.

Usage: python benchmarks/quality.py [--data-home ../shared/data] [--datasets pbmc3k,pbmc_facs]
                                    [--seeds 3] [--epochs 200] [--rows pca,gaussian,counts,recommended,scvi]
                                    [--variants '[{"hidden_layer_sizes": [128]}]']
"""

import argparse
import json
import os
import platform
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE
from sklearn.metrics import adjusted_rand_score
from sklearn.pipeline import make_pipeline

import skvae
from skvae import AutoencoderEmbedder, BetaVAEEmbedder, BetaVSCEmbedder, make_count_embedder
from skvae.datasets import fetch_pbmc3k, read_10x_mtx
from skvae.preprocessing import ClippedStandardScaler, HighlyVariableGenes, LogNormalizer, filter_cells_genes
from skvae.recipes import RECOMMENDED_COUNT_SETTINGS, _final_step
from skvae.study.evaluation import clustering_scores, latent_scores

MODELS = {"AE": AutoencoderEmbedder, "beta-VAE": BetaVAEEmbedder, "beta-VSC": BetaVSCEmbedder}
SEED_SETTINGS = {"n_components": 6, "max_epochs": 200}  # the course project's; beta 2 for the variational ones
THREADS = -1
ROWS = ("pca", "gaussian", "counts", "recommended", "scvi")


def load(name, data_home):
    """QC'd counts (CSR), and a dict of label arrays, of one data set; None when its files are absent."""
    folder = Path(data_home) / name
    if not folder.is_dir():
        print(f"[skip] {name}: no folder {folder}")
        return None
    if name == "pbmc3k":
        data = fetch_pbmc3k(data_home, download_if_missing=False)
        return data.data, {"label": np.asarray(data.target_names)[data.target]}
    data = read_10x_mtx(folder)
    kept = filter_cells_genes(data.data, data.feature_names)
    labels = pd.read_csv(folder / "celltypes.csv", index_col=0).reindex(np.asarray(data.obs_names)[kept.cell_mask])
    if labels.isna().any().any():
        raise ValueError(f"{folder / 'celltypes.csv'} lacks labels for some QC'd cells")
    counts = data.data[kept.cell_mask][:, kept.gene_mask]
    return counts, {column: labels[column].to_numpy() for column in ("celltype", "subpop")}


def score(codes, labels, seeds):
    """Every column but the timings, for each label set: the t-SNE is computed once per seed."""
    tsnes = [TSNE(n_components=2, perplexity=40.0, random_state=seed).fit_transform(codes) for seed in seeds]
    rows = {}
    for name, truth in labels.items():
        k = len(np.unique(truth))
        study = pd.DataFrame([clustering_scores(truth, KMeans(k, n_init=10, random_state=seed).fit_predict(tsne))
                              for seed, tsne in zip(seeds, tsnes, strict=True)]).mean()
        latent = latent_scores(codes, truth)
        on_codes = adjusted_rand_score(truth, KMeans(k, n_init=10, random_state=0).fit_predict(codes))
        rows[name] = {**study.to_dict(), **latent, "KMeans ARI": on_codes}
    return rows


def fit_timed(estimator, X):
    """Codes, fit seconds and seconds per epoch (fit time / epochs, set-up included) of an estimator."""
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        codes = estimator.fit_transform(X)
    seconds = time.perf_counter() - start
    for warning in caught:
        if "collapse" in str(warning.message).lower():
            print(f"    warning: {warning.message}")
    return np.asarray(codes, dtype=np.float64), seconds, seconds / max(1, getattr(_final_step(estimator), "n_iter_", 1))


def scvi_codes(counts, epochs=None):
    """scVI with its defaults on ``counts``; None when scvi-tools is not installed."""
    try:
        import anndata
        import scvi
    except ImportError:
        return None
    scvi.settings.seed = 0
    adata = anndata.AnnData(counts.astype(np.float32))
    scvi.model.SCVI.setup_anndata(adata)
    model = scvi.model.SCVI(adata)
    start = time.perf_counter()
    model.train(max_epochs=epochs, accelerator="cpu", enable_progress_bar=False)
    seconds = time.perf_counter() - start
    n_epochs = len(model.history["elbo_train"])
    return model.get_latent_representation(), seconds, seconds / n_epochs, scvi.__version__


def embeddings(counts, rows, epochs, variants=()):
    """Yield (row name, codes, fit seconds, seconds per epoch) for the rows asked for."""
    genes = HighlyVariableGenes(2000).fit(counts)
    selected = genes.transform(counts)
    scaled = make_pipeline(LogNormalizer(), ClippedStandardScaler()).fit_transform(selected)
    if "pca" in rows:
        for n in (10, 50):
            start = time.perf_counter()
            codes = PCA(n, random_state=0).fit_transform(scaled)
            yield f"PCA({n})", codes, time.perf_counter() - start, np.nan
    common = {"random_state": 0, "n_jobs": THREADS}
    if "gaussian" in rows:
        for name, model in MODELS.items():
            beta = {} if model is AutoencoderEmbedder else {"beta": 2.0}
            estimator = model(**{**SEED_SETTINGS, "max_epochs": epochs}, **beta, **common)
            yield (f"{name} gaussian (seed settings)", *fit_timed(estimator, scaled))
    if "counts" in rows:
        for likelihood in ("poisson", "nb", "zinb"):
            for name, model in MODELS.items():
                settings = {**RECOMMENDED_COUNT_SETTINGS, "likelihood": likelihood, "max_epochs": epochs}
                if model is AutoencoderEmbedder:
                    settings = {key: value for key, value in settings.items() if key not in ("beta", "kl_warmup_epochs")}
                yield (f"{name} {likelihood} (recommended settings)", *fit_timed(model(**settings, **common), selected))
    if "recommended" in rows:
        yield ("make_count_embedder()", *fit_timed(make_count_embedder(**common, max_epochs=epochs), counts))
        for overrides in variants:
            name = ", ".join(f"{key}={value!r}" for key, value in overrides.items())
            yield (f"make_count_embedder({name})",
                   *fit_timed(make_count_embedder(**{**common, "max_epochs": epochs, **overrides}), counts))
    if "scvi" in rows:
        result = scvi_codes(selected)
        if result is None:
            print("[skip] scVI: scvi-tools is not installed (pip install scvi-tools)")
        else:
            codes, seconds, per_epoch, version = result
            yield f"scVI {version} (defaults)", codes, seconds, per_epoch


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-home", default=os.environ.get("SKVAE_DATA", Path(__file__).parents[1] / ".." / "shared" / "data"))
    parser.add_argument("--datasets", default="pbmc3k,pbmc_facs")
    parser.add_argument("--seeds", type=int, default=3, help="t-SNE + KMeans seeds per embedding")
    parser.add_argument("--epochs", type=int, default=200, help="epochs of every skvae model")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"which rows, of {', '.join(ROWS)}")
    parser.add_argument("--out", default=None, help="also write the table as CSV here")
    parser.add_argument("--variants", default="[]",
                        help='with the recommended row: also the recipe with these overrides, a JSON list of objects, '
                             'e.g. \'[{"hidden_layer_sizes": [128]}]\' (lists become tuples)')
    args = parser.parse_args()
    rows = set(args.rows.split(","))
    variants = [{key: tuple(value) if isinstance(value, list) else value for key, value in overrides.items()}
                for overrides in json.loads(args.variants)]
    print(f"skvae {skvae.__version__}, torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores; t-SNE + KMeans seeds 0..{args.seeds - 1}")
    tables = []
    for dataset in args.datasets.split(","):
        loaded = load(dataset, args.data_home)
        if loaded is None:
            continue
        counts, labels = loaded
        print(f"\n== {dataset}: {counts.shape[0]} cells x {counts.shape[1]} genes (2,000 highly variable used)", flush=True)
        for row, codes, seconds, per_epoch in embeddings(counts, rows, args.epochs, variants):
            for labelling, scores in score(codes, labels, range(args.seeds)).items():
                tables.append({"data": dataset, "labels": labelling, "method": row, **scores,
                               "fit s": seconds, "s/epoch": per_epoch})
                print(f"{dataset:10s} {labelling:9s} {row:42s} ARI {scores['ARI']:.3f}  15-NN "
                      f"{scores['kNN accuracy']:.3f}  KMeans ARI {scores['KMeans ARI']:.3f}  fit {seconds:.0f} s",
                      flush=True)
    table = pd.DataFrame(tables)
    if table.empty:
        print("No data set found: nothing measured.")
        return
    with pd.option_context("display.width", 250, "display.max_columns", 20, "display.precision", 3):
        for (dataset, labelling), part in table.groupby(["data", "labels"], sort=False):
            print(f"\n{dataset}, labels {labelling!r}")
            print(part.drop(columns=["data", "labels"]).set_index("method").to_string(float_format="{:.3f}".format))
    if args.out:
        table.to_csv(args.out, index=False)


if __name__ == "__main__":
    main()
