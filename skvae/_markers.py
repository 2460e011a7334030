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

Functions of arrays only: the classifier gathers the sums over ranks and keeps the results.
"""

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


def _normalised(X):
    """Each row's share of its counts (CSR), and the row totals."""
    X = sp.csr_matrix(X, dtype=np.float64)
    totals = np.asarray(X.sum(axis=1)).ravel()
    return sp.diags(1.0 / np.maximum(totals, 1.0)) @ X, totals


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


def shortfalls(blocks, called, indicator, shares, *, sums=None, group_of=None, genes=None):
    """Each row's log shortfall of its called type's markers, and the marker counts its total leads to expect.

    Parameters
    ----------
    blocks : iterable of (slice, array or sparse matrix)
    called : ndarray of int of shape (n_rows,)
        Each row's type index (-1: none; its values are NaN).
    indicator : sparse matrix of shape (n_features, n_classes)
        :func:`marker_indicator`'s.
    shares : ndarray of shape (n_classes,)
        Each type's mean share of a cell's counts on its markers.
    sums : ndarray of shape (n_groups, n_classes, len(genes)), default=None
        In the same pass, each row's shares of ``genes`` are added to
        ``sums[group_of[row], called[row]]`` (for :func:`technology_variances`).
    group_of : ndarray of int of shape (n_rows,), default=None
        Each row's group, with ``sums``.
    genes : ndarray of int, default=None
        The genes whose shares ``sums`` gathers.

    Returns
    -------
    shortfall, expected : ndarray of shape (n_rows,)

    Examples
    --------
    >>> import numpy as np
    >>> indicator = marker_indicator(np.array([[0], [1]]), 2)
    >>> shortfall, expected = shortfalls([(slice(0, 2), np.array([[8.0, 2.0], [8.0, 2.0]]))], np.array([0, 1]),
    ...                                  indicator, np.array([0.8, 0.8]))
    >>> np.round(shortfall, 2).tolist(), expected.tolist()
    ([0.0, -1.22], [8.0, 8.0])
    """
    shortfall, expected = np.full(len(called), np.nan), np.full(len(called), np.nan)
    for rows, X in blocks:
        own = called[rows]
        named = np.flatnonzero(own >= 0)
        X = sp.csr_matrix(X[named], dtype=np.float64)
        observed = np.asarray((X @ indicator).todense())[np.arange(len(named)), own[named]]
        at = np.arange(len(called))[rows][named]
        row_shares, totals = _normalised(X)
        expected[at] = totals * shares[own[named]]
        shortfall[at] = np.log((observed + 0.5) / (expected[at] + 0.5))
        if sums is not None:
            np.add.at(sums, (group_of[at], own[named]), row_shares[:, genes].toarray())
    return shortfall, expected


def centres_and_spreads(shortfall, expected, labels, n_classes):
    """Each type's median shortfall among its labelled cells, and its spread beyond counting noise.

    The spread is the robust variance (1.4826 x the median absolute deviation,
    squared) less the median counting noise ``1 / (expected + 1/2)``, at least
    ``_MIN_SPREAD`` squared; a type of fewer than :data:`MIN_CELLS` labelled cells
    gets NaN (it is not tested).

    Returns
    -------
    centres, spreads : ndarray of shape (n_classes,)
    """
    centres, spreads = np.full(n_classes, np.nan), np.full(n_classes, np.nan)
    for c in range(n_classes):
        own = (labels == c) & ~np.isnan(shortfall)
        if own.sum() < MIN_CELLS:
            continue
        centres[c] = np.median(shortfall[own])
        robust = (1.4826 * np.median(np.abs(shortfall[own] - centres[c]))) ** 2
        spreads[c] = np.sqrt(max(robust - np.median(1.0 / (expected[own] + 0.5)), _MIN_SPREAD ** 2))
    return centres, spreads


def tracked_genes(reference_shares):
    """The genes :func:`technology_variances` compares: those some labelled type gives a share of ``_MIN_SHARE`` or
    more of its counts (well measured in a few dozen cells)."""
    with np.errstate(invalid="ignore"):
        return np.flatnonzero(np.nanmax(np.where(np.isnan(reference_shares), -1.0, reference_shares), axis=0)
                              >= _MIN_SHARE) if reference_shares.size else np.zeros(0, dtype=np.int64)


def technology_variances(sums, counts, reference_shares, markers, genes):
    """Per group and type, the variance a technology's per-gene effects add to a type's shortfall of its markers.

    A technology (or any batch effect) multiplies each gene's counts by its own
    factor, so it moves a type's share on its markers even when every cell is of
    the type: by about ``sum(w * e) / sum(w)`` in log, ``w`` the type's shares of
    its markers and ``e`` the genes' log factors. The factors' spread ``sigma``
    is measured between the group's cells and the reference's labelled ones:
    per gene, the log ratio of the mean share of the cells called each type to
    the type's (types called on :data:`MIN_CELLS` cells or more, genes both give
    ``_MIN_SHARE`` or more), its median over the types (a population named a type
    it is not moves its type's ratios, not the median), then the robust
    variance over the genes (from 20 genes; fewer give 0). The variance added
    is ``sigma**2 * sum(w**2) / sum(w)**2``: a marker test of a few strong
    markers is moved more than one of many. It is 0 for the reference's own
    cells.

    Parameters
    ----------
    sums : ndarray of shape (n_groups, n_classes, len(genes))
        The sums of the group's cells' shares of ``genes``, per called type
        (:func:`shortfalls`' ``sums``).
    counts : ndarray of shape (n_groups, n_classes)
        The group's cells called each type.
    reference_shares : ndarray of shape (n_classes, n_features)
        Each type's labelled cells' mean share of each gene (NaN rows: not labelled).
    markers : ndarray of int of shape (n_classes, N_MARKERS)
        -1 padded.
    genes : ndarray of int
        The genes compared: :func:`tracked_genes`' of ``reference_shares``.

    Returns
    -------
    ndarray of shape (n_groups, n_classes)

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.RandomState(0)
    >>> reference = rng.dirichlet(np.ones(400), size=2) * 0.5 + 0.5 / 400
    >>> factors = np.exp(rng.normal(0.0, 0.5, size=400))  # a technology's per-gene effect, sd 0.5 in log
    >>> genes = tracked_genes(reference)
    >>> sums = np.stack([reference[:, genes] * 100, reference[:, genes] * factors[genes] * 100])
    >>> variances = technology_variances(sums, np.full((2, 2), 100), reference, np.array([[0, 1], [2, 3]]), genes)
    >>> variances[0].tolist(), bool(0.1 < variances[1, 0] / 0.25 * 2 < 4)
    ([0.0, 0.0], True)
    """
    variances = np.zeros(counts.shape)
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
        sigma2 = (1.4826 * np.median(np.abs(per_gene - np.median(per_gene)))) ** 2
        for c in np.flatnonzero(~np.isnan(reference_shares).any(axis=1)):
            weights = reference_shares[c, markers[c][markers[c] >= 0]]
            if weights.sum() > 0:
                variances[group, c] = sigma2 * (weights ** 2).sum() / weights.sum() ** 2
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
        A variance added to each cell's type's spread (:func:`technology_variances`').

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
    tested = ~np.isnan(centres[called]) & ~np.isnan(shortfall)
    z = np.full(len(called), np.nan)
    added = np.zeros(len(called)) if added is None else added
    z[tested] = (shortfall[tested] - centres[called[tested]]) / np.sqrt(spreads[called[tested]] ** 2 + added[tested]
                                                                      + 1.0 / (expected[tested] + 0.5))

    def centre_and_spread(values):
        centre = np.median(values)
        return centre, max(1.0, 1.4826 * np.median(np.abs(values - centre)))

    p = np.ones(len(z))
    for rows, calibration in group_calibrations(z, groups, centre_and_spread):
        centre, spread = calibration or (0.0, 1.0)
        rows &= tested
        p[rows] = norm.cdf((z[rows] - centre) / spread)
    return p
