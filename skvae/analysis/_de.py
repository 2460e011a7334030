"""Differential expression with the sample as the unit: pseudobulk counts, batch-corrected through the model's decoder.

Cell-level tests treat cells of one donor as independent replicates and call hundreds of genes between groups of
donors that do not differ (Squair et al. 2021, Nat. Commun. 12:5692); pseudobulk tests (DESeq2 on each sample's summed
counts) are calibrated. Here the cells' counts are summed per sample and group and tested with PyDESeq2 (a
maintained implementation of DESeq2's negative binomial GLM; the optional extra ``de``); the fitted model's part is
to remove what it learned of the batches first: each cell's counts are scaled, gene by gene, by the ratio of its
expression decoded under the batches both groups share to that decoded under its own batch.
"""

import warnings

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.utils import get_tags

from .._validation import is_on_disk
from ..pipeline import _flat_steps

# Cells whose counts are corrected at a time: bounded temporaries (cells x genes floats)
_CELLS_PER_BLOCK = 4096
# Where two groups' samples spread over the batches by more than this (total variation distance of their average
# composition; 2:1 against 1:2 over two batches is 1/3), a batch-corrected test over few samples is not calibrated
_UNEVEN_BATCHES = 0.2


def differential_expression(estimator, X, groups, group1, group2=None, *, samples=None, batch=None, fdr=0.05,
                            shrinkage="upward"):
    """Which genes differ between two groups of cells, tested over samples (donors): pseudobulk DESeq2, batch-corrected.

    The counts of each sample's cells of each group are summed (pseudobulk) and the two
    groups compared with PyDESeq2's Wald test: ``~ group`` when each sample's cells
    are all in one group (a condition over donors), ``~ sample + group`` when most
    samples have cells in both (two cell types within donors: a paired design; a
    sample holding one group only, such as a donor without cells of a rare type, is
    left out of it, with a warning). With a
    model fitted with batches, each cell's counts are first scaled, gene by gene, by
    its expression decoded under the batches both groups share (their average) over
    that decoded under its own batch: the batch effects the decoder learned are
    removed before summing; groups that share no batch are refused (group and batch
    confounded). Groups whose samples spread unevenly over the batches (their average
    compositions more than 0.2 apart in total variation, ``attrs["batch_imbalance"]``;
    2 donors of 3 in one batch against 1 of 3 is 0.33) get a warning and
    ``attrs["note"]``: the correction was learned from the same samples, and with 3
    samples a group the test then called 8.5 % false genes at a nominal 5 %
    (pseudobulk DESeq2 no better). Without ``samples`` there are no replicates to test over: the
    result gives effect sizes only (the log2 ratio of the groups' mean
    batch-corrected counts per 10,000), its ``attrs["note"]`` says why, and a
    warning too.

    The model corrects batches; it does not smooth the counts tested: a
    difference the code does not carry (a condition's effect on a few genes) is
    still seen, as the counts hold it.

    Parameters
    ----------
    estimator : fitted skvae embedder or classifier of raw counts, or an EmbeddingPipeline ending in one
        A count likelihood ("nb", "zinb", "poisson"). The genes are the model's
        (for a pipeline, those its gene selection kept).
    X : {array-like, sparse matrix} of shape (n_cells, n_features)
        The cells' raw counts, as the estimator takes them.
    groups : array-like of shape (n_cells,)
        Each cell's group (cluster, cell type, condition).
    group1 : label
        The group tested.
    group2 : label, default=None
        The group it is compared with; None: every other cell (one against the rest).
    samples : array-like of shape (n_cells,), default=None
        Each cell's sample (donor, replicate): the unit of replication. None:
        effect sizes only.
    batch : array-like of shape (n_cells,), DataFrame or dict, default=None
        Each cell's batch, as the model was fitted with (required for a model
        fitted with batches).
    fdr : float, default=0.05
        The false discovery rate of the ``is_de`` call (on ``padj``).
    shrinkage : {"upward", "deseq2"}, default="upward"
        How each gene's dispersion (its variation between samples) is taken.
        "deseq2": DESeq2's, shrunk towards the trend over genes, down as well as
        up; with few samples per group a gene more variable than the trend is
        then under-dispersed and called too often (13.8 % of calls false at a
        nominal 5 % with 3 donors against 3 in ``benchmarks/de.py``). "upward":
        the larger of the gene's own estimate and the shrunk one, so shrinkage
        only raises it (6.1 % false, with 12 % less power, in the same runs).

    Returns
    -------
    DataFrame
        One row per gene (indexed by the model's gene names, or ``gene0``...):
        ``log2FoldChange`` (group1 over group2), ``lfcSE``, ``stat``, ``pvalue``,
        ``padj`` (Benjamini-Hochberg; DESeq2's names), ``is_de`` (``padj < fdr``),
        ``baseMean`` (DESeq2's mean normalised pseudobulk count), ``mean_1`` and
        ``mean_2`` (mean counts per 10,000, batch-corrected, of each group's cells),
        ``fraction_1`` and ``fraction_2`` (share of each group's cells with a
        count), ``n_samples_1`` and ``n_samples_2``. ``attrs`` records the design
        (``batch_imbalance``: how unevenly the groups' samples spread over the
        batches; None for a paired design or a model without batches).

    Raises
    ------
    ValueError
        For a group without cells, group1 equal to group2, missing values in
        ``groups`` or ``samples``, fewer than two samples per group, samples that
        span both groups where most samples hold one group only, groups that
        share no batch, a model that does not model counts, counts of the wrong
        shape, an ``fdr`` outside (0, 1) or an unknown ``shrinkage``.
    ImportError
        Without PyDESeq2 (``pip install pydeseq2``), when ``samples`` is given.

    References
    ----------
    J. W. Squair et al. "Confronting false discoveries in single-cell differential expression". Nat. Commun. 12, 5692
    (2021). B. Muzellec et al. "PyDESeq2: a python package for bulk RNA-seq differential expression analysis".
    Bioinformatics 39, btad547 (2023).

    Examples
    --------
    >>> import numpy as np
    >>> from skvae import BetaVAEEmbedder
    >>> from skvae.analysis import differential_expression
    >>> rng = np.random.RandomState(0)
    >>> donor = np.repeat(np.arange(6), 40)  # 6 donors of 40 cells; donors 3-5 treated
    >>> treated = donor >= 3
    >>> means = rng.gamma(1.0, 2.0, size=30)
    >>> counts = rng.poisson(means * np.where(treated[:, None] & (np.arange(30) < 3), 4.0, 1.0)).astype(float)
    >>> model = BetaVAEEmbedder(2, hidden_layer_sizes=(16,), likelihood="nb", max_epochs=5,
    ...                         random_state=0).fit(counts)
    >>> result = differential_expression(model, counts, np.where(treated, "treated", "control"), "treated",
    ...                                  samples=donor)
    >>> result.index[result["is_de"]].tolist()
    ['gene0', 'gene1', 'gene2']
    """
    final = _flat_steps(estimator)[-1]  # the model itself, or a pipeline's last step
    if shrinkage not in ("upward", "deseq2"):
        raise ValueError(f"shrinkage must be 'upward' or 'deseq2', got {shrinkage!r}.")
    if isinstance(fdr, bool) or not isinstance(fdr, (int, float, np.floating)) or not 0 < fdr < 1:
        raise ValueError(f"fdr must be a false discovery rate between 0 and 1, got {fdr!r}.")
    if not get_tags(final).input_tags.positive_only:
        raise ValueError(f"differential_expression tests counts, but this {type(final).__name__} models "
                         f"likelihood={getattr(final, 'likelihood', None)!r}: fit a model of raw counts "
                         "(likelihood='nb', as make_count_embedder does).")
    counts = estimator[:-1].transform(X) if hasattr(estimator, "steps") and len(estimator.steps) > 1 else X
    if is_on_disk(counts):
        raise ValueError("differential_expression reads the counts in memory: load the cells compared first (e.g. "
                         "adata[cells].to_memory()); a matrix on disk is not read here.")
    counts = counts.tocsr() if sp.issparse(counts) else np.asarray(counts, dtype=np.float64)
    if counts.ndim != 2 or not np.isfinite(counts.data if sp.issparse(counts) else counts).all():
        raise ValueError("X must be a matrix of finite counts (cells x genes).")
    n_cells = counts.shape[0]
    first, second = _groups(groups, n_cells, group1, group2)
    design = _design(samples, n_cells, first, second)
    own, shared = _decoding_batches(final, batch, first, second, n_cells)
    uneven, imbalance = _uneven_batches(shared, design)
    if uneven is not None:
        warnings.warn(uneven, UserWarning, stacklevel=2)
    codes = None if shared is None else estimator.transform(X, batch=batch)  # read only to correct batches
    genes = _gene_names(estimator, final, counts.shape[1])
    sums, means, fractions = _corrected_sums(final, codes, counts, own, shared, design, first, second)
    table = pd.DataFrame(index=pd.Index(genes, name="gene"))
    for index, suffix in enumerate(("1", "2")):
        table[f"mean_{suffix}"], table[f"fraction_{suffix}"] = means[index], fractions[index]
    if design is None:
        note = ("No samples were given: cells of one sample are not independent replicates, so there are no p-values "
                "(a cell-level test calls many genes between groups of donors that do not differ). log2FoldChange is "
                "the log2 ratio of the groups' mean batch-corrected expression (counts per 10,000). Give samples= "
                "(donors) to test.")
        warnings.warn(note, UserWarning, stacklevel=2)
        table.insert(0, "log2FoldChange", np.log2((table["mean_1"] + 1e-3) / (table["mean_2"] + 1e-3)))
        for column in ("lfcSE", "stat", "pvalue", "padj", "baseMean"):
            table[column] = np.nan
        table["is_de"] = False
        table["n_samples_1"] = table["n_samples_2"] = 0
        table.attrs.update(design=None, note=note)
        return table[_COLUMNS]
    results = _deseq2(sums, design, genes, shrinkage)
    table = pd.concat([results, table], axis=1)
    table["is_de"] = (table["padj"] < fdr).fillna(False).astype(bool)
    table["n_samples_1"], table["n_samples_2"] = design["n_samples"]
    table.attrs.update(design=design["formula"], paired=design["paired"], fdr=fdr, shrinkage=shrinkage,
                       shared_batches=None if shared is None else [str(label) for label in shared["labels"]],
                       batch_imbalance=imbalance)
    if uneven is not None:
        table.attrs["note"] = uneven
    return table[_COLUMNS]


_COLUMNS = ["log2FoldChange", "lfcSE", "stat", "pvalue", "padj", "is_de", "baseMean", "mean_1", "mean_2",
            "fraction_1", "fraction_2", "n_samples_1", "n_samples_2"]


def _groups(groups, n_cells, group1, group2):
    """The two groups' cells, as boolean masks, checked."""
    groups = np.asarray(groups, dtype=object)
    if groups.ndim != 1 or len(groups) != n_cells:
        raise ValueError(f"groups must hold one label per cell ({n_cells}), got shape {groups.shape}.")
    if pd.isna(groups).any():
        raise ValueError(f"groups has {int(pd.isna(groups).sum())} missing labels: give every cell a group (or "
                         "leave the cells out).")
    if group2 is not None and group1 == group2:
        raise ValueError(f"group1 and group2 are the same group ({group1!r}): compare two different groups.")
    first = groups == group1
    second = ~first if group2 is None else groups == group2
    for name, label, cells in (("group1", group1, first), ("group2", group2, second)):
        if not cells.any():
            raise ValueError(f"{name}={'the rest' if label is None else repr(label)} has no cells; groups holds "
                             f"{sorted(map(str, pd.unique(groups)))[:10]}.")
    return first, second


def _design(samples, n_cells, first, second):
    """The pseudobulk design: each (sample, group)'s cells, paired or not; None without samples."""
    if samples is None:
        return None
    samples = np.asarray(samples, dtype=object)
    if samples.ndim != 1 or len(samples) != n_cells:
        raise ValueError(f"samples must hold one sample per cell ({n_cells}), got shape {samples.shape}.")
    if pd.isna(samples).any():
        raise ValueError(f"samples has {int(pd.isna(samples).sum())} missing values: give every cell its sample.")
    in_first, in_second = set(samples[first]), set(samples[second])
    both, every = in_first & in_second, in_first | in_second
    # paired: the groups are compared within samples (two cell types within donors), so most samples hold both;
    # a sample with cells of one group only (a rare type a donor lacks) has nothing to pair and is left out
    paired = len(both) * 2 >= len(every)
    if both and not paired:
        raise ValueError(f"samples {sorted(map(str, both))[:5]} have cells in both groups, but most samples "
                         f"({len(every - both)} of {len(every)}) are in one group only: in a design over samples "
                         "(e.g. treated and control donors) each sample belongs to one group. Check samples= and "
                         "groups, or select the cells of one design.")
    if paired and every - both:
        warnings.warn(f"Samples {sorted(map(str, every - both))[:5]} have cells of one group only: they are left out "
                      f"of the paired test, which compares the groups within the {len(both)} samples holding both.",
                      UserWarning, stacklevel=3)
    n_samples = (len(both), len(both)) if paired else (len(in_first), len(in_second))
    if min(n_samples) < 2:
        raise ValueError(f"group1 has {n_samples[0]} sample(s) and group2 {n_samples[1]}"
                         f"{' (holding both groups)' if paired else ''}: a test over samples needs at least 2 in "
                         "each (the variation between samples is what a difference is measured against). With "
                         "fewer, leave samples out for effect sizes only.")
    cells = (first | second) & (np.isin(samples, list(both)) if paired else True)
    units = pd.DataFrame({"sample": samples[cells], "group": np.where(first[cells], "1", "2")})
    return {"units": units, "cells": cells, "paired": paired, "n_samples": n_samples,
            "formula": "~ sample + group" if paired else "~ group"}


def _decoding_batches(final, batch, first, second, n_cells):
    """Each cell's own batch and the batches both groups share (None for a model fitted without batches)."""
    covariates = getattr(final, "covariates_", None)
    if covariates is None or not covariates.n_categories:
        return None, None
    if batch is None:
        raise ValueError(f"This {type(final).__name__} was fitted with batches ({covariates.describe()}): pass each "
                         "cell's batch= to correct them before the test.")
    name = covariates.names[0]
    # the first column's categories, checked as every method checks batch= (length, columns, unseen labels)
    column = covariates.columns[0].categories[covariates.encode(batch, n_cells)[:, 0]]
    in_second = set(column[second])
    labels = [label for label in pd.unique(column[first]) if label in in_second]
    if not labels:
        raise ValueError(f"The two groups share no batch ({name or 'batch'}: group1 has "
                         f"{sorted(map(str, pd.unique(column[first])))[:5]}, group2 "
                         f"{sorted(map(str, pd.unique(column[second])))[:5]}): group and batch are confounded, so no "
                         "model can tell a difference between the groups from one between the batches.")
    return batch, {"name": name, "labels": labels, "column": column}


def batch_imbalance(batches, samples, in_first):
    """How unevenly two groups' samples spread over the batches, in [0, 1].

    Each sample's composition over the batches (the share of its cells in each),
    averaged over each group's samples (every sample weighs the same); the result is
    the total variation distance between the two groups' averages: 0 where both
    groups spread alike, 1 where they share no batch.

    Parameters
    ----------
    batches, samples : array-like of shape (n_cells,)
        Each cell's batch and sample.
    in_first : array-like of bool of shape (n_cells,)
        Whether each cell is in the first group (a sample's cells all in one group).

    Returns
    -------
    distance : float
    shares : DataFrame
        Rows the batches, columns "group1" and "group2": each group's average
        share of a sample's cells in the batch.

    Examples
    --------
    >>> from skvae.analysis._de import batch_imbalance
    >>> distance, shares = batch_imbalance(["a", "a", "b", "a", "b", "b"], [0, 1, 2, 3, 4, 5],
    ...                                    [True, True, True, False, False, False])
    >>> round(distance, 3), shares["group1"].round(3).tolist()
    (0.333, [0.667, 0.333])
    """
    composition = pd.crosstab(pd.Series(np.asarray(samples, dtype=object), name="sample"),
                              pd.Series(np.asarray(batches, dtype=object), name="batch"), normalize="index")
    first = pd.Series(np.asarray(in_first, dtype=bool)).groupby(np.asarray(samples, dtype=object)).first()
    first = first.reindex(composition.index).to_numpy()
    shares = pd.DataFrame({"group1": composition[first].mean(), "group2": composition[~first].mean()})
    return 0.5 * float((shares["group1"] - shares["group2"]).abs().sum()), shares


def _uneven_batches(shared, design):
    """The note (and the distance) where an unpaired design's groups spread unevenly over the batches, else None."""
    if shared is None or design is None or design["paired"]:
        return None, None
    units = design["units"]
    distance, shares = batch_imbalance(shared["column"][design["cells"]], units["sample"], units["group"] == "1")
    if distance < _UNEVEN_BATCHES:
        return None, distance
    widest = (shares["group1"] - shares["group2"]).abs().idxmax()
    name = shared["name"] or "batch"
    note = (f"The groups' samples are spread unevenly over the batches ({name} {widest!r} holds "
            f"{100 * shares.loc[widest, 'group1']:.0f} % of group1's samples and "
            f"{100 * shares.loc[widest, 'group2']:.0f} % of group2's): the batch correction was learned from these "
            "same samples, so part of what it removed is their own variation, which the test does not know. With 3 "
            "samples a group over two batches (2:1 against 1:2) 8.5 % of the genes called at a nominal FDR of 5 % "
            "were false on average, some draws many more (the benchmarks page; pseudobulk DESeq2 was no better). "
            "Samples spread alike over the batches, or more of them, are the remedy; meanwhile read padj against a "
            "stricter fdr.")
    return note, distance


def _as_batch(batch, name, label, rows):
    """``batch`` of the cells ``rows`` with its first categorical column set to ``label``."""
    if name is None:
        return np.full(len(rows), label, dtype=object)
    taken = pd.DataFrame(_rows_of(batch, rows)).copy()
    taken[name] = label
    return taken


def _rows_of(batch, rows):
    """``batch`` (labels, a DataFrame or a dict of columns) of the cells ``rows``."""
    if isinstance(batch, pd.DataFrame):
        return batch.iloc[rows]
    if isinstance(batch, dict):
        return {key: np.asarray(values, dtype=object)[rows] for key, values in batch.items()}
    return np.asarray(batch, dtype=object)[rows]


def _corrected_sums(final, codes, counts, own, shared, design, first, second):
    """Per (sample, group): the summed batch-corrected counts; per group: its cells' mean corrected counts per 10,000
    and the share of them with a count, of each gene. Only the two groups' cells are read, a block at a time."""
    n_cells, n_genes = counts.shape
    units = None if design is None else design["units"].groupby(["sample", "group"], sort=True).indices
    cell_unit = np.full(n_cells, -1)
    if units is not None:
        used_rows = np.flatnonzero(design["cells"])
        for position, rows in enumerate(units.values()):
            cell_unit[used_rows[rows]] = position
    sums = None if units is None else np.zeros((len(units), n_genes))
    group_of = np.where(first, 0, np.where(second, 1, -1))
    normalised, expressing = np.zeros((2, n_genes)), np.zeros((2, n_genes))
    cells = np.flatnonzero(group_of >= 0)
    for start in range(0, len(cells), _CELLS_PER_BLOCK):
        rows = cells[start:start + _CELLS_PER_BLOCK]
        block = counts[rows].toarray() if sp.issparse(counts) else counts[rows]
        if shared is None:
            corrected = block
        else:
            under_shared = np.mean([final.inverse_transform(codes[rows], batch=_as_batch(own, shared["name"], label,
                                                                                         rows))
                                    for label in shared["labels"]], axis=0)
            under_own = final.inverse_transform(codes[rows], batch=_rows_of(own, rows))
            corrected = block * (under_shared / np.maximum(under_own, 1e-12))
        per_10k = corrected / np.maximum(block.sum(axis=1, keepdims=True), 1.0) * 1e4
        for group in (0, 1):
            inside = group_of[rows] == group
            normalised[group] += per_10k[inside].sum(axis=0)
            expressing[group] += (block[inside] > 0).sum(axis=0)
        if sums is not None:
            inside = cell_unit[rows] >= 0
            np.add.at(sums, cell_unit[rows][inside], corrected[inside])
    if sums is not None:
        sums = pd.DataFrame(np.rint(sums).astype(np.int64), index=pd.MultiIndex.from_tuples(list(units),
                                                                                          names=["sample", "group"]))
    sizes = np.array([first.sum(), second.sum()], dtype=np.float64)[:, None]
    return sums, normalised / sizes, expressing / sizes


def _deseq2(sums, design, genes, shrinkage):
    """PyDESeq2's Wald test of group 1 against group 2 on the pseudobulk sums; ``shrinkage="upward"`` refits the
    coefficients with each gene's dispersion the larger of its own estimate and DESeq2's shrunk one."""
    try:
        from pydeseq2.dds import DeseqDataSet
        from pydeseq2.ds import DeseqStats
    except ImportError:
        raise ImportError("differential_expression tests over samples with PyDESeq2: pip install pydeseq2 (or, in "
                          "a clone, pip install -e \".[de]\").") from None
    metadata = pd.DataFrame({"sample": [str(sample) for sample, _ in sums.index],
                             "group": [f"g{group}" for _, group in sums.index]},
                            index=[f"unit{i}" for i in range(len(sums))])
    matrix = pd.DataFrame(sums.to_numpy(), index=metadata.index, columns=[f"g{i}" for i in range(len(genes))])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PyDESeq2 warns of genes with no count, which give NaN p-values here
        dds = DeseqDataSet(counts=matrix, metadata=metadata, design=design["formula"].replace(" ", ""), quiet=True,
                           n_cpus=1)
        dds.deseq2()
        if shrinkage == "upward":
            dds.var["dispersions"] = np.maximum(dds.var["genewise_dispersions"], dds.var["MAP_dispersions"])
            dds.fit_LFC()
            dds.calculate_cooks()
        stats = DeseqStats(dds, contrast=["group", "g1", "g2"], quiet=True, n_cpus=1)
        stats.summary()
    results = stats.results_df.reindex(matrix.columns)
    results.index = pd.Index(genes, name="gene")
    return results[["baseMean", "log2FoldChange", "lfcSE", "stat", "pvalue", "padj"]]


def _gene_names(estimator, final, n_genes):
    """The model's genes' names: a pipeline's input names through its steps, or the estimator's own; else gene0..."""
    names = getattr(final, "feature_names_in_", None)
    if hasattr(estimator, "steps") and len(estimator.steps) > 1:
        first = estimator.steps[0][1]
        names = estimator[:-1].get_feature_names_out() if getattr(first, "feature_names_in_", None) is not None \
            else None
    return [str(name) for name in names] if names is not None and len(names) == n_genes else \
        [f"gene{i}" for i in range(n_genes)]
