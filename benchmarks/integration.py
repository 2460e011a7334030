"""Batch integration: skvae with and without batches against uncorrected PCA, Harmony and scVI, scored by scib-metrics.

Data sets (read from the data folder; see ``../shared/data/pbmc_pair/README.md``):
- ``pair``: pbmc3k (10x v1, one donor, its 2,638 labelled cells) and pbmc_facs (10x GemCode,
  purified populations of other donors, 3,774 cells) as two batches, genes matched by Ensembl
  id, the README's coarse labels. T, B, NK cells and CD14+ monocytes are in both batches; FCGR3A+
  monocytes, dendritic cells and platelets only in pbmc3k, CD34+ cells only in pbmc_facs.
- ``semisynthetic``: pbmc_facs split at random into three batches, each thinned binomially
  per gene (a per-gene multiplicative effect, ``exp(-|N(0, 0.5)|)``) and per cell (library size
  x 1.0, 0.75, 0.5); labels the purified populations (``subpop``), which no clustering made.
- ``semisynthetic-depth``: the same with the third batch thinned to a tenth of the first's
  depth (library x 1.0, 0.75, 0.1): does the correction hold when depths differ tenfold?
- ``toy``: 1,500 synthetic cells of 3 types in 2 batches (200 genes, per-gene log-normal effect),
  a quick check that needs no data folder.

Rows: PCA(50) of the scaled log-normalised genes (2,000 chosen within each batch); Harmony
(harmonypy) on that PCA; on the same genes' counts with ``batch_key``, scVI's defaults, scVI with
the settings scArches recommends for a reference that takes queries, and scANVI trained from
that scVI with the labels of the first batch only (the others unlabelled);
``make_count_embedder()`` on the counts of all genes without and with batches (its gene selection
then ranks genes within each batch); with ``variants``, the autoencoder and the beta-VSC with the
recommended count settings and batches on the 2,000 genes. The scVI and skvae rows are trained once
per ``--seeds`` seed and summarised as mean ± sd; fits run one at a time, on every core.

Columns: scib-metrics' ``Benchmarker`` with its defaults, ``get_results(min_max_scale=False)``
(bio conservation: isolated labels, KMeans NMI / ARI, silhouette label, cLISI; batch correction:
silhouette batch, iLISI, kBET, graph connectivity, PCR comparison; total = 0.6 bio + 0.4 batch),
and fit seconds. scib-metrics, harmonypy and scvi-tools are benchmark-only extras; a row whose
tool is missing is skipped with a message.

``--calibration null,shift``: what integration must leave alone, on pbmc_facs as two batches
(:func:`load_calibration`): ``null`` a random halving with no batch effect, ``shift`` three
purified populations in one batch only and the other batch thinned per gene and to half the
depth. Rows: PCA, Harmony, the recipe without batches, with batches and (shift) with
``batch_adversary=0``, each seed; columns: the purified labels' 15-NN accuracy and KMeans ARI, the
batch-specific populations' 15-NN label purity, the shared populations' mixing, and the overlap of
each cell's 15 neighbours with the fit without batches of the same seed (:func:`calibration_scores`).

``--shift-suite relatives,deep,pair``: integration where batches differ in composition and by a technology-sized
effect (:func:`load_shift`): ``relatives`` (pbmc_facs halved; batch B simulated in another technology, a per-gene
effect of log sd 0.5; CD8 T cells in batch B only, NK cells in batch A only: close relatives of the shared CD4 T
cells), ``deep`` (the same effect with batch B 10x deeper; NK cells and CD14+ monocytes in batch A only, CD34+
progenitors in batch B only), ``donors`` (pbmc_facs as 4 pseudo-donors of unequal sizes, each with a per-gene
donor effect of log sd 0.1-0.3; one lacks CD8 T cells, one NK cells, one CD14+ monocytes: :func:`load_donors`;
``donors-strong``: the same with technology-sized effects, log sd 0.5; ``donors-shared``: the same lacking nothing;
``donors-private``: NK cells in one donor alone, CD14+ monocytes in another alone)
and any data set above. The three are made without the CD34+ sort's cells that express another sort's programme
(74 B-cell- and monocyte-like cells: :func:`_suite_cells`; ``--keep-impure-sorts`` keeps them, as before
round 20). Rows: PCA, Harmony and scVI's defaults (first seed) and the
recipe without batches, with ``batch_model="layers"`` (its default), with ``batch_model="genes"`` and with
``"genes"`` and no adversary (``SHIFT_VARIANTS``; ``--variants`` picks; among them ``make_count_classifier`` given
the labels of a random 30 % or 10 % of the cells, its adversary gated by the types they show in each batch or not,
and with factors per gene at the recipe's adversary weight or at 1), each seed; columns:
:func:`calibration_scores` (as ``--calibration``'s: the overlap is with the fit without batches of the same seed, or
for a fit without batches the first seed's) and, where installed,
scib-metrics' batch correction, bio conservation and total.

``--covariates``: two covariates at once on ``two-level`` (:func:`load_two_level`, pbmc_facs as 6 samples nested in
2 technologies, each thinned by both): the recipe given the sample alone, the sample and the technology (the adversary
on the first column, the default; sample first or technology first), and both with the adversary on every column;
against Harmony on both and scVI with the technology as a categorical covariate (:func:`covariates`). Scored with the
sample as the batch.

``--scaling``: the recipe with batches on two batches of the semi-synthetic set at depth x1 and
x0.1 and on 500, 2,000 and 5,000 genes, with the size of the reconstruction's gradient at the code
that the adversary's reversed gradient is scaled by (:func:`scaling`).

``--sweep`` replaces the rows by PCA and the previous round's batch-aware recipe (hidden layers
(128, 128), no adversary) with one change at a time, each trained with every ``--seeds`` seed:
the evidence for the current recipe's settings (the user guide's "Integrating batches").

Usage: python benchmarks/integration.py [--data-home ../shared/data] [--datasets pair,semisynthetic]
                                        [--calibration null,shift] [--shift-suite relatives,deep,pair]
                                        [--variants "skvae recipe, no batch;..."] [--covariates] [--seeds 0,1,2]
                                        [--epochs 200]
                                        [--rows pca,harmony,scvi,scvi-scarches,scanvi,skvae] [--out table.csv]
                                        [--sweep "previous recipe;batch_adversary=10"]
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
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.metrics import adjusted_rand_score
from sklearn.model_selection import cross_val_score
from sklearn.neighbors import KNeighborsClassifier, NearestNeighbors
from sklearn.pipeline import make_pipeline

import skvae
from skvae import AutoencoderEmbedder, BetaVSCEmbedder, make_count_classifier, make_count_embedder
from skvae.datasets import fetch_pbmc3k, read_10x_mtx
from skvae.preprocessing import ClippedStandardScaler, HighlyVariableGenes, LogNormalizer
from skvae.recipes import RECOMMENDED_COUNT_SETTINGS

ROWS = ("pca", "harmony", "scvi", "scvi-scarches", "scanvi", "skvae", "variants")
DEFAULT_ROWS = "pca,harmony,scvi,scvi-scarches,scanvi,skvae"
THREADS = -1
# pbmc3k's Seurat labels and pbmc_facs' subpop, in the pair README's shared vocabulary
COARSE = {"Naive CD4 T": "T cell", "Memory CD4 T": "T cell", "CD8 T": "T cell", "B": "B cell", "NK": "NK cell",
          "CD14+ Mono": "CD14+", "FCGR3A+ Mono": "FCGR3A+ Mono", "DC": "DC", "Platelet": "Platelet",
          "T cell": "T cell", "B cell": "B cell", "NK cell": "NK cell", "CD14+": "CD14+", "CD34+": "CD34+"}


def agrees_with_label(X, labels, n_genes=2000):
    """Whether each cell's log-normalised profile correlates best with its own label's mean profile among the labels'.

    A purity check of labels that come from a purification (a sorted population's cells that express another sorted
    population's programme do not agree with their label): computed on one batch's cells, on its ``n_genes`` most
    variable genes, independent of any model.
    """
    logged = sp.csr_matrix(LogNormalizer().fit_transform(X))
    if logged.shape[1] > n_genes:  # the most variable genes of the log-normalised values
        variance = np.asarray(logged.multiply(logged).mean(axis=0)).ravel() - np.asarray(logged.mean(axis=0)).ravel() ** 2
        logged = logged[:, np.sort(np.argsort(-variance)[:n_genes])]
    logged = logged.toarray()
    types, codes = np.unique(labels, return_inverse=True)
    means = np.stack([logged[codes == code].mean(axis=0) for code in range(len(types))])

    def standardised(rows):
        rows = rows - rows.mean(axis=1, keepdims=True)
        return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)

    return (standardised(logged) @ standardised(means).T).argmax(axis=1) == codes


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


def load_semisynthetic(data_home, seed=0, library_factor=(1.0, 0.75, 0.5)):
    """pbmc_facs in three random batches, each thinned per gene and per cell; labels the purified populations."""
    facs, labels = _facs(data_home)
    counts = facs.data.tocsr().astype(np.int64)
    rng = np.random.RandomState(seed)
    batch = rng.randint(3, size=counts.shape[0])
    gene_factor = np.exp(-np.abs(rng.normal(0.0, 0.5, size=(3, counts.shape[1]))))
    return _thin(counts, batch, gene_factor, library_factor, rng), \
        np.array(["batch 1", "batch 2", "batch 3"], dtype=object)[batch], labels["subpop"].to_numpy()


def load_toy(data_home=None, n=1500, n_genes=200, seed=0):
    rng = np.random.RandomState(seed)
    profiles = rng.gamma(0.5, 2.0, size=(3, n_genes))
    types, batch = rng.randint(3, size=n), rng.randint(2, size=n)
    effect = np.exp(rng.normal(0, 0.5, size=(2, n_genes)))
    counts = rng.poisson(profiles[types] * effect[batch] * 3).astype(np.float32)
    return sp.csr_matrix(counts), np.array(["a", "b"], dtype=object)[batch], np.array(["x", "y", "z"])[types]


def load_semisynthetic_depth(data_home, seed=0):
    """The semi-synthetic set with its third batch thinned to a tenth of the first's depth (library x 0.1)."""
    return load_semisynthetic(data_home, seed, library_factor=(1.0, 0.75, 0.1))


def _deep_cells(counts, labels, rows, depth_of, rng, effect_sd, depth):
    """Deep cells in another technology simulated from the cells ``rows`` (the same draws for every caller).

    Each simulated cell's counts are drawn (Poisson) from its own expression proportions mixed half and half with its
    population's mean (its state is kept, its zeros are not all kept), times a per-gene technology effect
    ``exp(N(0, effect_sd))`` (the log-ratio sd between protocols), at ``depth`` times the median library of the cells
    ``depth_of`` (log-normal, sd 0.3, across cells).
    """
    library = np.asarray(counts.sum(axis=1)).ravel()
    proportions = sp.diags(1.0 / library) @ counts
    means = {label: np.asarray(proportions[labels == label].mean(axis=0)).ravel() for label in np.unique(labels)}
    effect = np.exp(rng.normal(0.0, effect_sd, size=counts.shape[1]))
    profile = 0.5 * proportions[rows].toarray() + 0.5 * np.vstack([means[label] for label in labels[rows]])
    profile *= effect
    profile /= profile.sum(axis=1, keepdims=True)
    size = np.median(library[depth_of]) * depth * rng.lognormal(0.0, 0.3, size=(len(rows), 1))
    return sp.csr_matrix(rng.poisson(profile * size).astype(np.float32))


def load_deep_query(data_home, seed=0, absent=("NK cell", "CD34+"), effect_sd=0.5, depth=10.0):
    """pbmc_facs as a shallow reference and a deep, technology-shifted query holding types the reference lacks.

    The cells are halved at random. The reference: the real cells of one half, without the populations of
    ``absent`` (NK cells are close relatives of the T cells it keeps; CD34+ progenitors are not). The query: a deep
    cell simulated from each cell of the other half, of every population (:func:`_deep_cells`). Labels: ``subpop``.
    """
    facs, labels = _facs(data_home)
    counts = facs.data.tocsr().astype(np.float64)
    labels = labels["subpop"].to_numpy()
    rng = np.random.RandomState(seed)
    query = rng.rand(counts.shape[0]) < 0.5
    rows = np.flatnonzero(query)
    simulated = _deep_cells(counts, labels, rows, ~query, rng, effect_sd, depth)
    keep = ~query & ~np.isin(labels, absent)
    counts = sp.vstack([counts[keep].astype(np.float32), simulated], format="csr")
    batch = np.array(["reference (10x)"] * int(keep.sum()) + ["query (deep)"] * len(rows), dtype=object)
    return counts, batch, np.concatenate([labels[keep], labels[rows]])


#: pbmc_facs' purified populations, CD4 and CD8 T cells apart (the shift suite's labels: close relatives)
FINE = {"CD19+ B": "B", "CD14+ Monocyte": "CD14+ Mono", "CD34+": "CD34+", "CD56+ NK": "NK",
        "CD4+ T Helper2": "CD4 T", "CD4+/CD25 T Reg": "CD4 T", "CD4+/CD45RA+/CD25- Naive T": "CD4 T",
        "CD4+/CD45RO+ Memory": "CD4 T", "CD8+ Cytotoxic T": "CD8 T", "CD8+/CD45RA+ Naive Cytotoxic": "CD8 T"}
#: ``--shift-suite``: which populations only batch A (real 10x cells) or only batch B (simulated cells of another
#: technology) holds, the per-gene technology effect's log sd, and batch B's depth over batch A's
SHIFT_SUITE = {
    "relatives": {"only_a": ("NK",), "only_b": ("CD8 T",), "effect_sd": 0.5, "depth": 1.0},
    "deep": {"only_a": ("NK", "CD14+ Mono"), "only_b": ("CD34+",), "effect_sd": 0.5, "depth": 10.0},
}


#: ``--shift-suite donors``: pbmc_facs as pseudo-donors (the batches) of unequal sizes, each with its own per-gene
#: effect (log-normal, each gene's sd drawn from 0.1-0.3, as benchmarks/de.py's donors), some lacking a population
DONORS = {"n_donors": 4, "lacking": {"donor 1": ("CD8 T",), "donor 2": ("NK",), "donor 3": ("CD14+ Mono",)},
          "effect_sd": (0.1, 0.3)}
#: ``donors-strong``: the same donors with effects of technologies (each gene's log sd 0.5); ``donors-shared``: the
#: same donors lacking nothing (the adversary's no-harm check with three batches or more); ``donors-private``: NK
#: cells in donor 1 alone, CD14+ monocytes in donor 2 alone (each population held by one donor or by all)
DONOR_SETS = {"donors": DONORS, "donors-strong": {**DONORS, "effect_sd": (0.5, 0.5)},
              "donors-shared": {**DONORS, "lacking": {}},
              "donors-private": {**DONORS, "lacking": {"donor 0": ("NK", "CD14+ Mono"), "donor 1": ("CD14+ Mono",),
                                                       "donor 2": ("NK",), "donor 3": ("NK", "CD14+ Mono")}}}


#: the shift suite leaves out the CD34+ sort's cells whose profile agrees with another sort's (``--keep-impure-sorts``)
PURE_SORTS = True


def _suite_cells(data_home):
    """pbmc_facs' counts and ``FINE`` labels for the shift suite: without the CD34+ sort's cells that express another
    sort's programme (:func:`agrees_with_label` on the sorts, ``subpop``, pbmc_facs' 2,000 most variable genes: 74
    B-cell- and monocyte-like cells, CD34 counted in about 1 % of them), where ``PURE_SORTS``. A design that puts monocytes in one batch only would otherwise put
    monocyte-like cells labelled CD34+ in the other."""
    facs, labels = _facs(data_home)
    counts = facs.data.tocsr().astype(np.float64)
    sort = labels["subpop"].to_numpy()
    keep = (sort != "CD34+") | agrees_with_label(counts, sort) if PURE_SORTS else np.ones(len(sort), bool)
    return counts[keep], labels["celltype"].map(FINE).to_numpy()[keep]


def load_donors(data_home, seed=0, name="donors"):
    """pbmc_facs as the pseudo-donors of ``DONOR_SETS[name]``: counts (each cell's resampled, Poisson(counts x its
    donor's per-gene factor)), donor, label (``FINE``), and which cells' population every donor holds (in
    ``donors-shared``, which lacks nothing, ``DONORS``' lacked populations count as not held by every donor too)."""
    design = DONOR_SETS[name]
    counts, labels = _suite_cells(data_home)
    rng = np.random.RandomState(seed)
    n_donors = design["n_donors"]
    donor = rng.choice(n_donors, size=counts.shape[0], p=rng.dirichlet(np.full(n_donors, 3.0)))
    names = np.array([f"donor {d}" for d in range(n_donors)], dtype=object)[donor]
    lacking = np.zeros(len(labels), bool)
    for lacker, populations in design["lacking"].items():
        lacking |= (names == lacker) & np.isin(labels, populations)
    counts, donor, names, labels = counts[~lacking], donor[~lacking], names[~lacking], labels[~lacking]
    log_effect = rng.normal(size=(n_donors, counts.shape[1])) * rng.uniform(*design["effect_sd"], size=counts.shape[1])
    rows = np.repeat(np.arange(counts.shape[0]), np.diff(counts.indptr))
    counts.data = rng.poisson(counts.data * np.exp(log_effect[donor[rows], counts.indices])).astype(np.float64)
    counts.eliminate_zeros()
    absent_somewhere = [population for populations in (design["lacking"] or DONORS["lacking"]).values()
                        for population in populations]
    return counts.astype(np.float32), names, labels, ~np.isin(labels, absent_somewhere)


def load_shift(data_home, name, seed=0):
    """A set of the shift suite: counts, batch, labels (``FINE``), and which cells' population both batches hold.

    pbmc_facs halved at random into batch A (the real cells, 10x) and batch B (a cell of another technology simulated
    from each, :func:`_deep_cells`), the populations of ``SHIFT_SUITE[name]`` in one batch only. ``relatives``: CD8 T
    cells in batch B only, NK cells in batch A only (close relatives of the shared CD4 T cells and of each other),
    the same depth. ``deep``: batch B 10x deeper, 2 of 6 populations (NK, CD14+ monocytes) in batch A only and CD34+
    progenitors in batch B only. ``donors``: :func:`load_donors`. Another name is a data set of ``LOADERS``
    (``pair``: its shared types the README's; the others: every population shared).
    """
    if name in DONOR_SETS:
        return load_donors(data_home, seed, name)
    if name not in SHIFT_SUITE:  # a data set of LOADERS: every population shared but the pair's four
        counts, batch, labels = LOADERS[name](data_home)
        shared = np.isin(labels, ["T cell", "B cell", "NK cell", "CD14+"]) if name == "pair" else np.ones(len(labels), bool)
        return counts, batch, labels, shared
    design = SHIFT_SUITE[name]
    counts, labels = _suite_cells(data_home)
    rng = np.random.RandomState(seed)
    in_b = rng.rand(counts.shape[0]) < 0.5
    in_b[np.isin(labels, design["only_a"])] = False
    in_b[np.isin(labels, design["only_b"])] = True
    rows = np.flatnonzero(in_b)
    simulated = _deep_cells(counts, labels, rows, ~in_b, rng, design["effect_sd"], design["depth"])
    counts = sp.vstack([counts[~in_b].astype(np.float32), simulated], format="csr")
    batch = np.array(["batch A (10x)"] * int((~in_b).sum()) + ["batch B (simulated)"] * len(rows), dtype=object)
    labels = np.concatenate([labels[~in_b], labels[rows]])
    return counts, batch, labels, ~np.isin(labels, design["only_a"] + design["only_b"])


LOADERS = {"pair": load_pair, "semisynthetic": load_semisynthetic, "semisynthetic-depth": load_semisynthetic_depth,
           "deep-query": load_deep_query, "toy": load_toy}


def _thin(counts, batch, gene_factor, library_factor, rng):
    """Binomial thinning of each cell's counts by its batch's per-gene and library factors."""
    rows = np.repeat(np.arange(counts.shape[0]), np.diff(counts.indptr))
    keep = np.asarray(library_factor)[batch[rows]] * gene_factor[batch[rows], counts.indices]
    thinned = sp.csr_matrix((rng.binomial(counts.data, keep), counts.indices, counts.indptr), counts.shape)
    thinned.eliminate_zeros()
    return thinned.astype(np.float32)


def load_two_level(data_home, seed=0):
    """pbmc_facs as 6 samples nested in 2 technologies: counts, the cells' sample and technology (a DataFrame), labels.

    Each cell is thinned binomially by its technology (a strong per-gene effect ``exp(-|N(0, 0.7)|)``, library x 1.0
    and 0.4) and then by its sample (a mild per-gene effect ``exp(-|N(0, 0.2)|)``, library x 1.0, 0.85, 0.7 within
    each technology). Labels: the purified populations (``subpop``).
    """
    facs, labels = _facs(data_home)
    counts = facs.data.tocsr().astype(np.int64)
    rng = np.random.RandomState(seed)
    sample = rng.randint(6, size=counts.shape[0])
    technology = sample // 3
    counts = _thin(counts, technology, np.exp(-np.abs(rng.normal(0.0, 0.7, size=(2, counts.shape[1])))), (1.0, 0.4),
                   rng).astype(np.int64)
    counts = _thin(counts, sample, np.exp(-np.abs(rng.normal(0.0, 0.2, size=(6, counts.shape[1])))),
                   (1.0, 0.85, 0.7) * 2, rng)
    obs = pd.DataFrame({"sample": np.array([f"sample {i + 1}" for i in range(6)], dtype=object)[sample],
                        "technology": np.array(["technology A", "technology B"], dtype=object)[technology]})
    return counts, obs, labels["subpop"].to_numpy()


def covariates(data_home, seeds, epochs, rows):
    """``--covariates``: two nested covariates, with the adversary on the first column (the default) or on every one.

    Rows: PCA; Harmony on sample and technology; scVI with ``batch_key="sample"`` and technology as a categorical
    covariate (first seed); the recipe with the sample alone, with both columns (the adversary on the first column,
    the default), sample first or technology first, and with both columns and the adversary on every column
    (``skvae.nn.models._LatentModel.adversary_covariates = "all"``). Scored by scib-metrics with the sample as the
    batch.
    """
    from skvae.nn import models

    counts, obs, labels = load_two_level(data_home)
    batch = obs["sample"].to_numpy()
    print(f"\n== two-level: {counts.shape[0]} cells x {counts.shape[1]} genes, samples "
          f"{dict(zip(*np.unique(batch, return_counts=True), strict=True))}, 3 per technology", flush=True)
    codes, seconds = {}, {}
    for name, values, fit_seconds in embeddings(counts, batch, rows & {"harmony"}, epochs):
        codes[name], seconds[name] = values, fit_seconds
    if "harmony" in rows:
        name = next(name for name in codes if name.startswith("Harmony"))
        del codes[name], seconds[name]
        import harmonypy

        pca = codes["PCA(50), uncorrected"]
        result, fit_seconds = timed(lambda: np.asarray(harmonypy.run_harmony(pca, obs, ["sample", "technology"],
                                                                             random_state=0).Z_corr))
        name = f"Harmony {harmonypy.__version__} on PCA(50), sample + technology"
        codes[name], seconds[name] = result if result.shape[0] == len(batch) else result.T, fit_seconds
    if "scvi" in rows:
        import anndata
        import scvi

        scvi.settings.seed = seeds[0]
        selected = HighlyVariableGenes(2000).fit(counts, batch=obs).transform(counts)
        adata = anndata.AnnData(selected.astype(np.float32), obs=obs.set_axis(obs.index.astype(str)))
        scvi.model.SCVI.setup_anndata(adata, batch_key="sample", categorical_covariate_keys=["technology"])
        model = scvi.model.SCVI(adata)
        _, fit_seconds = timed(lambda: model.train(accelerator="cpu", enable_progress_bar=False))
        name = f"scVI {scvi.__version__} defaults, batch_key sample + technology covariate, seed {seeds[0]}"
        codes[name], seconds[name] = model.get_latent_representation().astype(np.float32), fit_seconds
    variants = (("sample only", ["sample"], "first"),
                ("sample + technology (adversary on the first: sample)", ["sample", "technology"], "first"),
                ("technology + sample (adversary on the first: technology)", ["technology", "sample"], "first"),
                ("sample + technology, adversary on every column", ["sample", "technology"], "all"))
    default = models._LatentModel.adversary_covariates
    try:
        for seed in seeds:
            for label, columns, told in variants:
                models._LatentModel.adversary_covariates = told
                recipe = make_count_embedder(random_state=seed, n_jobs=THREADS, max_epochs=epochs)
                given = obs[columns] if len(columns) > 1 else batch
                name = f"skvae make_count_embedder(), {label}, seed {seed}"
                codes[name], seconds[name] = timed(lambda r=recipe, g=given: r.fit(counts, batch=g).transform(counts))
                print(f"  {name}: fit {seconds[name]:.1f} s", flush=True)
    finally:
        models._LatentModel.adversary_covariates = default
    table = scib_table(codes, batch, labels)
    table["fit s"] = pd.Series(seconds)
    table.insert(0, "data", "two-level")
    return table


#: ``--calibration shift``: purified populations held by one batch only (the others are split at random)
SHIFT_ONLY = {"CD34+": 0, "CD14+ Monocyte": 0, "CD56+ NK": 1}


def load_calibration(data_home, kind, seed=0):
    """pbmc_facs as two batches for a calibration check: counts, batch, purified labels, which cells' type is shared.

    ``null``: a random halving, no batch effect: integration should change nothing. ``shift``: the populations of
    ``SHIFT_ONLY`` in one batch only, the rest split at random; the second batch thinned per gene
    (``exp(-|N(0, 0.5)|)``) and to half the depth: integration should mix the shared populations and leave the
    batch-specific ones as they are. Labels: the purification's coarse groups (``subpop``).
    """
    facs, labels = _facs(data_home)
    counts = facs.data.tocsr().astype(np.int64)
    rng = np.random.RandomState(seed)
    batch = rng.randint(2, size=counts.shape[0])
    shared = np.ones(counts.shape[0], dtype=bool)
    if kind == "shift":
        for population, only in SHIFT_ONLY.items():
            cells = (labels["celltype"] == population).to_numpy()
            batch[cells], shared[cells] = only, False
        gene_factor = np.vstack([np.ones(counts.shape[1]), np.exp(-np.abs(rng.normal(0.0, 0.5, size=counts.shape[1])))])
        counts = _thin(counts, batch, gene_factor, (1.0, 0.5), rng)
    return counts.astype(np.float32), np.array(["batch A", "batch B"], dtype=object)[batch], \
        labels["subpop"].to_numpy(), shared


#: ``--shift-suite``'s skvae rows: the recipe's changes (None: fitted without batches)
SHIFT_VARIANTS = {
    "skvae recipe, no batch": None,
    "skvae recipe, batch (batch_model='layers')": {},
    "skvae recipe, batch_model='genes'": {"batch_model": "genes"},
    "skvae recipe, batch_model='genes', batch_adversary=0": {"batch_model": "genes", "batch_adversary": 0.0},
    # a sweep of the adversary's weight with factors per gene (--variants)
    "skvae recipe, batch_model='genes', batch_adversary=0.1": {"batch_model": "genes", "batch_adversary": 0.1},
    "skvae recipe, batch_model='genes', batch_adversary=1": {"batch_model": "genes", "batch_adversary": 1.0},
    # without labels, the adversary kept off the clusters no other batch holds a counterpart of (batch_counterparts)
    "skvae recipe, batch_counterparts=0.4": {"batch_counterparts": 0.4},
    "skvae recipe, batch_model='genes', batch_counterparts=0.4": {"batch_model": "genes", "batch_counterparts": 0.4},
    "skvae recipe, batch_model='genes', batch_adversary=1, batch_counterparts=0.4": {
        "batch_model": "genes", "batch_adversary": 1.0, "batch_counterparts": 0.4},
    # make_count_classifier with the labels of a random 30 % (10 %) of each batch's cells (``labelled``): the adversary
    # gated by the types the labels show in each batch (batch_adversary_types, its default) or by neighbourhoods alone
    "skvae classifier, 30 % labelled": {"labelled": 0.3},
    "skvae classifier, 30 % labelled, batch_adversary_types=False": {"labelled": 0.3, "batch_adversary_types": False},
    "skvae classifier, 10 % labelled": {"labelled": 0.1},
    "skvae classifier, 10 % labelled, batch_adversary_types=False": {"labelled": 0.1, "batch_adversary_types": False},
    "skvae classifier, 30 % labelled, batch_model='genes'": {"labelled": 0.3, "batch_model": "genes"},
    # the types' gate keeps what one batch holds from the adversary, so it can mix the shared types harder
    "skvae classifier, 30 % labelled, batch_model='genes', batch_adversary=1": {"labelled": 0.3, "batch_model": "genes",
                                                                              "batch_adversary": 1.0},
}
#: ``--shift-suite``'s rows by default (the sweep's only with ``--variants``)
DEFAULT_SHIFT_VARIANTS = list(SHIFT_VARIANTS)[:4]


def shift_suite(name, data_home, seeds, epochs, rows, variants=None):
    """One set of the shift suite (:func:`load_shift`): PCA, Harmony and scVI's defaults (first seed) and the recipe's
    ``SHIFT_VARIANTS``, each seed (:func:`fitted_and_scored`: the overlap with the fit without batches of the same
    seed, or of the first seed for a fit without batches) and, where scib-metrics is installed, its batch
    correction, bio conservation and total."""
    counts, batch, labels, shared = load_shift(data_home, name)
    print(f"\n== shift suite, {name}: {counts.shape[0]} cells, batches "
          f"{dict(zip(*np.unique(batch, return_counts=True), strict=True))}, median counts "
          f"{ {b: float(np.median(np.asarray(counts[batch == b].sum(axis=1)))) for b in np.unique(batch)} }, "
          f"batch-specific cells {int((~shared).sum())}", flush=True)
    chosen = DEFAULT_SHIFT_VARIANTS if variants is None else variants
    variants = {variant: SHIFT_VARIANTS[variant] for variant in chosen}
    table, codes = fitted_and_scored(counts, batch, labels, shared, variants, seeds, epochs, rows)
    try:
        scib = scib_table(codes, batch, labels)
    except ImportError:
        print("[skip] scib-metrics is not installed (pip install scib-metrics): 15-NN scores only")
    else:
        table = table.join(scib[["Batch correction", "Bio conservation", "Total"]])
    table.insert(0, "data", f"shift {name}")
    return table


def timed(fit):
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        codes = fit()
    return np.asarray(codes, dtype=np.float32), time.perf_counter() - start


#: ``--sweep``: the batch-aware recipe of round 3, (128, 128) without an adversary, with one change at a time (the
#: evidence for round 4's recipe, the last row). Its adversary rows were measured when ``batch_adversary`` weighed
#: the classifier's cross-entropy; since round 5 it scales the reversed gradient by the reconstruction's (10 is now
#: about 25 times as strong on these sets): rerun them with weights near 0.4 to compare.
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


def _scvi(selected, batch, seed, labels=None, **settings):
    """scVI (or scANVI from it, given labels with "Unknown" for unlabelled cells): codes, fit seconds, epochs run."""
    import anndata
    import scvi

    scvi.settings.seed = seed
    obs = pd.DataFrame({"batch": batch, "label": "Unknown" if labels is None else labels})
    adata = anndata.AnnData(selected.astype(np.float32), obs=obs)
    scvi.model.SCVI.setup_anndata(adata, batch_key="batch", labels_key="label")
    model = scvi.model.SCVI(adata, **settings)
    _, seconds = timed(lambda: model.train(accelerator="cpu", enable_progress_bar=False))
    epochs_run = len(model.history["elbo_train"])
    if labels is not None:
        model = scvi.model.SCANVI.from_scvi_model(model, unlabeled_category="Unknown")
        _, more = timed(lambda: model.train(max_epochs=20, accelerator="cpu", enable_progress_bar=False))
        seconds += more
    return model.get_latent_representation().astype(np.float32), seconds, epochs_run


#: scArches' recommended scVI settings for a reference that will take queries (Lotfollahi et al. 2022)
SCARCHES = {"use_layer_norm": "both", "use_batch_norm": "none", "encode_covariates": True,
            "deeply_inject_covariates": False}


def embeddings(counts, batch, rows, epochs, seeds=(0,), labels=None, labelled=None):
    """Yield (row name, codes, fit seconds); the PCA is yielded first (scib-metrics compares with it).

    The scVI and skvae rows are fitted once per seed (their names end in ", seed N"); scANVI is given the labels of
    the first batch only (the reference), the other batches' cells as unlabelled, or with ``labelled`` (a share) the
    labels of that random share of every batch's cells (:func:`_labelled_cells`, the classifier rows' cells).
    """
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
    scvi_rows = rows & {"scvi", "scvi-scarches", "scanvi"}
    try:
        import scvi
    except ImportError:
        if scvi_rows:
            print("[skip] scVI: scvi-tools is not installed (pip install scvi-tools)")
        scvi_rows = set()
    for seed in seeds:
        scanvi_labels, which = None, "reference labels"
        if labels is not None:
            known = batch == np.unique(batch)[0] if labelled is None else _labelled_cells(len(labels), labelled, seed)
            scanvi_labels = np.where(known, labels, "Unknown").astype(object)
            which = which if labelled is None else f"{labelled:.0%} labelled"
        for row, name, settings, given in (
                ("scvi", "scVI {} defaults, batch_key", {}, None),
                ("scvi-scarches", "scVI {} scArches settings, batch_key", SCARCHES, None),
                ("scanvi", f"scANVI {{}} ({which}), batch_key", {}, scanvi_labels)):
            if row in scvi_rows and (row != "scanvi" or given is not None):
                codes, seconds, epochs_run = _scvi(selected, batch, seed, given, **settings)
                yield f"{name.format(scvi.__version__)} ({epochs_run} epochs), seed {seed}", codes, seconds
        if "skvae" in rows:
            common = {"random_state": seed, "n_jobs": THREADS, "max_epochs": epochs}
            recipe = make_count_embedder(**common)
            yield (f"skvae make_count_embedder(), no batch, seed {seed}", *timed(lambda r=recipe: r.fit_transform(counts)))
            recipe = make_count_embedder(**common)
            yield (f"skvae make_count_embedder(), batch, seed {seed}", *timed(
                lambda r=recipe: r.fit(counts, batch=batch).transform(counts)))
            if "variants" in rows:
                settings = {**RECOMMENDED_COUNT_SETTINGS, **common}
                no_kl = {key: value for key, value in settings.items() if key not in ("beta", "kl_warmup_epochs")}
                for name, estimator in (("autoencoder", AutoencoderEmbedder(**no_kl)),
                                        ("beta-VSC", BetaVSCEmbedder(**settings))):
                    yield (f"skvae {name} nb, batch (2,000 genes), seed {seed}",
                           *timed(lambda e=estimator: e.fit_transform(selected, batch=batch)))


def neighbours(codes, k=15):
    """Each cell's k nearest other cells in the embedding (indices, n_cells x k)."""
    return NearestNeighbors(n_neighbors=k + 1).fit(codes).kneighbors(codes, return_distance=False)[:, 1:]


def calibration_scores(codes, batch, labels, shared, reference=None):
    """What integration should leave alone, and what it should mix, from each cell's 15 nearest neighbours.

    - ``15-NN accuracy``: 5-fold accuracy of a 15-nearest-neighbour classifier of the purified labels;
    - ``KMeans ARI``: KMeans on the codes, one cluster per label;
    - ``specific purity``: among cells of the batch-specific populations, the share of their 15 neighbours with their
      label (NaN without such populations);
    - ``shared mixing``: among cells of the shared populations, the share of their 15 neighbours from the other batch,
      over the share expected if batches mixed perfectly within the label (1: perfect; capped at 1 per cell);
    - ``overlap``: the share of each cell's 15 neighbours that are also its neighbours in ``reference`` (for a fit
      with batches, the fit without batches of the same seed; for a fit without batches, the first seed's, which
      measures what a new training seed alone changes).
    """
    found = neighbours(codes)
    k = len(np.unique(labels))
    scores = {"15-NN accuracy": cross_val_score(KNeighborsClassifier(15), codes, labels, cv=5).mean(),
              "KMeans ARI": adjusted_rand_score(labels, KMeans(k, n_init=10, random_state=0).fit_predict(codes))}
    specific = ~shared
    scores["specific purity"] = (labels[found[specific]] == labels[specific, None]).mean() if specific.any() else np.nan
    other = batch[found] != batch[:, None]
    expected = np.empty(len(batch))
    for label in np.unique(labels[shared]):
        cells = shared & (labels == label)
        for name in np.unique(batch[cells]):
            expected[cells & (batch == name)] = 1.0 - (batch[cells] == name).mean()
    scores["shared mixing"] = np.minimum(1.0, other[shared].mean(axis=1) / expected[shared]).mean()
    if reference is not None:
        scores["overlap"] = np.mean([len(np.intersect1d(a, b)) / found.shape[1]
                                     for a, b in zip(found, neighbours(reference), strict=True)])
    return scores


def fitted_and_scored(counts, batch, labels, shared, variants, seeds, epochs, rows):
    """Harmony, scVI's defaults and scANVI given 30 % of the labels (first seed, where ``rows`` asks) and the recipe
    with each of ``variants`` (name -> its changes, None: fitted without batches) per seed, each scored by
    :func:`calibration_scores`: a fit with batches against the fit without batches of its own seed, a fit without
    batches against the first seed's.

    Returns the table (one row per fit, with its fit seconds) and each row's codes by the row's name.
    """
    fits = {}
    # scANVI, where asked, is the classifier rows' labelled comparator: given the same 30 % of each batch's cells
    for name, codes, seconds in embeddings(counts, batch, rows & {"harmony", "scvi", "scanvi"}, epochs, seeds[:1],
                                           labels, labelled=0.3):
        fits[name] = (codes, seconds, None)
    for seed in seeds:
        for name, change in variants.items():
            change = None if change is None else dict(change)
            share = None if change is None else change.pop("labelled", None)
            if share is None:
                recipe = make_count_embedder(random_state=seed, n_jobs=THREADS, max_epochs=epochs, **(change or {}))
                given = {} if change is None else {"batch": batch}
                codes, seconds = timed(lambda r=recipe, given=given: r.fit_transform(counts, **given))
            else:  # the classifier, given the labels of a random share of the cells (the same cells for every row)
                y = np.where(_labelled_cells(len(labels), share, seed), labels, None).astype(object)
                recipe = make_count_classifier(random_state=seed, n_jobs=THREADS, max_epochs=epochs, **change)
                codes, seconds = timed(lambda r=recipe, y=y: r.fit(counts, y, batch=batch).transform(counts,
                                                                                                    batch=batch))
            reference = seeds[0] if change is None else seed
            fits[f"{name}, seed {seed}"] = (codes, seconds, f"skvae recipe, no batch, seed {reference}")
            print(f"  {name}, seed {seed}: fit {seconds:.1f} s", flush=True)
    table = pd.DataFrame({name: {**calibration_scores(codes, batch, labels, shared,
                                                      None if ref is None or ref == name else fits[ref][0]),
                                 "fit s": seconds}
                          for name, (codes, seconds, ref) in fits.items()}).T
    return table, {name: codes for name, (codes, _, _) in fits.items()}


def _labelled_cells(n_cells, share, seed):
    """The cells whose labels a labelled row is given: a random ``share`` (the same cells for every row of a seed)."""
    return np.random.RandomState(100 + seed).rand(n_cells) < share


def calibrate(kind, data_home, seeds, epochs, rows):
    """The null or composition-shift check: a table of :func:`calibration_scores`, one row per method and seed."""
    counts, batch, labels, shared = load_calibration(data_home, kind)
    print(f"\n== calibration {kind}: {counts.shape[0]} cells, batches "
          f"{dict(zip(*np.unique(batch, return_counts=True), strict=True))}, batch-specific cells {int((~shared).sum())}",
          flush=True)
    variants = {"skvae recipe, no batch": None, "skvae recipe, batch": {}}
    if kind == "shift":
        variants["skvae recipe, batch, batch_adversary=0"] = {"batch_adversary": 0.0}
    table, _ = fitted_and_scored(counts, batch, labels, shared, variants, seeds, epochs, rows)
    table.insert(0, "data", f"calibration {kind}")
    return table


def scaling(data_home, seed, epochs):
    """The adversary's yardstick across depth and gene count: the semi-synthetic set (two batches: 1 and 2), thinned
    as a whole to depth x1 or x0.1, with 500, 2,000 or 5,000 genes; the recipe with batches on each.

    Columns: the reconstruction's gradient per cell at the code at the end of training (what the reversed gradient is
    scaled by, so what a fixed weight on the cross-entropy would have been divided by), the shared mixing and the
    15-NN accuracy (:func:`calibration_scores`).
    """
    counts, batch, labels = load_semisynthetic(data_home)
    two = batch != "batch 3"
    counts, batch, labels = counts[two], batch[two], labels[two]
    rng = np.random.RandomState(seed)
    rows = {}
    for depth in (1.0, 0.1):
        thinned = _thin(counts.astype(np.int64), np.zeros(len(batch), dtype=int), np.ones((1, counts.shape[1])),
                        (depth,), rng) if depth < 1 else counts
        for n_genes in (500, 2000, 5000):
            recipe = make_count_embedder(n_top_genes=n_genes, random_state=seed, n_jobs=THREADS, max_epochs=epochs)
            codes, seconds = timed(lambda r=recipe, x=thinned: r.fit_transform(x, batch=batch))
            scores = calibration_scores(codes, batch, labels, np.ones(len(batch), dtype=bool))
            rows[f"depth x{depth:g}, {n_genes} genes"] = {
                "median counts": float(np.median(np.asarray(thinned.sum(axis=1)).ravel())),
                # the running size of the reconstruction's gradient at the code: training state, kept for partial_fit
                "reconstruction gradient": recipe["embedder"]._training_state.gradient_scale.value,
                **{key: scores[key] for key in ("shared mixing", "15-NN accuracy")}, "fit s": seconds}
            print(f"  depth x{depth:g}, {n_genes} genes: {rows[f'depth x{depth:g}, {n_genes} genes']}", flush=True)
    table = pd.DataFrame(rows).T
    table.insert(0, "data", "scaling")
    return table


def summarise(table):
    """Mean and sd over seeds of each method (rows named '..., seed N'), as 'mean ± sd' strings."""
    method = table.index.str.replace(r", seed \d+$", "", regex=True)
    numbers = table.drop(columns="data").apply(pd.to_numeric, errors="coerce")
    groups = numbers.groupby(method, sort=False)
    mean, sd = groups.mean(), groups.std()
    text = pd.DataFrame({column: [f"{m:.3f}" if np.isnan(s) else f"{m:.3f} ± {s:.3f}"
                                  for m, s in zip(mean[column], sd[column], strict=True)] for column in mean},
                        index=mean.index)
    return text.assign(runs=groups.size())


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
    parser.add_argument("--datasets", default="pair,semisynthetic,semisynthetic-depth",
                        help=f"comma-separated, of {', '.join(LOADERS)}; empty for none")
    parser.add_argument("--calibration", default="",
                        help="also the calibration checks on pbmc_facs, comma-separated: null, shift")
    parser.add_argument("--shift-suite", default="",
                        help=f"also the shift suite, comma-separated, of "
                             f"{', '.join([*SHIFT_SUITE, *DONOR_SETS, *LOADERS])}")
    parser.add_argument("--variants", default=None,
                        help=f"--shift-suite's skvae rows (';'-separated), of {'; '.join(SHIFT_VARIANTS)}".replace("%", "%%"))
    parser.add_argument("--keep-impure-sorts", action="store_true",
                        help="the shift suite with the CD34+ sort's B-cell- and monocyte-like cells (as before round 20)")
    parser.add_argument("--covariates", action="store_true",
                        help="also two nested covariates (samples in technologies): where the adversary looks")
    parser.add_argument("--scaling", action="store_true",
                        help="also the adversary's yardstick across depth and gene count (first seed)")
    parser.add_argument("--epochs", type=int, default=200, help="epochs of every skvae model")
    parser.add_argument("--rows", default=DEFAULT_ROWS, help=f"which rows, of {', '.join(ROWS)} (PCA always)")
    parser.add_argument("--out", default=None, help="also write the tables as CSV here")
    parser.add_argument("--sweep", default=None,
                        help="instead of the rows: PCA and these changes (';'-separated) to the previous batch-aware "
                             f"recipe, of {'; '.join(SWEEP)}")
    parser.add_argument("--seeds", default="0,1,2", help="random_state of each skvae, scVI and --sweep fit")
    args = parser.parse_args()
    global PURE_SORTS
    PURE_SORTS = not args.keep_impure_sorts
    rows = set(args.rows.split(","))
    seeds = [int(seed) for seed in args.seeds.split(",")]
    print(f"skvae {skvae.__version__}, torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores; seeds {seeds}")
    tables = []
    for dataset in filter(None, args.datasets.split(",")):
        counts, batch, labels = LOADERS[dataset](args.data_home)
        print(f"\n== {dataset}: {counts.shape[0]} cells x {counts.shape[1]} genes, batches "
              f"{dict(zip(*np.unique(batch, return_counts=True), strict=True))}", flush=True)
        codes, seconds = {}, {}
        if args.sweep:
            pca = next(embeddings(counts, batch, set(), args.epochs))
            runs = itertools.chain([pca], sweep(counts, batch, seeds, args.sweep.split(";")))
        else:
            runs = embeddings(counts, batch, rows, args.epochs, seeds, labels)
        for name, values, fit_seconds in runs:
            codes[name], seconds[name] = values, fit_seconds
            print(f"  {name}: {values.shape[1]} dimensions, fit {fit_seconds:.1f} s", flush=True)
        table = scib_table(codes, batch, labels)
        table["fit s"] = pd.Series(seconds)
        table.insert(0, "data", dataset)
        tables.append(table)
        with pd.option_context("display.width", 250, "display.max_columns", 20):
            print(summarise(table[["data", "Batch correction", "Bio conservation", "Total", "fit s"]]).to_string(),
                  flush=True)
    for kind in filter(None, args.calibration.split(",")):
        table = calibrate(kind, args.data_home, seeds, args.epochs, rows)
        tables.append(table)
        with pd.option_context("display.width", 250, "display.max_columns", 20):
            print(summarise(table).to_string(), flush=True)
    for name in filter(None, args.shift_suite.split(",")):
        table = shift_suite(name, args.data_home, seeds, args.epochs, rows,
                            None if args.variants is None else [row for row in args.variants.split(";") if row])
        tables.append(table)
        with pd.option_context("display.width", 250, "display.max_columns", 20):
            print(summarise(table).to_string(), flush=True)
    if args.covariates:
        table = covariates(args.data_home, seeds, args.epochs, rows)
        tables.append(table)
        with pd.option_context("display.width", 250, "display.max_columns", 20):
            print(summarise(table[["data", "Batch correction", "Bio conservation", "Total", "fit s"]]).to_string(),
                  flush=True)
    if args.scaling:
        table = scaling(args.data_home, seeds[0], args.epochs)
        tables.append(table)
        with pd.option_context("display.width", 250, "display.max_columns", 20):
            print(table.to_string(float_format="{:.3f}".format), flush=True)
    if not tables:
        return
    table = pd.concat(tables)
    with pd.option_context("display.width", 300, "display.max_columns", 30):
        print("\nAll rows, every metric (scib-metrics' unscaled):")
        print(table.to_string(float_format="{:.3f}".format))
    if args.out:
        table.to_csv(args.out)


if __name__ == "__main__":
    main()
