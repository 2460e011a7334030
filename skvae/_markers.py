"""The classifier's second question: does a cell hold the counts of its called type's marker genes?

A cell can lie among a type's codes and not be of it: a population the reference
lacks is drawn to the nearest type the codes were taught (on the PBMC pair,
dendritic cells are named CD34+ progenitors and express no CD34), and its code then
looks typical. The counts still tell: each type's markers are the genes its
labelled cells express most above every other labelled type (mean log-normalised
expression, at most :data:`N_MARKERS`), and a cell of the type holds about the
share of its counts on them that the type's labelled cells hold.

A cell's shortfall is ``log((observed + 1/2) / (expected + 1/2))``: its counts on
its called type's markers against its total times the type's mean share. Among a
type's labelled cells it has a centre (median) and a spread beyond counting noise
(the robust variance less the counting noise's, :func:`centres_and_spreads`); a cell's
z-score divides its distance from the centre by the spread and its own counting
noise (``1 / (expected + 1/2)``, so deep and shallow cells are judged alike), and a
group of cells (a batch) is then calibrated to its own centre and spread (only ever
widened), as the codes' typicality is to its shift: a technology that moves every
type's markers moves them together. A technology also moves each gene by its own
factor, and so each type's markers by a different amount: the spread is widened by
what the group's per-gene factors, measured against the reference's labelled cells,
move the type's share on its markers (:func:`technology_variances`). Its p-value is
the normal's lower tail.

The markers ask whether a cell holds its type's own genes; a population the
reference lacks can hold them and more (CD34+ progenitors named T cells hold half
of the T cells' share of their markers). A third question asks of all its counts:
a cell's *profile likelihood* is the mean log-probability of its counts under its
called type's expression profile (the labelled cells' mean share of each gene,
:func:`log_profiles`), low where it spends counts on genes the type does not
express. It is standardised like the shortfall, by the type's centre and spread
beyond counting noise (the profile's variance of one count's log-probability
over the cell's total), each type called in a group then centred on its own
median (a technology's per-gene factors move each type's profile likelihood by
its own amount, by several of its spreads under a strong one; this assumes a
population the reference lacks is fewer than half the cells named any one type,
and a type called on fewer than :data:`MIN_CELLS` cells of a group is not tested
there), and its p-value is conformal: the share of the type's labelled cells scoring lower
(their scores' tails are heavier than the normal's).

Functions of arrays only: the classifier gathers the sums over ranks and keeps the results.
"""

from typing import NamedTuple

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.stats import norm

#: The most marker genes a type keeps
N_MARKERS = 20
# Cells that calibrate a group to its own centre and spread (and labelled cells a type needs for a test)
MIN_CELLS = 50
# Counts per cell the log-normalised expression is scaled to (scanpy's and Seurat's 1e4)
_SCALE = 1e4
# The smallest spread beyond counting noise of a type's shortfall (in log units)
_MIN_SPREAD = 0.1
# The smallest mean share of a type's counts on a gene whose change between batches measures a technology (10 in 10,000)
_MIN_SHARE = 1e-3
# The smallest spread beyond counting noise of a type's profile likelihood (log-probability per count)
_MIN_PROFILE_SPREAD = 0.05
# The share added to each gene of a type's profile (a gene none of its cells expressed: one count in a million)
_PROFILE_FLOOR = 1e-6


def _normalised(X):
    """Each row's share of its counts (CSR), and the row totals."""
    X = sp.csr_matrix(X, dtype=np.float64)
    totals = np.asarray(X.sum(axis=1)).ravel()
    return sp.diags(1.0 / np.maximum(totals, 1.0)) @ X, totals


def log_normalised(X):
    """log1p of each row's counts per 10,000 (``_SCALE``), as CSR float64 (a row without counts stays 0).

    Examples
    --------
    >>> log_normalised(np.array([[1.0, 3.0], [0.0, 0.0]])).toarray().round(3).tolist()
    [[7.824, 8.923], [0.0, 0.0]]
    """
    logged, _ = _normalised(X)
    logged.data = np.log1p(_SCALE * logged.data)
    return logged


def expression_sums(blocks, labels, n_classes, n_features):
    """Per type, over its labelled cells: their number, and the sums of their log-normalised expression and shares.

    Parameters
    ----------
    blocks : iterable of (slice, array or sparse matrix)
        Consecutive blocks of counts (:meth:`skvae.train.data.RowData.row_blocks`).
    labels : ndarray of int of shape (n_rows,)
        Each row's type index, -1 for none.
    n_classes, n_features : int

    Returns
    -------
    counts : ndarray of shape (n_classes,)
    log_sums, share_sums : ndarray of shape (n_classes, n_features)

    Examples
    --------
    >>> import numpy as np
    >>> counts, log_sums, share_sums = expression_sums([(slice(0, 2), np.array([[1.0, 3.0], [2.0, 2.0]]))],
    ...                                                np.array([0, 1]), 2, 2)
    >>> counts.tolist(), share_sums.tolist()
    ([1, 1], [[0.25, 0.75], [0.5, 0.5]])
    """
    counts = np.zeros(n_classes, dtype=np.int64)
    log_sums, share_sums = np.zeros((n_classes, n_features)), np.zeros((n_classes, n_features))
    for rows, X in blocks:
        own = labels[rows]
        labelled = np.flatnonzero(own >= 0)
        if not len(labelled):
            continue
        shares, _ = _normalised(X[labelled])
        logged = shares.copy()
        logged.data = np.log1p(_SCALE * logged.data)
        types = sp.csr_matrix((np.ones(len(labelled)), (own[labelled], np.arange(len(labelled)))),
                              shape=(n_classes, len(labelled)))
        counts += np.bincount(own[labelled], minlength=n_classes)
        log_sums += np.asarray((types @ logged).todense())
        share_sums += np.asarray((types @ shares).todense())
    return counts, log_sums, share_sums


def choose_markers(expression, types, n_markers=N_MARKERS):
    """Each of ``types``' markers: the genes it expresses most above every other type, at most ``n_markers``.

    Parameters
    ----------
    expression : ndarray of shape (n_classes, n_features)
        Each type's mean log-normalised expression; NaN rows for types not labelled.
    types : iterable of int
        The types to choose for.
    n_markers : int, default=N_MARKERS

    Returns
    -------
    dict of int to ndarray of int
        Each type's marker genes, the most specific first: only genes it expresses
        above every other labelled type.

    Examples
    --------
    >>> import numpy as np
    >>> choose_markers(np.array([[3.0, 0.0, 1.0], [0.0, 2.0, 1.0]]), [0, 1])
    {0: array([0]), 1: array([1])}
    """
    labelled = ~np.isnan(expression).all(axis=1)
    markers = {}
    for c in types:
        others = labelled.copy()
        others[c] = False
        above = expression[c] - (expression[others].max(axis=0) if others.any() else 0.0)
        order = np.argsort(-above, kind="stable")[:n_markers]
        markers[c] = order[above[order] > 0]
    return markers


def marker_indicator(markers, n_features):
    """A sparse (n_features, n_classes) matrix, 1 where a gene is a marker of a type (``markers``: -1 padded rows)."""
    types, slots = np.nonzero(markers >= 0)
    return sp.csr_matrix((np.ones(len(types)), (markers[types, slots], types)), shape=(n_features, len(markers)))


class CellScores(NamedTuple):
    """What :func:`shortfalls` measures of each row (NaN for a row called no type)."""

    #: The log shortfall of its called type's markers
    shortfall: np.ndarray
    #: The marker counts its total leads to expect
    expected: np.ndarray
    #: The mean log-probability of its counts under its called type's profile (NaN without ``profile_shares``)
    likelihood: np.ndarray
    #: Its total count
    totals: np.ndarray


def shortfalls(blocks, called, indicator, shares, *, profile_shares=None, leave_out=None, sums=None, group_of=None,
               genes=None):
    """Each row's log shortfall of its called type's markers, the marker counts its total leads to expect, and its
    profile likelihood: what the marker and profile tests ask of its counts, in one pass over them.

    Parameters
    ----------
    blocks : iterable of (slice, array or sparse matrix)
    called : ndarray of int of shape (n_rows,)
        Each row's type index (-1: none; its values are NaN).
    indicator : sparse matrix of shape (n_features, n_classes)
        :func:`marker_indicator`'s.
    shares : ndarray of shape (n_classes,)
        Each type's mean share of a cell's counts on its markers.
    profile_shares : ndarray of shape (n_classes, n_features), default=None
        Each type's labelled cells' mean share of each gene (rows summing to 1):
        each row's profile likelihood is the mean log-probability of its counts
        under its called type's profile, these shares plus ``_PROFILE_FLOOR``
        renormalised (:func:`log_profiles`); NaN without.
    leave_out : ndarray of shape (n_classes,), default=None
        The labelled cells each type's ``profile_shares`` are the mean of, when
        the rows are those cells: each row is then judged by its type's profile
        without itself (its own counts do not make a gene it alone expresses
        look expected, as a new cell's would not).
    sums : ndarray of shape (n_groups, n_classes, len(genes)), default=None
        In the same pass, each row's shares of ``genes`` are added to
        ``sums[group_of[row], called[row]]`` (for :func:`technology_variances`).
    group_of : ndarray of int of shape (n_rows,), default=None
        Each row's group, with ``sums``.
    genes : ndarray of int, default=None
        The genes whose shares ``sums`` gathers.

    Returns
    -------
    CellScores
        ``shortfall``, ``expected``, ``likelihood`` and ``totals``, each of shape (n_rows,).

    Examples
    --------
    >>> import numpy as np
    >>> indicator = marker_indicator(np.array([[0], [1]]), 2)
    >>> scores = shortfalls([(slice(0, 2), np.array([[8.0, 2.0], [8.0, 2.0]]))], np.array([0, 1]), indicator,
    ...                     np.array([0.8, 0.8]), profile_shares=np.array([[0.8, 0.2], [0.2, 0.8]]))
    >>> np.round(scores.shortfall, 2).tolist(), scores.expected.tolist(), np.round(scores.likelihood, 3).tolist()
    ([0.0, -1.22], [8.0, 8.0], [-0.5, -1.332])
    """
    scores = CellScores(*(np.full(len(called), np.nan) for _ in CellScores._fields))
    for rows, X in blocks:
        own = called[rows]
        named = np.flatnonzero(own >= 0)
        X = sp.csr_matrix(X[named], dtype=np.float64)
        observed = np.asarray((X @ indicator).todense())[np.arange(len(named)), own[named]]
        at = np.arange(len(called))[rows][named]
        row_shares, totals = _normalised(X)
        scores.totals[at] = totals
        scores.expected[at] = totals * shares[own[named]]
        scores.shortfall[at] = np.log((observed + 0.5) / (scores.expected[at] + 0.5))
        if profile_shares is not None:
            scores.likelihood[at] = _profile_likelihoods(row_shares, own[named], profile_shares, leave_out)
        if sums is not None:
            np.add.at(sums, (group_of[at], own[named]), row_shares[:, genes].toarray())
    return scores


def _profile_likelihoods(row_shares, types, profile_shares, leave_out):
    """Each row's mean log-probability of its counts (its shares, CSR) under its type's profile (``types``), without
    itself where ``leave_out`` gives the cells the profile is the mean of; read at the row's counts only."""
    row_shares = sp.csr_matrix(row_shares)
    row = np.repeat(np.arange(row_shares.shape[0]), np.diff(row_shares.indptr))
    gene, value = row_shares.indices, row_shares.data
    base = profile_shares[types[row], gene].astype(np.float64)
    total = np.ones(len(types))  # each profile's shares sum to 1, and so do a row's without it
    if leave_out is not None:
        n = leave_out[types].astype(np.float64)
        base = np.maximum(n[row] * base - value, 0.0) / np.maximum(n[row] - 1.0, 1.0)
        total = np.where(n > 1, 1.0, 0.0)  # a type of one cell: nothing left but the floor
    normaliser = np.log(total + profile_shares.shape[1] * _PROFILE_FLOOR)
    return np.bincount(row, weights=value * np.log(base + _PROFILE_FLOOR),
                       minlength=row_shares.shape[0]) - normaliser * np.asarray(row_shares.sum(axis=1)).ravel()


def centres_and_spreads(values, noise, labels, n_classes, min_spread=_MIN_SPREAD):
    """Each type's median value (a shortfall, a profile likelihood) among its labelled cells, and its spread beyond
    counting noise.

    The spread is the robust variance (1.4826 x the median absolute deviation,
    squared) less the cells' median counting noise (a variance: ``1 / (expected + 1/2)``
    for a shortfall), at least ``min_spread`` squared; a type of fewer than
    :data:`MIN_CELLS` labelled cells gets NaN (it is not tested).

    Returns
    -------
    centres, spreads : ndarray of shape (n_classes,)

    Examples
    --------
    >>> import numpy as np
    >>> values = np.random.RandomState(0).normal(1.0, 0.5, size=400)
    >>> centres, spreads = centres_and_spreads(values, np.full(400, 0.16), np.zeros(400, int), 2)
    >>> bool(abs(centres[0] - 1.0) < 0.1), bool(abs(spreads[0] - 0.3) < 0.1), bool(np.isnan(centres[1]))
    (True, True, True)
    """
    centres, spreads = np.full(n_classes, np.nan), np.full(n_classes, np.nan)
    for c in range(n_classes):
        own = (labels == c) & ~np.isnan(values)
        if own.sum() < MIN_CELLS:
            continue
        centres[c] = np.median(values[own])
        robust = (1.4826 * np.median(np.abs(values[own] - centres[c]))) ** 2
        spreads[c] = np.sqrt(max(robust - np.median(noise[own]), min_spread ** 2))
    return centres, spreads


def log_profiles(reference_shares):
    """Each type's expression profile, in log: its labelled cells' mean share of each gene plus ``_PROFILE_FLOOR``,
    renormalised (NaN rows stay NaN: types not labelled).

    Examples
    --------
    >>> import numpy as np
    >>> profiles = log_profiles(np.array([[0.5, 0.5, 0.0], [np.nan] * 3]))
    >>> np.round(np.exp(profiles[0]), 6).tolist(), bool(np.isnan(profiles[1]).all())
    ([0.5, 0.5, 1e-06], True)
    """
    floored = np.asarray(reference_shares, dtype=np.float64) + _PROFILE_FLOOR
    return np.log(floored / floored.sum(axis=1, keepdims=True))


def profile_noise(profiles):
    """Per type, the variance of one count's log-probability under its profile: a cell's profile likelihood (a mean
    over its ``n`` counts) varies by this over ``n`` from counting alone."""
    probabilities = np.exp(profiles)
    return (probabilities * profiles ** 2).sum(axis=1) - (probabilities * profiles).sum(axis=1) ** 2


def marker_sensitivities(reference_shares, markers):
    """Per type, what a technology of per-gene log factors of variance 1 moves its share on its markers by (a
    variance, in log): ``sum(w**2) / sum(w)**2``, ``w`` its labelled cells' shares of its markers (0 for a type not
    labelled or without markers)."""
    sensitivities = np.zeros(len(markers))
    for c in np.flatnonzero(~np.isnan(reference_shares).any(axis=1)):
        weights = reference_shares[c, markers[c][markers[c] >= 0]]
        if weights.sum() > 0:
            sensitivities[c] = (weights ** 2).sum() / weights.sum() ** 2
    return sensitivities


def tracked_genes(reference_shares):
    """The genes :func:`technology_variances` compares: those some labelled type gives a share of ``_MIN_SHARE`` or
    more of its counts (well measured in a few dozen cells)."""
    with np.errstate(invalid="ignore"):
        return np.flatnonzero(np.nanmax(np.where(np.isnan(reference_shares), -1.0, reference_shares), axis=0)
                              >= _MIN_SHARE) if reference_shares.size else np.zeros(0, dtype=np.int64)


def technology_variances(sums, counts, reference_shares, genes):
    """Per group, the variance of its technology's per-gene log factors, measured against the reference's labelled
    cells.

    A technology (or any batch effect) multiplies each gene's counts by its own
    factor, so it moves a type's share on its markers even when every cell is of
    the type. The factors' spread
    ``sigma`` is measured between the group's cells and the reference's labelled
    ones: per gene, the log ratio of the mean share of the cells called each type
    to the type's (types called on :data:`MIN_CELLS` cells or more, genes both give
    ``_MIN_SHARE`` or more), its median over the types (a population named a type
    it is not moves its type's ratios, not the median), then the robust variance
    over the genes (from 20 genes; fewer give 0). The marker test's spread is
    widened by ``sigma**2`` times its sensitivity (:func:`marker_sensitivities`).
    It is 0 for the reference's own cells.

    Parameters
    ----------
    sums : ndarray of shape (n_groups, n_classes, len(genes))
        The sums of the group's cells' shares of ``genes``, per called type
        (:func:`shortfalls`' ``sums``).
    counts : ndarray of shape (n_groups, n_classes)
        The group's cells called each type.
    reference_shares : ndarray of shape (n_classes, n_features)
        Each type's labelled cells' mean share of each gene (NaN rows: not labelled).
    genes : ndarray of int
        The genes compared: :func:`tracked_genes`' of ``reference_shares``.

    Returns
    -------
    ndarray of shape (n_groups,)

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.RandomState(0)
    >>> reference = rng.dirichlet(np.ones(400), size=2) * 0.5 + 0.5 / 400
    >>> factors = np.exp(rng.normal(0.0, 0.5, size=400))  # a technology's per-gene effect, sd 0.5 in log
    >>> genes = tracked_genes(reference)
    >>> sums = np.stack([reference[:, genes] * 100, reference[:, genes] * factors[genes] * 100])
    >>> variances = technology_variances(sums, np.full((2, 2), 100), reference, genes)
    >>> float(variances[0]), bool(0.1 < variances[1] / 0.25 < 4)
    (0.0, True)
    """
    variances = np.zeros(len(counts))
    typed = (counts >= MIN_CELLS) & ~np.isnan(reference_shares).any(axis=1)
    for group in range(len(counts)):
        types = np.flatnonzero(typed[group])
        if not len(types) or not len(genes):
            continue
        observed = sums[group, types] / counts[group, types, None]
        expected = reference_shares[np.ix_(types, genes)]
        with np.errstate(divide="ignore", invalid="ignore"):
            ratios = np.where((observed >= _MIN_SHARE) & (expected >= _MIN_SHARE), np.log(observed / expected), np.nan)
        measured = ~np.isnan(ratios).all(axis=0)
        if measured.sum() < 20:
            continue
        per_gene = np.nanmedian(ratios[:, measured], axis=0)
        variances[group] = (1.4826 * np.median(np.abs(per_gene - np.median(per_gene)))) ** 2
    return variances


def group_calibrations(values, groups, statistic):
    """Yield each group's rows and its calibration: ``statistic`` of its values that are not NaN.

    The calibration rule both of the classifier's tests share: a group (a batch of
    ``groups``; all the rows one group when None) of at least :data:`MIN_CELLS`
    such values gets its own; a smaller group, or one whose statistic is None, gets
    all the values'; None where they are fewer too.

    Parameters
    ----------
    values : ndarray of shape (n_rows,)
        NaN for a row that does not count.
    groups : ndarray of shape (n_rows,) or None
    statistic : callable
        Of the values of at least :data:`MIN_CELLS` rows; None where it has none.

    Yields
    ------
    rows : ndarray of bool of shape (n_rows,)
    calibration : object or None

    Examples
    --------
    >>> import numpy as np
    >>> values = np.r_[np.zeros(60), np.ones(60), np.full(10, 5.0)]
    >>> groups = np.repeat(["a", "b", "c"], [60, 60, 10])
    >>> [(int(rows.sum()), round(float(mean), 3)) for rows, mean in group_calibrations(values, groups, np.mean)]
    [(60, 0.0), (60, 1.0), (10, 0.846)]
    """
    def of(selected):
        selected = selected[~np.isnan(selected)]
        return statistic(selected) if len(selected) >= MIN_CELLS else None

    overall = of(values)
    for rows in group_rows(groups, len(values)):
        own = overall if groups is None else of(values[rows])
        yield rows, overall if own is None else own


def group_rows(groups, n_rows):
    """Yield each group's rows (boolean masks), in order of first appearance: all the rows one group when None.

    Examples
    --------
    >>> import numpy as np
    >>> [rows.tolist() for rows in group_rows(np.array(["b", "a", "b"]), 3)]
    [[True, False, True], [False, True, False]]
    """
    if groups is None:
        yield np.ones(n_rows, bool)
        return
    for group in pd.unique(groups):
        yield groups == group


def marker_pvalues(shortfall, expected, called, centres, spreads, groups=None, added=None):
    """Each cell's p-value of holding so few of its called type's markers' counts, calibrated within its group.

    Parameters
    ----------
    shortfall, expected : ndarray of shape (n_cells,)
        :func:`shortfalls`'.
    called : ndarray of int of shape (n_cells,)
    centres, spreads : ndarray of shape (n_classes,)
        :func:`centres_and_spreads`'; a type whose are NaN is not tested (p-value 1).
    groups : ndarray of shape (n_cells,), default=None
        Each cell's batch: each group of at least :data:`MIN_CELLS` tested cells
        is centred on its own median z-score and divided by its own robust spread
        where that exceeds 1 (a smaller group takes all the cells', fewer in all
        take none).
    added : ndarray of shape (n_cells,), default=None
        A variance added to each cell's type's spread (a technology's: :func:`technology_variances`' times
        :func:`marker_sensitivities`').

    Returns
    -------
    ndarray of shape (n_cells,)

    Examples
    --------
    >>> import numpy as np
    >>> p = marker_pvalues(np.array([0.0, -3.0]), np.array([100.0, 100.0]), np.array([0, 0]), np.array([0.0]),
    ...                    np.array([0.3]))
    >>> bool(p[0] == 0.5), bool(p[1] < 1e-6)
    (True, True)
    """
    z = _standardised(shortfall, 1.0 / (expected + 0.5), called, centres, spreads, groups, added)
    return np.where(np.isnan(z), 1.0, norm.cdf(np.nan_to_num(z)))


def profile_calibration(likelihood, totals, labels, profiles, n_quantiles):
    """Each type's centre and spread of its labelled cells' profile likelihoods, and the quantiles of their z-scores
    (NaN for a type of fewer than :data:`MIN_CELLS`: not tested).

    Parameters
    ----------
    likelihood, totals : ndarray of shape (n_cells,)
        :func:`shortfalls`' of the labelled cells.
    labels : ndarray of int of shape (n_cells,)
    profiles : ndarray of shape (n_classes, n_features)
        :func:`log_profiles`'.
    n_quantiles : int

    Returns
    -------
    centres, spreads : ndarray of shape (n_classes,)
    quantiles : ndarray of shape (n_classes, n_quantiles)
    """
    n_classes = len(profiles)
    noise = _profile_noise_of(profiles, labels, totals)
    centres, spreads = centres_and_spreads(likelihood, noise, labels, n_classes, _MIN_PROFILE_SPREAD)
    z = _standardised(likelihood, noise, labels, centres, spreads)
    quantiles = np.full((n_classes, n_quantiles), np.nan)
    for c in np.flatnonzero(~np.isnan(centres)):
        quantiles[c] = np.quantile(z[(labels == c) & ~np.isnan(z)], np.linspace(0.0, 1.0, n_quantiles))
    return centres, spreads, quantiles


def profile_pvalues(likelihood, totals, called, profiles, calibration, counts, groups=None):
    """Each cell's p-value of spending its counts so unlike its called type's labelled cells, calibrated within its
    group: the share of the type's labelled cells whose z-score is lower (conformal, ``(1 + n * share) / (n + 1)``),
    and below the lowest of them ``1 / (n + 1)`` times the normal's tail beyond it.

    Parameters
    ----------
    likelihood, totals : ndarray of shape (n_cells,)
        :func:`shortfalls`'.
    called : ndarray of int of shape (n_cells,)
    profiles : ndarray of shape (n_classes, n_features)
        :func:`log_profiles`'.
    calibration : tuple of (centres, spreads, quantiles)
        :func:`profile_calibration`'s; a type whose are NaN is not tested (p-value 1).
    counts : ndarray of shape (n_classes,)
        The labelled cells of each type (the conformal ``n``).
    groups : ndarray of shape (n_cells,), default=None
        Each cell's batch (all the cells one group when None): each type called
        on :data:`MIN_CELLS` cells or more of a group is centred on its own
        median z-score (a technology moves each type's profile likelihood by its
        own amount) and divided by the group's robust spread where that exceeds
        1; a type called on fewer cells of a group is not tested there (p-value
        1: its shift cannot be told from a population of its own).

    Returns
    -------
    ndarray of shape (n_cells,)

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.RandomState(0)
    >>> shares = np.array([[0.5, 0.3, 0.2, 0.0]])
    >>> profiles = log_profiles(shares)
    >>> labelled = rng.multinomial(1000, shares[0], size=200).astype(float)
    >>> odd = np.array([[400.0, 200.0, 200.0, 200.0]])  # a fifth of its counts on a gene the type lacks
    >>> scores = shortfalls([(slice(0, 201), np.vstack([labelled, odd]))], np.zeros(201, int),
    ...                     marker_indicator(np.array([[0]]), 4), np.array([0.5]), profile_shares=shares)
    >>> calibration = profile_calibration(scores.likelihood[:200], scores.totals[:200], np.zeros(200, int),
    ...                                   profiles, 101)
    >>> p = profile_pvalues(scores.likelihood, scores.totals, np.zeros(201, int), profiles, calibration,
    ...                     np.array([200]))
    >>> bool(np.median(p[:200]) > 0.3), bool(p[200] < 1e-6)
    (True, True)
    """
    centres, spreads, quantiles = calibration
    z = _standardised(likelihood, _profile_noise_of(profiles, called, totals), called, centres, spreads, groups,
                      within_types=True)
    p = np.ones(len(z))
    levels = np.linspace(0.0, 1.0, quantiles.shape[1])
    for c in np.unique(called[~np.isnan(z)]):
        rows = (called == c) & ~np.isnan(z)
        lowest = quantiles[c][0]
        p[rows] = conformal_pvalues(np.interp(z[rows], quantiles[c], levels, left=0.0, right=1.0), z[rows] < lowest,
                                    norm.logcdf(z[rows]) - norm.logcdf(lowest), counts[c])
    return p


def conformal_pvalues(share, past, log_tail, n):
    """Conformal p-values among ``n`` reference values: ``(1 + n * share) / (n + 1)``, ``share`` the part of them
    lying beyond each value; past the most extreme of them (``past``), ``1 / (n + 1)`` times the parametric tail
    beyond the value relative to that beyond the most extreme one (``log_tail``, in log; at most 1), so that a few
    reference values still tell a far one. The classifier's codes' test and the profile test share it.

    Examples
    --------
    >>> import numpy as np
    >>> np.round(conformal_pvalues(np.array([0.5, 0.0]), np.array([False, True]), np.array([0.0, np.log(0.1)]), 9), 6)
    array([0.55, 0.01])
    """
    return np.where(past, np.exp(np.minimum(log_tail, 0.0)), 1.0 + n * share) / (n + 1.0)


def _profile_noise_of(profiles, called, totals):
    """Each cell's counting noise of its profile likelihood (a variance): its type's :func:`profile_noise` over its
    total (NaN for a cell called no type)."""
    noise = profile_noise(profiles)[np.maximum(called, 0)] / np.maximum(totals, 1.0)
    return np.where(called >= 0, noise, np.nan)


def _centre_and_spread(values):
    """A group's calibration: its median z-score, and its robust spread where that exceeds 1."""
    centre = np.median(values)
    return centre, max(1.0, 1.4826 * np.median(np.abs(values - centre)))


def _standardised(values, noise, called, centres, spreads, groups=None, added=None, within_types=False):
    """Each cell's z-score: its value's distance from its called type's centre over the type's spread, the added
    variance and its counting noise, then centred and scaled within its group (:func:`group_calibrations`; NaN: not
    tested). ``within_types``: each type called on :data:`MIN_CELLS` cells or more of a group is centred on its own
    median instead, and the group's spread is that of the centred values; a type called on fewer is not tested there
    (NaN)."""
    tested = ~np.isnan(centres[called]) & ~np.isnan(values) & (called >= 0)
    z = np.full(len(called), np.nan)
    added = np.zeros(len(called)) if added is None else added
    z[tested] = (values[tested] - centres[called[tested]]) / np.sqrt(spreads[called[tested]] ** 2 + added[tested]
                                                                      + noise[tested])
    calibrated = np.full(len(z), np.nan)
    for rows, calibration in group_calibrations(z, groups, _centre_and_spread):
        centre, spread = calibration or (0.0, 1.0)
        rows &= tested
        centred = z[rows] - centre
        if within_types:
            for own in group_rows(called[rows], rows.sum()):
                of_type = z[rows][own]
                centred[own] = of_type - np.median(of_type) if own.sum() >= MIN_CELLS else np.nan
            if (~np.isnan(centred)).any():
                spread = _centre_and_spread(centred[~np.isnan(centred)])[1]
        calibrated[rows] = centred / spread
    return calibrated
