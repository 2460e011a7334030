"""The PBMC3k study end to end: data, preprocessing, four embeddings, evaluation, report.

Reproduces the course project "Variational autoencoders for single-cell
transcriptomics data" (see docs/) with PCA as a baseline: ``python -m skvae study``.
"""

import os
import platform
import shutil
import tempfile
import time
from importlib.metadata import version
from numbers import Integral
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE
from sklearn.pipeline import make_pipeline
from sklearn.utils import check_scalar

from .._threads import limited_threads
from ..datasets import fetch_pbmc3k
from ..estimators import AutoencoderEmbedder, BetaVAEEmbedder, BetaVSCEmbedder
from ..preprocessing import ClippedStandardScaler, LogNormalizer
from ..recipes import _final_step, make_count_embedder
from .evaluation import evaluate_embedding
from .plotting import (
    plot_embedding,
    plot_metrics_heatmap,
    plot_spike_probabilities,
    plot_training_history,
)

N_COMPONENTS = 6
PERPLEXITY = 40.0
BETA = 2.0
MODELS = {
    "pca": "PCA",
    "ae": "Autoencoder",
    "vae": "beta-VAE",
    "vsc": "beta-VSC",
    "counts": "count model*",
}
# beyond the original study: skvae's recommendation for raw counts, which reads the counts, not the scaled data
COUNT_MODELS = {"counts"}
# ARI and NMI the course project reported (AE / beta-VAE / beta-VSC), one t-SNE + KMeans run each
ORIGINAL = {"Autoencoder": (0.58, 0.72), "beta-VAE": (0.44, 0.61), "beta-VSC": (0.47, 0.65)}


def make_embedders(epochs, *, verbose=1, random_state=0, n_jobs=None):
    """The study's four embedders, keyed by the names of :data:`MODELS`.

    Parameters
    ----------
    epochs : int
        Training epochs of the neural models.
    verbose : int, default=1
        Their ``verbose``.
    random_state : int, default=0
        Seeds the neural models; PCA's randomized solver always uses 0.
    n_jobs : int, default=None
        Their ``n_jobs``: threads for training (None: 1).

    Returns
    -------
    embedders : dict of str to estimator
        ``"pca"``, ``"ae"``, ``"vae"``, ``"vsc"``, and ``"counts"``:
        :func:`skvae.make_count_embedder` with ``max_epochs=epochs``, beyond the
        original study (it takes raw counts).

    Examples
    --------
    >>> from skvae.study import make_embedders
    >>> make_embedders(200)["vsc"].get_params()["beta"]
    2.0
    """
    neural = dict(n_components=N_COMPONENTS, max_epochs=epochs, random_state=random_state, verbose=verbose,
                  n_jobs=n_jobs)
    return {
        # one seed for PCA's randomized solver: PCA has no randomness of its own, so its runs differ only in
        # t-SNE + KMeans (an exact SVD would take 20x longer)
        "pca": PCA(n_components=N_COMPONENTS, random_state=0),
        "ae": AutoencoderEmbedder(**neural),
        "vae": BetaVAEEmbedder(beta=BETA, **neural),
        "vsc": BetaVSCEmbedder(beta=BETA, prior_activity=0.5, spike_sharpness=50.0, **neural),
        "counts": make_count_embedder(max_epochs=epochs, random_state=random_state, verbose=verbose, n_jobs=n_jobs),
    }


def _check_models(models):
    """``models`` as a list of keys of :data:`MODELS`; a ValueError naming the choices otherwise."""
    models = list(models)
    unknown = sorted(set(models) - set(MODELS))
    if unknown or not models:
        raise ValueError(f"choose among {', '.join(MODELS)}; got {models!r}")
    repeated = sorted({model for model in models if models.count(model) > 1})
    if repeated:
        raise ValueError(f"each model once: {', '.join(repeated)} is listed more than once in {models!r}")
    return models


def _tsne_panels(coordinates, cell_types, projection=None):
    """One t-SNE panel per model, two per row, and one legend of cell types beside them."""
    columns = min(len(coordinates), 2)
    rows = -(-len(coordinates) // columns)
    figure = plt.figure(figsize=(6.5 * columns + 1.5, 5.5 * rows), layout="constrained")
    for i, (name, xy) in enumerate(coordinates.items()):
        ax = figure.add_subplot(rows, columns, i + 1, projection=projection)
        plot_embedding(xy, cell_types, ax=ax, title=f"{name}: {xy.shape[1]}-D t-SNE of the codes", legend=False)
    figure.legend(*ax.get_legend_handles_labels(), loc="outside right center", markerscale=3, frameon=False)
    return figure


def run_study(*, epochs=200, models=tuple(MODELS), n_seeds=3, out="skvae-report", data_home=None, verbose=1,
              n_jobs=None, tsne_3d=False):
    """Run the study and write ``report.md``, its figures and tables into ``out``.

    ``out`` receives ``report.md``, the PNG figures, ``scores.csv`` (one row per
    model and seed) and ``summary.csv`` (the report's table: mean ± sd per model,
    and training time).

    Parameters
    ----------
    epochs : int, default=200
        Training epochs of the neural models.
    models : sequence of {"pca", "ae", "vae", "vsc", "counts"}, default=all
        "counts" is beyond the original study: :func:`skvae.make_count_embedder`
        on the raw counts of the QC'd cells (it selects 2,000 genes and models
        the counts with a negative binomial); the report marks it with ``*``.
    n_seeds : int, default=3
        Runs per model. Run ``i`` trains with ``random_state=i`` and evaluates
        with t-SNE + KMeans seed ``i``, so the reported sd covers both the
        training and the evaluation's randomness.
    out : str or path-like, default="skvae-report"
        Report folder, written whole or not at all: the report is written into a
        temporary folder beside it and moved into place at the end. An existing
        ``out`` must be empty or a previous report (it holds ``report.md``); it is
        replaced.
    data_home : str or path-like, default=None
        See :func:`skvae.datasets.get_data_home`.
    verbose : int, default=1
        Progress lines on the terminal: one per model and step, and one per epoch.
    n_jobs : int, default=None
        Threads for training the neural models (None: 1, which a busy machine
        slows down least; -1: every core). The README's table was made with 2
        threads on a 2-core CPU; float32 sums in another order give results that
        differ in the last digits, so pass ``n_jobs=2`` there to reproduce it.
    tsne_3d : bool, default=False
        Also draw a 3-D t-SNE of each embedding (one more t-SNE per model).

    Returns
    -------
    scores : pandas.DataFrame
        One row per model and seed.

    Examples
    --------
    >>> import tempfile
    >>> from skvae.study import run_study
    >>> out = tempfile.mkdtemp()
    >>> scores = run_study(epochs=1, models=["pca"], n_seeds=1, out=out, verbose=0)
    >>> scores.loc["PCA", "kNN accuracy"].item() > 0.85
    True
    """
    check_scalar(epochs, "epochs", Integral, min_val=1)
    check_scalar(n_seeds, "n_seeds", Integral, min_val=1)
    if n_jobs is not None and (not isinstance(n_jobs, Integral) or n_jobs == 0):
        raise ValueError(f"n_jobs must be None, a positive number of threads or -1 (every core), got {n_jobs!r}.")
    models = _check_models(models)
    out = _check_report_folder(Path(out))
    say = print if verbose else (lambda *args, **kwargs: None)

    pbmc = fetch_pbmc3k(data_home)
    cell_types = pbmc.target_names[pbmc.target]
    X = make_pipeline(LogNormalizer(), ClippedStandardScaler()).fit_transform(pbmc.data).astype(np.float32)
    say(f"PBMC3k: {X.shape[0]} cells x {X.shape[1]} genes, {len(pbmc.target_names)} cell types")

    scores, seconds, codes, tsne2d, embedders = [], {}, {}, {}, {}
    for key in models:
        name = MODELS[key]
        seconds[name] = []
        for seed in range(n_seeds):
            embedder = make_embedders(epochs, verbose=max(verbose - 1, 0) if verbose else 0, random_state=seed,
                                      n_jobs=n_jobs)[key]
            say(f"[{name}] run {seed + 1}/{n_seeds}: training (random_state={seed}) ...", flush=True)
            start = time.perf_counter()
            code = embedder.fit_transform(pbmc.data if key in COUNT_MODELS else X)
            seconds[name].append(time.perf_counter() - start)
            say(f"[{name}] run {seed + 1}/{n_seeds}: trained in {seconds[name][-1]:.1f} s; evaluating ...", flush=True)
            table, tsne = evaluate_embedding(code, cell_types, seeds=[seed], perplexity=PERPLEXITY, return_tsne=True)
            scores.append(table.assign(model=name))
            if seed == 0:  # the figures show the first run
                codes[name], tsne2d[name], embedders[key] = code, tsne, embedder
    scores = pd.concat(scores).reset_index().set_index(["model", "seed"])
    means = scores.groupby("model", sort=False).mean()
    stds = scores.groupby("model", sort=False).std(ddof=1).fillna(0.0)
    # a score that is the same in every run has no spread to report (PCA's silhouette and k-NN)
    stds = stds.where(scores.groupby("model", sort=False).nunique() > 1)

    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))
    try:
        figures = _draw_figures(scratch, codes, tsne2d, cell_types, means, stds, embedders, models, X,
                                tsne_3d=tsne_3d, say=say)
        with limited_threads(n_jobs) as n_threads:  # what the training ran with
            pass
        _write_report(scratch, means, stds, seconds, epochs, n_seeds, X.shape, figures, n_threads)
        scores.to_csv(scratch / "scores.csv")
        _move_into_place(scratch, out)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    say(f"Report written to {out / 'report.md'}")
    return scores


def _check_report_folder(out):
    """``out``, once it is known to be a place a report can go; before any work, so a refusal costs nothing."""
    if out.name in ("", ".", ".."):
        raise ValueError(f"The report folder needs a name of its own (got {str(out)!r}): the report replaces the "
                         "folder as a whole. Choose another --out, such as skvae-report.")
    if out.exists() and not out.is_dir():
        raise ValueError(f"The report folder {out} is a file; choose another --out.")
    if out.is_dir() and any(out.iterdir()) and not (out / "report.md").is_file():
        raise ValueError(f"{out} holds files but no report.md: it is not a skvae report folder, and the "
                         "report would replace it. Choose another --out, or an empty folder.")
    existing = next(folder for folder in (out, *out.parents) if folder.exists())
    if not existing.is_dir():
        raise ValueError(f"The report folder {out} lies under {existing}, which is a file; choose another --out.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"Cannot write the report folder {out}: {existing} is not writable.")
    return out


def _move_into_place(scratch, out):
    """Replace ``out`` by the complete report in ``scratch``; the old report is removed only after."""
    if not out.exists():
        os.replace(scratch, out)
        return
    previous = out.with_name(f".{out.name}.previous-{os.getpid()}")
    os.replace(out, previous)
    try:
        os.replace(scratch, out)
    except OSError:
        os.replace(previous, out)
        raise
    shutil.rmtree(previous, ignore_errors=True)


def _draw_figures(out, codes, tsne2d, cell_types, means, stds, embedders, models, X, *, tsne_3d, say):
    figures = {}
    say("Drawing figures: 2-D t-SNE ...", flush=True)
    figure = _tsne_panels(tsne2d, cell_types)
    figures["2-D t-SNE of each embedding, by cell type (first run: random_state=0)"] = _save(figure, out / "tsne_2d.png")
    if tsne_3d:
        say("Drawing figures: 3-D t-SNE (one more t-SNE per model) ...", flush=True)
        tsne3d = {
            name: TSNE(n_components=3, perplexity=PERPLEXITY, random_state=0).fit_transform(code)
            for name, code in codes.items()
        }
        figure = _tsne_panels(tsne3d, cell_types, projection="3d")
        figures["3-D t-SNE of each embedding, by cell type (first run: random_state=0)"] = _save(figure, out / "tsne_3d.png")

    say("Drawing figures: scores, training losses, VSC spikes ...", flush=True)
    figure = plt.figure(figsize=(9, 1.2 + 0.8 * len(means)), layout="constrained")
    plot_metrics_heatmap(means, stds, ax=figure.add_subplot())
    figures["Scores, models x metrics"] = _save(figure, out / "metrics.png")

    trained = {name: _final_step(embedders[key]) for key, name in MODELS.items() if key in models and key != "pca"}
    if trained:
        # one panel each: the autoencoder's squared error and the beta-weighted VAE losses have other scales
        figure, axes = plt.subplots(1, len(trained), figsize=(3.6 * len(trained), 3.4), layout="constrained",
                                    squeeze=False)
        for ax, (name, estimator) in zip(axes[0], trained.items()):
            plot_training_history({name: estimator.history_}, ax=ax)
            beta = estimator.get_params().get("beta")
            ax.set_title(name if beta is None else f"{name}\n(reconstruction + {beta:g} KL)")
            ax.get_legend().remove()
        figures["Training loss per cell, one panel per model (first run)"] = _save(figure, out / "training_loss.png")

    if "vsc" in models:
        figure = plt.figure(figsize=(7, 5), layout="constrained")
        plot_spike_probabilities(embedders["vsc"].spike_probabilities(X), cell_types, ax=figure.add_subplot())
        figures["beta-VSC: which latent dimensions each cell type uses"] = _save(figure, out / "vsc_spikes.png")
    return figures


def _save(figure, path):
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path.name


def _write_report(out, means, stds, seconds, epochs, n_seeds, shape, figures, n_threads):
    table = means.map(lambda v: f"{v:.3f}") + stds.map(lambda v: "" if pd.isna(v) else f" ± {v:.3f}")
    table["training time (s)"] = [f"{np.mean(seconds[name]):.1f}" for name in table.index]
    original = pd.DataFrame(ORIGINAL, index=["ARI", "NMI"]).T
    packages = ["skvae", "torch", "numpy", "scipy", "scikit-learn", "pandas", "matplotlib"]
    lines = [
        "# skvae study: PBMC3k",
        "",
        (
            f"Data: 10x Genomics PBMC3k after the Seurat tutorial's QC, {shape[0]} cells x {shape[1]} genes; "
            "LogNormalize (10,000) then ScaleData (z-score per gene, clipped at 10). "
            "Labels: the tutorial's 9 cell types."
        ),
        "",
        (
            f"Models: {N_COMPONENTS} latent dimensions; encoder 128-32-16, decoder 16-32-128; {epochs} epochs, "
            f"batch 256, Adam 1e-3; beta = {BETA} for the beta-VAE and beta-VSC (VSC: prior spike 0.5, c = 50); "
            "PCA with the same number of components as the baseline. Codes are posterior means (VSC: spike x mean)."
        ),
        "",
        (
            f"Evaluation: t-SNE (perplexity {PERPLEXITY:g}) + KMeans (k = 9) on the 2-D t-SNE: NMI, ARI, "
            "homogeneity, completeness. On the codes themselves: silhouette against the cell types and 5-fold "
            "k-NN (k = 15) accuracy."
        ),
        "",
        f"## Scores (mean ± sd over {n_seeds} runs)" if n_seeds > 1 else "## Scores (one run: no spread measured)",
        "",
        _markdown(table),
        "",
        (
            f"Each of the {n_seeds} runs of a model trains with its own random_state and evaluates with its own "
            "t-SNE + KMeans seed: the ± (sample sd) covers both. It is left out where a score is the same in every "
            "run (PCA's codes do not depend on a seed, so neither do its silhouette and k-NN accuracy). Gaps of a "
            "few hundredths between models are within this run-to-run spread: they are not a ranking. Training "
            "time is the mean over runs."
        ),
        "",
        (
            "\\* Beyond the original study: the count model is skvae's recommendation for raw UMI counts, "
            "`skvae.make_count_embedder()`. It reads the raw counts of the QC'd cells (not the scaled data), keeps "
            "the 2,000 most variable genes and trains a beta-VAE with a negative binomial likelihood and the cell's "
            "library size (as scVI), 10 latent dimensions, batch normalisation, dropout 0.1 and a KL warm-up. "
            "A count likelihood models what was measured, so the codes need no normalisation or scaling choices; "
            "the evidence for each setting, on PBMC3k and on purified blood cells whose labels no clustering made, "
            "is in the user guide (benchmarks/quality.py)."
        ) if MODELS["counts"] in means.index else "",
        "",
        "The course project reported, from one run each (no seeds, random codes rather than means):",
        "",
        _markdown(original.map(lambda v: f"{v:.2f}")),
        "",
        "## Figures",
        "",
        *[f"### {title}\n\n![{title}]({path})\n" for title, path in figures.items()],
        (
            "The beta-VSC's t-SNE shows thin one-dimensional filaments. They are the geometry of sparse codes, not "
            "trajectories: a cell whose code has one active dimension (the others exactly 0 in the spike) lies on "
            "a line through the origin, and t-SNE keeps such lines as threads. Read them as 'these cells use one "
            "latent dimension, with different strengths', not as cells moving from one state to another."
        ) if "beta-VSC" in means.index else "",
        "",
        "## Environment",
        "",
        (
            f"- machine: {platform.machine()}, {platform.system()}, {os.cpu_count()} cores, training on "
            f"{n_threads} thread{'s' if n_threads > 1 else ''} (n_jobs), device {'cuda' if torch.cuda.is_available() else 'cpu'}"
        ),
        *[f"- {p} {version(p)}" for p in packages],
        "",
    ]
    (out / "report.md").write_text("\n".join(lines))
    # numbers, not strings: one mean and one sd column per score (sd empty where runs do not differ)
    summary = pd.concat({"mean": means, "sd": stds}, axis=1).swaplevel(axis=1).sort_index(axis=1, level=0, sort_remaining=False)
    summary.columns = [f"{score} {stat}" for score, stat in summary.columns]
    summary["training time (s) mean"] = [np.mean(seconds[name]) for name in summary.index]
    summary["training time (s) sd"] = [np.std(seconds[name], ddof=1) if len(seconds[name]) > 1 else np.nan
                                       for name in summary.index]
    summary.to_csv(out / "summary.csv")


def _markdown(table):
    """A pandas DataFrame as a GitHub-flavoured Markdown table (no tabulate needed)."""
    header = [table.index.name or "model", *map(str, table.columns)]
    rows = [[str(index), *map(str, row)] for index, row in zip(table.index, table.to_numpy())]
    return "\n".join(
        ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]
    )
