"""Differential expression over samples: calibration on donor nulls, power on known effects, batches.

Cells of one population of real PBMC counts (pbmc3k's T cells: one technology, one donor) are split at random into
6 pseudo-donors of unequal sizes, each with its own per-gene donor effect (log-normal, each gene's sd drawn from
0.1-0.3, applied as ``Poisson(counts x exp(effect))``), so that donors differ as real donors do and cells of one
donor are not independent replicates. Scenarios (``--scenarios``), each over ``--draws`` simulation draws (donors,
effects, and the model's seed):

1. ``null``: no difference between any donors; every split of the 6 donors into 3 against 3 (10) is compared: genes
   called at 5 % FDR (median over splits and draws) and the share of p-values below 0.05 (0.05 when calibrated);
2. ``effects``: the same, with fold changes injected into a random 7.5 % of the genes in the first 3 donors (half up,
   half down, |log2 FC| uniform in 0.5-2): the FDR achieved and the power at 5 % FDR, all and small (|log2 FC| < 1),
   and the power at a true FDR of 5 %, all and small (the genes taken in the order of the method's p-values, as many
   as keep the false share at 5 %: methods of different calibration compared at the same FDR);
3. ``batches``: no true difference, the donors in two batches spread unevenly over the groups (group 1: donors 0, 1
   in batch A, 2 in B; group 2: 3 in A, 4, 5 in B), batch B with a technology effect (per-gene log-ratio sd 0.5):
   genes called at 5 % FDR;
4. ``batch-effects``: the known effects of 2. in the batches of 3.: FDR achieved and power (what a batch effect
   left in the counts costs a test over samples);
5. ``timing``: every cell of the PBMC pair (6,412, two technologies as the batches) in 6 pseudo-donors, each of the
   8 cell types against the rest (``skvae.tl.differential_expression`` without ``group1``): seconds for all of them
   and for one; ``--timing-cells 10000`` adds cells resampled from the pair's (each count thinned to 80 %).

Methods: ``skvae``: :func:`skvae.analysis.differential_expression` on the count recipe (``make_count_embedder``,
fitted on all the cells with their batches where there are any, no labels); without batches it is exactly pseudobulk
DESeq2 on the raw counts, with them the counts are batch-corrected through the decoder first; ``pseudobulk``:
PyDESeq2 on each donor's summed raw counts, ``~ group`` (and ``~ batch + group`` in ``batches``); ``wilcoxon``:
scanpy's default cell-level test (the Mann-Whitney U test of each gene's log-normalised expression between the
groups' cells, Benjamini-Hochberg), computed with scipy; with ``--scvi`` (scenarios ``effects``, ``batches`` and
``batch-effects``), ``scvi change``: scVI with its defaults (the batches as its batch key) and its
``differential_expression(mode="change", batch_correction=True)``, whose ``is_de_fdr_0.05`` are its calls (it gives
no p-values). Also the seconds of one comparison.

Usage: python benchmarks/de.py [--data-home ../shared/data] [--scenarios null,effects,batches,batch-effects,timing]
                              [--draws 3] [--scvi] [--timing-cells 10000]
"""

import argparse
import itertools
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from scipy.stats import false_discovery_control, mannwhitneyu

sys.path.insert(0, str(Path(__file__).parent))
import integration  # noqa: E402 -- the benchmark folder is not a package

import skvae  # noqa: E402
from skvae.analysis import differential_expression  # noqa: E402
from skvae.preprocessing import HighlyVariableGenes  # noqa: E402

N_DONORS = 6
FDR = 0.05
#: whether scVI's differential_expression is compared (--scvi; needs scvi-tools)
SCVI = False
# the batches' donors: uneven over the groups (donors 0-2 are group 1: two in A, one in B)
BATCH_OF_DONOR = {0: "A", 1: "A", 3: "A", 2: "B", 4: "B", 5: "B"}


def population(data_home, n_genes=2000):
    """pbmc3k's T cells: counts of their most variable genes."""
    counts, batch, labels = integration.LOADERS["pair"](data_home)
    cells = (batch == "pbmc3k") & (labels == "T cell")
    counts = sp.csr_matrix(counts[cells])
    genes = HighlyVariableGenes(n_top_genes=n_genes).fit(counts).get_support()
    return counts[:, genes].toarray()


def donors(counts, rng, *, effects=None, batch_effect=None):
    """Pseudo-donors of unequal sizes, each with a per-gene donor effect; optional true effects (in donors 0-2) and a
    technology effect on batch B's donors (2, 4, 5)."""
    n_cells, n_genes = counts.shape
    sizes = rng.dirichlet(np.full(N_DONORS, 3.0))
    donor = rng.choice(N_DONORS, size=n_cells, p=sizes)
    log_effect = rng.normal(size=(N_DONORS, n_genes)) * rng.uniform(0.1, 0.3, size=n_genes)
    if effects is not None:
        log_effect[:3] += effects * np.log(2.0)
    if batch_effect is not None:
        log_effect[[2, 4, 5]] += batch_effect
    return rng.poisson(counts * np.exp(log_effect[donor])).astype(np.float64), donor


def true_effects(n_genes, rng, share=0.075):
    """log2 fold changes: a random share of genes, half up and half down, |log2 FC| uniform in 0.5-2."""
    effects = np.zeros(n_genes)
    chosen = rng.choice(n_genes, size=int(share * n_genes), replace=False)
    effects[chosen] = rng.uniform(0.5, 2.0, size=len(chosen)) * rng.choice([-1.0, 1.0], size=len(chosen))
    return effects


def fitted_model(counts, seed, batch=None):
    model = skvae.make_count_embedder(n_top_genes=counts.shape[1], random_state=seed)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(counts, batch=batch)
    return model, time.perf_counter() - start


def skvae_de(model, counts, group, samples, batch=None):
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = differential_expression(model, counts, group, True, False, samples=samples, batch=batch, fdr=FDR)
    return result["pvalue"].to_numpy(), result["padj"].to_numpy(), time.perf_counter() - start


def pseudobulk(counts, group, samples, batch_of_sample=None):
    """PyDESeq2 on each sample's summed raw counts: ``~ group``, or ``~ batch + group``."""
    from pydeseq2.dds import DeseqDataSet
    from pydeseq2.ds import DeseqStats

    start = time.perf_counter()
    units = sorted(set(samples))
    sums = np.stack([counts[samples == unit].sum(axis=0) for unit in units]).astype(np.int64)
    metadata = pd.DataFrame({"group": ["g1" if group[samples == unit][0] else "g2" for unit in units]},
                            index=[f"s{unit}" for unit in units])
    design = "~group"
    if batch_of_sample is not None:
        metadata["batch"] = [batch_of_sample[unit] for unit in units]
        design = "~batch+group"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dds = DeseqDataSet(counts=pd.DataFrame(sums, index=metadata.index), metadata=metadata, design=design,
                           quiet=True, n_cpus=1)
        dds.deseq2()
        stats = DeseqStats(dds, contrast=["group", "g1", "g2"], quiet=True, n_cpus=1)
        stats.summary()
    return stats.results_df["pvalue"].to_numpy(), stats.results_df["padj"].to_numpy(), time.perf_counter() - start


def wilcoxon(counts, group):
    """scanpy's default: Mann-Whitney U of log-normalised expression between the groups' cells, then BH."""
    start = time.perf_counter()
    logged = np.log1p(counts / np.maximum(counts.sum(axis=1, keepdims=True), 1.0) * 1e4)
    pvalues = mannwhitneyu(logged[group], logged[~group], axis=0).pvalue
    tested = np.isfinite(pvalues)
    padj = np.full_like(pvalues, np.nan)
    padj[tested] = false_discovery_control(pvalues[tested], method="bh")
    return pvalues, padj, time.perf_counter() - start


def scvi_change(counts, group, seed, batch=None):
    """scVI's defaults (``batch`` as its batch key) and its ``differential_expression(mode="change")``, batch-corrected,
    group 1 against group 2: its calls at 5 % FDR (``is_de_fdr_0.05``) as a padj of 0 or 1 (it gives no p-values).

    The seconds are the DE call's; the training's are returned apart.
    """
    import anndata
    import scvi

    scvi.settings.seed = seed
    obs = pd.DataFrame({"batch": "one" if batch is None else batch, "group": np.where(group, "g1", "g2")},
                       index=[f"c{i}" for i in range(len(group))])
    adata = anndata.AnnData(sp.csr_matrix(counts, dtype=np.float32), obs=obs)
    adata.var_names = [f"g{i}" for i in range(counts.shape[1])]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scvi.model.SCVI.setup_anndata(adata, batch_key="batch")
        model = scvi.model.SCVI(adata)
        start = time.perf_counter()
        model.train(accelerator="cpu", enable_progress_bar=False)
        fit_seconds = time.perf_counter() - start
        start = time.perf_counter()
        result = model.differential_expression(groupby="group", group1="g1", group2="g2", mode="change",
                                               batch_correction=batch is not None, fdr_target=FDR)
    seconds = time.perf_counter() - start
    calls = result[f"is_de_fdr_{FDR}"].reindex(adata.var_names).to_numpy(dtype=bool)
    return np.full(len(calls), np.nan), np.where(calls, 0.0, 1.0), seconds, fit_seconds


def called(padj):
    return int(np.sum(np.nan_to_num(padj, nan=1.0) < FDR))


def splits():
    """Every split of the donors into 3 against 3, each once (donor 0 always in group 1)."""
    return [set(first) for first in itertools.combinations(range(N_DONORS), 3) if 0 in first]


def known_effect_scores(pvalues, padj, truth):
    """Genes called at ``FDR``, the FDR achieved and the power, overall and for effects below 1 in log2; and both
    powers at a *true* FDR of ``FDR``: the most genes taken in the order of the method's p-values of which no more
    than ``FDR`` are false (how well it ranks, whatever its calibration: methods compared at the same FDR; NaN
    without p-values)."""
    call = np.nan_to_num(padj, nan=1.0) < FDR
    differs = truth != 0
    small = differs & (np.abs(truth) < 1.0)
    order = np.argsort(np.nan_to_num(pvalues, nan=2.0), kind="stable")
    found = np.cumsum(differs[order])
    within = np.flatnonzero(np.arange(1, len(order) + 1) - found <= FDR * np.arange(1, len(order) + 1))
    taken = order[:within[-1] + 1] if len(within) else order[:0]
    ranked = np.isfinite(pvalues).any()
    return {"called": int(call.sum()), "FDR achieved": float((call & ~differs).sum() / max(call.sum(), 1)),
            "power": float((call & differs).sum() / differs.sum()),
            "power |log2 FC|<1": float((call & small).sum() / max(small.sum(), 1)),
            "power at true FDR": float(differs[taken].sum() / differs.sum()) if ranked else np.nan,
            "power |log2 FC|<1 at true FDR": float(small[taken].sum() / max(small.sum(), 1)) if ranked else np.nan}


def in_batches(base, rng, truth=None, seed=0):
    """Pseudo-donors in ``BATCH_OF_DONOR``'s batches, batch B with a technology effect; the model fitted with them,
    and every method's test of donors 0-2 against 3-5 (scVI's too with ``--scvi``: a 4th value, its fit seconds)."""
    technology = rng.normal(scale=0.5, size=base.shape[1])
    counts, donor = donors(base, rng, effects=truth, batch_effect=technology)
    batch = np.array([BATCH_OF_DONOR[d] for d in donor])
    group = donor < 3
    methods = (("skvae (batch-corrected)", lambda model: skvae_de(model, counts, group, donor, batch=batch)),
               ("pseudobulk ~group", lambda model: pseudobulk(counts, group, donor)),
               ("pseudobulk ~batch + group", lambda model: pseudobulk(counts, group, donor, BATCH_OF_DONOR)),
               ("wilcoxon", lambda model: wilcoxon(counts, group)))
    if SCVI:
        methods += (("scvi change (batch-corrected)", lambda model: scvi_change(counts, group, seed, batch=batch)),)
    return methods, counts, batch


def null(base, draw, rows):
    rng = np.random.RandomState(draw)
    counts, donor = donors(base, rng)
    model, fit_seconds = fitted_model(counts, draw)
    for first in splits():
        group = np.isin(donor, list(first))
        for method, (pvalues, padj, seconds) in (("skvae", skvae_de(model, counts, group, donor)),
                                                 ("pseudobulk ~group", pseudobulk(counts, group, donor)),
                                                 ("wilcoxon", wilcoxon(counts, group))):
            tested = np.isfinite(pvalues)
            rows.append({"scenario": "null", "draw": draw, "split": str(sorted(first)), "method": method,
                         "called": called(padj), "share p<0.05": float(np.mean(pvalues[tested] < 0.05)),
                         "seconds": seconds, "fit s": fit_seconds if method == "skvae" else 0.0})


def effects(base, draw, rows):
    rng = np.random.RandomState(100 + draw)
    truth = true_effects(base.shape[1], rng)
    counts, donor = donors(base, rng, effects=truth)
    model, fit_seconds = fitted_model(counts, draw)
    group = donor < 3
    for method, (pvalues, padj, seconds) in (("skvae", skvae_de(model, counts, group, donor)),
                                             ("pseudobulk ~group", pseudobulk(counts, group, donor)),
                                             ("wilcoxon", wilcoxon(counts, group))):
        rows.append({"scenario": "effects", "draw": draw, "method": method,
                     **known_effect_scores(pvalues, padj, truth),
                     "seconds": seconds, "fit s": fit_seconds if method == "skvae" else 0.0})
    if SCVI:
        pvalues, padj, seconds, scvi_seconds = scvi_change(counts, group, draw)
        rows.append({"scenario": "effects", "draw": draw, "method": "scvi change",
                     **known_effect_scores(pvalues, padj, truth),
                     "seconds": seconds, "fit s": scvi_seconds})


def _fit_seconds(method, fit, model_seconds):
    """A method's training seconds: its own (scVI's, returned with its test), the skvae model's, or none."""
    return fit[0] if fit else model_seconds if method.startswith("skvae") else 0.0


def batches(base, draw, rows):
    methods, counts, batch = in_batches(base, np.random.RandomState(200 + draw), seed=draw)
    model, fit_seconds = fitted_model(counts, draw, batch=batch)
    for method, test in methods:
        pvalues, padj, seconds, *fit = test(model)
        tested = np.isfinite(pvalues)
        rows.append({"scenario": "batches", "draw": draw, "method": method, "called": called(padj),
                     "share p<0.05": float(np.mean(pvalues[tested] < 0.05)) if tested.any() else np.nan,
                     "seconds": seconds, "fit s": _fit_seconds(method, fit, fit_seconds)})


def batch_effects(base, draw, rows):
    rng = np.random.RandomState(300 + draw)
    truth = true_effects(base.shape[1], rng)
    methods, counts, batch = in_batches(base, rng, truth, seed=draw)
    model, fit_seconds = fitted_model(counts, draw, batch=batch)
    for method, test in methods:
        pvalues, padj, seconds, *fit = test(model)
        rows.append({"scenario": "batch-effects", "draw": draw, "method": method,
                     **known_effect_scores(pvalues, padj, truth),
                     "seconds": seconds, "fit s": _fit_seconds(method, fit, fit_seconds)})


def timing(data_home, draw, rows, n_cells=0):
    """One against the rest over every cell type of the PBMC pair, in pseudo-donors, on an AnnData.

    ``n_cells`` beyond the pair's 6,412: the rest drawn from the pair's cells at random, each count thinned binomially
    to 80 % (a cell like its source, not a copy of it).
    """
    import anndata

    counts, batch, labels = integration.LOADERS["pair"](data_home)
    rng = np.random.RandomState(400 + draw)
    if n_cells > counts.shape[0]:
        extra = rng.choice(counts.shape[0], size=n_cells - counts.shape[0])
        resampled = sp.csr_matrix(counts[extra])
        resampled.data = rng.binomial(resampled.data.astype(np.int64), 0.8).astype(np.float32)
        resampled.eliminate_zeros()
        counts = sp.vstack([counts, resampled], format="csr")
        batch, labels = np.concatenate([batch, batch[extra]]), np.concatenate([labels, labels[extra]])
    donor = rng.choice(N_DONORS, size=counts.shape[0])
    adata = anndata.AnnData(sp.csr_matrix(counts, dtype=np.float32), obs=pd.DataFrame(
        {"donor": donor.astype(str), "batch": batch, "type": labels}, index=[f"c{i}" for i in range(len(labels))]))
    adata.var_names = [f"g{i}" for i in range(counts.shape[1])]
    model = skvae.make_count_embedder(random_state=draw)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        skvae.tl.embed(adata, model, batch_key="batch")
        fit_seconds = time.perf_counter() - start
        start = time.perf_counter()
        skvae.tl.differential_expression(adata, model, groupby="type", group1="T cell", sample_key="donor",
                                         batch_key="batch")
        one = time.perf_counter() - start
        start = time.perf_counter()
        table = skvae.tl.differential_expression(adata, model, groupby="type", sample_key="donor", batch_key="batch")
        every = time.perf_counter() - start
    rows.append({"scenario": "timing", "draw": draw, "method": f"skvae, {adata.n_obs} cells, "
                 f"{table['group'].nunique()} types, {table['gene'].nunique()} genes", "seconds": one,
                 "every type against the rest s": every, "fit s": fit_seconds})


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-home", default=os.environ.get("SKVAE_DATA", Path(__file__).parents[1] / ".." / "shared" / "data"))
    parser.add_argument("--scenarios", default="null,effects,batches,batch-effects,timing")
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--genes", type=int, default=2000)
    parser.add_argument("--scvi", action="store_true",
                        help="also scVI's defaults and differential_expression(mode='change') in effects and batches")
    parser.add_argument("--timing-cells", type=int, default=0,
                        help="cells of the timing scenario (more than the pair's 6,412: the rest resampled from them)")
    args = parser.parse_args()
    global SCVI
    SCVI = args.scvi
    print(f"skvae {skvae.__version__}, torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, {torch.get_num_threads()} torch threads")
    base = population(args.data_home, args.genes)
    print(f"{base.shape[0]} T cells of pbmc3k, {base.shape[1]} genes, {N_DONORS} pseudo-donors", flush=True)
    rows = []
    for scenario in args.scenarios.split(","):
        for draw in range(args.draws):
            if scenario == "timing":
                timing(args.data_home, draw, rows, args.timing_cells)
            else:
                {"null": null, "effects": effects, "batches": batches, "batch-effects": batch_effects}[scenario](
                    base, draw, rows)
            print(f"  {scenario}, draw {draw} done", flush=True)
    table = pd.DataFrame(rows)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        for scenario, part in table.groupby("scenario", sort=False):
            numbers = part.drop(columns=["scenario", "draw", "split"], errors="ignore")
            summary = numbers.groupby("method", sort=False).agg(["median", "mean", "std"])
            print(f"\n== {scenario} ({part['draw'].nunique()} draws"
                  + (f", {part['split'].nunique()} splits each" if "split" in part else "") + ")")
            print(summary.round(3).to_string())


if __name__ == "__main__":
    main()
