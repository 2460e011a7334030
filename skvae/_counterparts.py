"""Counterparts across batches, found without labels: which clusters of a batch hold a population that another batch
holds too (``batch_counterparts``).

An integrating model's adversary (``batch_adversary``) makes the batches' codes alike. Where a population is held by
some batches only, making them alike moves it onto its nearest relative in the others: it is folded. Before training,
each batch's cells are clustered (``N_CLUSTERINGS`` times, from different random starts); each cluster's counts are
pooled; between two batches a per-gene factor (a technology or donor moves each gene by its own factor) is estimated
as the weighted median log-ratio over mutually nearest cluster pairs and removed; two clusters are counterparts where what remains, the root mean square log-fold
change beyond counting noise over the genes, is at most the threshold. A batch holds a cell's population where one
of its clusters has a counterpart there. The adversary then asks a cell's batch only among the batches that hold its
population and that its neighbourhood holds (:func:`skvae.nn.models.held_type_losses`, the groups of cells that share
their clusters for types): cells whose clusters have none are left where they are.

What it can get wrong: a population one batch alone holds and a close relative another batch alone holds are taken
for counterparts where they differ by less than the threshold on the genes given (CD8 and CD4 T cells can); and a
population two batches share but whose expression differs between them by more than a per-gene factor is left unmixed.
"""

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.utils import check_random_state

from ._markers import log_normalised
from .nn.likelihoods import LIKELIHOODS

# genes compared (the most variable of the log-normalised values, averaged over batches)
N_GENES = 2000
# cells per cluster aimed at, and the most clusters of one batch
CELLS_PER_CLUSTER = 150
MAX_CLUSTERS = 40
# principal components of a batch's cells the clusters are found in, and the cells (at most) they are fitted on
N_PCS = 20
MAX_FIT_CELLS = 10000
# a cluster of fewer cells is not compared (its pooled profile too noisy to say): every batch counts as holding it
MIN_CLUSTER_CELLS = 20
# a query batch's clusters at least, where it has 2 * MIN_CLUSTER_CELLS cells for each (unknown_counterparts): a few
# hundred cells of several types are not pooled into one profile that no reference cluster resembles
MIN_QUERY_CLUSTERS = 8
# the spread (a variance of log-fold changes) every gene may differ by beyond counting noise, in the genes' weights
_WEIGHT_FLOOR = 0.05
# clusterings of each batch whose clusters are compared (counterparts): one is a draw, which may cut a population
# together with another; a group of cells is held by a batch where one of its clusters has a counterpart there
N_CLUSTERINGS = 3
# rounds of estimating the per-gene factor from mutually nearest cluster pairs
_ROUNDS = 4
# pseudo-count (in counts) of a pooled profile's logarithm
_PSEUDOCOUNT = 0.5


def _variable_genes(data, batch, n_batches, n_genes):
    """The ``n_genes`` genes whose log-normalised values vary most within batches (their variance averaged over
    batches), in one pass over ``data``'s rows; every gene where there are no more."""
    if data.n_features <= n_genes:
        return np.arange(data.n_features)
    sums = np.zeros((n_batches, data.n_features))
    squares = np.zeros((n_batches, data.n_features))
    for rows, X in data.row_blocks():
        Y = log_normalised(X)
        member = sp.csr_matrix((np.ones(Y.shape[0]), (batch[rows], np.arange(Y.shape[0]))), shape=(n_batches, Y.shape[0]))
        sums += np.asarray((member @ Y).todense())
        squares += np.asarray((member @ Y.multiply(Y)).todense())
    cells = np.maximum(np.bincount(batch, minlength=n_batches), 1)[:, None]
    variance = (squares / cells - (sums / cells) ** 2).mean(axis=0)
    return np.sort(np.argsort(-variance, kind="stable")[:n_genes])


class _BatchSpace:
    """One batch's clusters: its cells' standardised log-normalised genes, projected on principal components."""

    def __init__(self, X, genes, random_state, n_clusters):
        Y = log_normalised(X[:, genes]).toarray()
        self.mean, self.scale = Y.mean(axis=0), Y.std(axis=0) + 1e-3
        Z = self._standardised(Y)
        n_clusters = int(np.clip(n_clusters, 1, MAX_CLUSTERS))
        n_pcs = min(N_PCS, X.shape[0] - 1, len(genes))
        self.pca = PCA(n_pcs, random_state=random_state).fit(Z) if n_pcs >= 1 else None
        projected = self._projected(Z)
        self.kmeans = (KMeans(n_clusters, n_init=3, random_state=random_state).fit(projected)
                       if n_clusters > 1 else None)

    def _standardised(self, Y):
        return np.clip((Y - self.mean) / self.scale, -10.0, 10.0)

    def _projected(self, Z):
        return Z if self.pca is None else self.pca.transform(Z)

    @property
    def n_clusters(self):
        return 1 if self.kmeans is None else self.kmeans.n_clusters

    def assign(self, X, genes):
        """Each row's cluster (its nearest centre)."""
        if self.kmeans is None:
            return np.zeros(X.shape[0], dtype=np.int64)
        return self.kmeans.predict(self._projected(self._standardised(log_normalised(X[:, genes]).toarray())))


def _weighted_median(values, weights):
    """Each column's weighted median of ``values`` (each entry weighted by the same entry of ``weights``)."""
    order = np.argsort(values, axis=0, kind="stable")
    cumulative = np.cumsum(np.take_along_axis(weights, order, axis=0), axis=0)
    at = (cumulative >= cumulative[-1] / 2).argmax(axis=0)
    columns = np.arange(values.shape[1])
    return values[order[at, columns], columns]


def _log_profile(pooled):
    return np.log((pooled + _PSEUDOCOUNT) / (pooled.sum(axis=1, keepdims=True) + _PSEUDOCOUNT * pooled.shape[1]))


def cross_distances(pooled, halves, first, second):
    """How far apart each cluster of one batch is from each of another, once a per-gene factor between the batches
    is removed: the root mean square log-fold change beyond counting noise.

    Parameters
    ----------
    pooled : ndarray of shape (n_clusters, n_genes)
        Each cluster's summed counts.
    halves : tuple of two ndarrays of shape (n_clusters, n_genes)
        The summed counts of a random half of each cluster's cells and of the other half: their difference measures
        each gene's noise (counting and cell-to-cell) in the cluster's pooled profile.
    first, second : ndarray of int
        The clusters of the two batches (rows of ``pooled``).

    Returns
    -------
    ndarray of shape (len(first), len(second))
        0 where the remaining difference is within the noise. Each gene's
        squared log-fold change, less its noise, is weighted by ``1 / (v + 0.05)^2``,
        ``v`` its counting variance: well measured genes count most.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.RandomState(0)
    >>> shares = rng.dirichlet(np.ones(50), size=2)  # two populations
    >>> factor = np.exp(rng.normal(0.0, 0.5, 50))  # a technology: each gene by its own factor
    >>> def cluster(share, n=100):
    ...     cells = rng.poisson(share * 1000, size=(n, 50)).astype(float)
    ...     return cells.sum(axis=0), (cells[::2].sum(axis=0), cells[1::2].sum(axis=0))
    >>> made = [cluster(shares[0]), cluster(shares[1]), cluster(shares[0] * factor), cluster(shares[1] * factor)]
    >>> pooled = np.array([m[0] for m in made])
    >>> halves = (np.array([m[1][0] for m in made]), np.array([m[1][1] for m in made]))
    >>> d = cross_distances(pooled, halves, np.array([0, 1]), np.array([2, 3]))
    >>> bool(d[0, 0] < 0.1 and d[1, 1] < 0.1 and d[0, 1] > 0.5)
    True
    """
    logs = _log_profile(pooled)
    noise = (_log_profile(halves[0]) - _log_profile(halves[1])) ** 2 / 4.0  # a half's variance is twice the whole's
    counting = 1.0 / (pooled + _PSEUDOCOUNT)

    def centred(difference, weight):
        # proportions: a per-gene factor also moves every gene of a population by one constant (its total's change)
        return difference - (weight * difference).sum(axis=-1, keepdims=True) / weight.sum(axis=-1, keepdims=True)

    # each pair's genes' weights do not change with the factor: computed once for every round
    weight = 1.0 / (counting[first][:, None, :] + counting[second][None, :, :] + _WEIGHT_FLOOR) ** 2
    total_weight = weight.sum(axis=2)

    def distances(shift, shift_noise):
        difference = centred(logs[first][:, None, :] - logs[second][None, :, :] - shift, weight)
        excess = difference ** 2 - noise[first][:, None, :] - noise[second][None, :, :] - shift_noise
        return np.sqrt(np.maximum((weight * excess).sum(axis=2) / total_weight, 0.0))

    shift = shift_noise = np.zeros(pooled.shape[1])
    for _ in range(_ROUNDS):
        d = distances(shift, shift_noise)
        nearest = d.argmin(axis=1)
        mutual = np.flatnonzero(d[:, nearest].argmin(axis=0) == np.arange(len(first)))
        pairs = first[mutual], second[nearest[mutual]]
        # each pair's log-ratio of a gene weighed by how well the pair measures it (a gene neither cluster expresses
        # tells nothing of its factor), less the pair's own constant
        precision = 1.0 / (counting[pairs[0]] + counting[pairs[1]] + _WEIGHT_FLOOR)
        ratios = logs[pairs[0]] - logs[pairs[1]]
        offsets = (ratios - shift) - centred(ratios - shift, precision ** 2)
        shift = _weighted_median(ratios - offsets, precision)
        # the factor's own noise, which every pair's difference carries: a median's variance, pi / 2 times a mean's
        pair_noise = np.median(noise[pairs[0]] + noise[pairs[1]], axis=0)
        shift_noise = np.minimum(np.pi / 2 / len(mutual), 1.0) * pair_noise
    return distances(shift, shift_noise)


def _pooled_clusters(data, group, genes, random_state, min_clusters=1):
    """Cluster the cells of each group (:class:`_BatchSpace`) and pool each cluster's counts on ``genes``.

    ``group``: each row's group (a batch; -1: left out). Each group's clusters are fitted on at most ``MAX_FIT_CELLS``
    of its cells, every cell then assigned, a block of rows at a time; at least ``min_clusters`` where the group has
    ``2 * MIN_CLUSTER_CELLS`` cells for each. Returns each row's cluster (-1 where left out), the summed counts of
    two random halves of each cluster's cells, and each cluster's group.
    """
    spaces, offsets, cluster_groups = {}, {}, []
    for g in np.unique(group[group >= 0]):
        rows = np.flatnonzero(group == g)
        if len(rows) > MAX_FIT_CELLS:
            rows = np.sort(random_state.choice(rows, MAX_FIT_CELLS, replace=False))
        fitted = np.vstack([X for _, X in data.take(rows).row_blocks()]) if not data.stored_sparse else \
            sp.vstack([sp.csr_matrix(X) for _, X in data.take(rows).row_blocks()], format="csr")
        n_clusters = max(len(rows) // CELLS_PER_CLUSTER, min(min_clusters, len(rows) // (2 * MIN_CLUSTER_CELLS)))
        spaces[g] = _BatchSpace(fitted, genes, random_state.randint(np.iinfo(np.int32).max), n_clusters)
        offsets[g] = len(cluster_groups)
        cluster_groups += [g] * spaces[g].n_clusters
    cluster_groups = np.asarray(cluster_groups, dtype=np.int64)
    n_clusters = len(cluster_groups)
    clusters = np.full(len(group), -1, dtype=np.int64)
    halves = (np.zeros((n_clusters, len(genes))), np.zeros((n_clusters, len(genes))))
    side = random_state.rand(len(group)) < 0.5
    for rows, X in data.row_blocks():
        X = sp.csr_matrix(X, dtype=np.float64)
        found = np.full(X.shape[0], -1, dtype=np.int64)
        for g in np.unique(group[rows]):
            mine = group[rows] == g
            if g >= 0:
                found[mine] = offsets[g] + spaces[g].assign(X[mine], genes)
        clusters[rows] = found
        kept = found >= 0
        selected = X[:, genes][kept]
        for target, keep in ((halves[0], side[rows][kept]), (halves[1], ~side[rows][kept])):
            member = sp.csr_matrix((keep.astype(np.float64), (found[kept], np.arange(kept.sum()))),
                                   shape=(n_clusters, kept.sum()))
            target += np.asarray((member @ selected).todense())
    return clusters, halves, cluster_groups


def counterparts(data, batch, n_batches, threshold, random_state=None):
    """Cluster each batch's cells (``N_CLUSTERINGS`` times) and say which batches hold a counterpart of each group of
    cells.

    One clustering is one draw: a cut that puts two populations in one cluster (small batches' CD4 and CD8 T cells,
    say) gives it a pooled profile no cluster of another batch matches, and another draw cuts them apart. So each
    batch is clustered ``N_CLUSTERINGS`` times; a group is the cells that share their cluster in every clustering,
    and a batch holds a group's population where one of the group's clusters has a counterpart there.

    Parameters
    ----------
    data : skvae.train.data.RowData
        Counts, in memory or on disk (read a block of rows at a time, once for
        the genes and once for each clustering, and the cells clusters are fitted
        on: at most 10,000 of each batch).
    batch : ndarray of int of shape (n_rows,)
        Each row's batch, in ``range(n_batches)``.
    n_batches : int
    threshold : float
        The largest root mean square log-fold change between two clusters (beyond
        noise, a per-gene factor between their batches removed) that makes them
        counterparts.
    random_state : int, RandomState instance or None, default=None

    Returns
    -------
    groups : ndarray of int of shape (n_rows,)
        Each row's group.
    held : ndarray of bool of shape (n_groups, n_batches)
        Which batches hold each group's population: its own and those where a counterpart of one of its clusters is.
    distances : ndarray of shape (n_groups, n_batches)
        The least, over the group's clusters, of a cluster's distance to the nearest cluster of each batch (0 for its
        own); NaN where none was compared: a cluster of fewer than ``MIN_CLUSTER_CELLS`` cells (held by every batch,
        as without the gate), or a batch without cells or without a cluster large enough.
    group_batches : ndarray of int of shape (n_groups,)
        Each group's batch.
    """
    random_state = check_random_state(random_state)
    batch = np.asarray(batch)
    genes = _variable_genes(data, batch, n_batches, N_GENES)
    drawn = [_cluster_distances(data, batch, n_batches, genes, random_state) for _ in range(N_CLUSTERINGS)]
    _, first, groups = np.unique(np.stack([clusters for clusters, _, _ in drawn], axis=1), axis=0, return_index=True,
                                 return_inverse=True)
    distances = np.full((len(first), n_batches), np.nan)
    compared = np.zeros(len(first), dtype=bool)
    for clusters, cluster_distances, cluster_compared in drawn:
        own = clusters[first]  # each group's cluster in this clustering
        distances[cluster_compared[own]] = np.fmin(distances, cluster_distances[own])[cluster_compared[own]]
        compared |= cluster_compared[own]
    return groups.ravel(), held_batches(distances, threshold, compared), distances, batch[first]


def _cluster_distances(data, batch, n_batches, genes, random_state):
    """One clustering of each batch's cells (:func:`_pooled_clusters`): each row's cluster, each cluster's distance to
    the nearest cluster of each batch (:func:`cross_distances`; 0 for its own, NaN where not compared), and whether it
    was compared (``MIN_CLUSTER_CELLS`` cells or more)."""
    clusters, halves, cluster_batches = _pooled_clusters(data, batch, genes, random_state)
    n_clusters = len(cluster_batches)
    pooled = halves[0] + halves[1]  # each cell is in one half
    distances = np.full((n_clusters, n_batches), np.nan)
    distances[np.arange(n_clusters), cluster_batches] = 0.0
    compared = np.bincount(clusters, minlength=n_clusters) >= MIN_CLUSTER_CELLS
    present = np.unique(cluster_batches[compared])
    for i, a in enumerate(present):
        for b in present[i + 1:]:
            first = np.flatnonzero((cluster_batches == a) & compared)
            second = np.flatnonzero((cluster_batches == b) & compared)
            d = cross_distances(pooled, halves, first, second)
            distances[first, b], distances[second, a] = d.min(axis=1), d.min(axis=0)
    return clusters, distances, compared


def held_batches(distances, threshold, compared=None):
    """Which batches hold each cluster's population: its own, those with a counterpart within ``threshold``, and every
    batch for a cluster not compared.

    Parameters
    ----------
    distances : ndarray of shape (n_clusters, n_batches)
        :func:`counterparts`' (NaN: not compared).
    threshold : float
    compared : ndarray of bool of shape (n_clusters,), default=None
        The clusters compared; None: those with a distance to another batch.

    Returns
    -------
    ndarray of bool of shape (n_clusters, n_batches)

    Examples
    --------
    >>> import numpy as np
    >>> held_batches(np.array([[0.0, 0.2], [0.0, 0.9], [0.0, np.nan]]), 0.4).tolist()
    [[True, True], [True, False], [True, True]]
    """
    if compared is None:
        compared = (~np.isnan(distances)).sum(axis=1) > 1
    held = np.nan_to_num(distances, nan=np.inf) <= threshold
    held[~compared] = True
    return held


# the fitted attributes of a gate (saved with the model)
COUNTERPART_ATTRIBUTES = ("counterpart_distances_", "counterpart_batches_")


def check_whole_data(threshold, incremental, parallel):
    """Refuse ``batch_counterparts`` where a call sees part of the training cells: a ValueError naming the way out.

    Parameters
    ----------
    threshold : float or None
        The estimator's ``batch_counterparts``.
    incremental : bool
        A ``partial_fit`` call.
    parallel : object or None
        The rank group of a data-parallel run (torchrun).
    """
    if threshold is not None and (incremental or parallel is not None):
        seen = "partial_fit sees one chunk" if incremental else "each process of torchrun sees its own rows"
        raise ValueError(f"batch_counterparts clusters all the training cells of every batch before training: {seen} "
                         "at a time. Call fit in one process, or set batch_counterparts=None.")


def labelled_by_clusters(estimator, data):
    """The training rows with each cell's group (:func:`counterparts`) as its label, and the fitted attributes of the
    gate, where an embedder's ``batch_counterparts`` gates its adversary; ``data`` and no attributes where it does not
    (no threshold, no adversary, fewer than two batches).

    Parameters
    ----------
    estimator : skvae.base.BaseEmbedder
        Read: ``batch_counterparts``, ``batch_adversary``, ``likelihood``, ``covariates_``, ``random_state``.
    data : skvae.train.data.RowData
        The checked training rows, with their covariates.

    Returns
    -------
    data : skvae.train.data.RowData
    attributes : dict
        ``counterpart_distances_`` and ``counterpart_batches_`` (:func:`counterparts`), or empty.

    Raises
    ------
    ValueError
        For a classifier (its labels gate the adversary) or a likelihood that does not model counts.
    """
    threshold = estimator.batch_counterparts
    if threshold is None:
        return data, {}
    if "batch_adversary_types" in estimator.get_params():  # a classifier
        raise ValueError(f"{type(estimator).__name__} gates its adversary by the types its labels show in each batch "
                         "(batch_adversary_types); batch_counterparts is the embedders' gate without labels. Set "
                         "batch_counterparts=None.")
    if not LIKELIHOODS[estimator.likelihood].counts:
        raise ValueError("batch_counterparts compares the batches' pooled counts: it needs a count likelihood ('nb', "
                         f"'zinb' or 'poisson') and raw counts, not likelihood={estimator.likelihood!r}.")
    if estimator.batch_adversary == 0 or data.covariates is None or estimator.covariates_.n_categories[0] < 2:
        return data, {}  # nothing to gate
    groups, _, distances, batches = counterparts(data, data.covariates[:, 0], estimator.covariates_.n_categories[0],
                                                 threshold, estimator.random_state)
    return data.with_labels(groups), {"counterpart_distances_": distances, "counterpart_batches_": batches}


def counterpart_table(estimator):
    """Which batches hold each group's population, as the training config takes it (:func:`held_batches` of the
    fitted distances and today's ``batch_counterparts``); None without a gate.

    Parameters
    ----------
    estimator : skvae.base.BaseEmbedder

    Returns
    -------
    tuple of tuple of bool, or None
    """
    distances = getattr(estimator, "counterpart_distances_", None)
    if distances is None or estimator.batch_counterparts is None:
        return None
    return tuple(map(tuple, held_batches(distances, estimator.batch_counterparts).tolist()))


# the reference's clusters a query's are compared with (the classifier's ``unknown_counterparts``), saved with it
REFERENCE_ATTRIBUTES = ("reference_cluster_genes_", "reference_cluster_halves_", "reference_cluster_batches_")


def reference_clusters(data, labels, batch, random_state=None):
    """The labelled cells of each batch and type, clustered, each cluster's counts pooled (as two random halves).

    Parameters
    ----------
    data : skvae.train.data.RowData
        Counts of the training cells.
    labels : ndarray of int of shape (n_rows,)
        Each row's type (-1: unlabelled, left out).
    batch : ndarray of int of shape (n_rows,)
        Each row's batch.
    random_state : int, RandomState instance or None, default=None

    Returns
    -------
    dict
        ``reference_cluster_genes_`` (the genes compared: the most variable within batches), ``reference_cluster_halves_``
        (of shape (2, n_clusters, n_genes)) and ``reference_cluster_batches_``; clusters of at least
        ``MIN_CLUSTER_CELLS`` cells only.
    """
    random_state = check_random_state(random_state)
    rows = np.flatnonzero(labels >= 0)
    data, labels, batch = data.take(rows), labels[rows], np.asarray(batch)[rows]
    n_types = int(labels.max()) + 1 if len(labels) else 1
    genes = _variable_genes(data, batch, int(batch.max()) + 1 if len(batch) else 1, N_GENES)
    clusters, halves, groups = _pooled_clusters(data, batch * n_types + labels, genes, random_state)
    kept = np.bincount(clusters, minlength=len(groups)) >= MIN_CLUSTER_CELLS
    return {"reference_cluster_genes_": genes, "reference_cluster_halves_": np.stack(halves)[:, kept],
            "reference_cluster_batches_": groups[kept] // n_types}


def query_distances(data, groups, genes, halves, batches):
    """Each cell's cluster's distance to the nearest reference cluster (:func:`reference_clusters`), per-gene factors
    between the cell's group and each reference batch removed (:func:`cross_distances`).

    Parameters
    ----------
    data : skvae.train.data.RowData
        The query cells' counts.
    groups : array-like of shape (n_rows,) or None
        Each cell's group (its batch): clustered apart. None: all one group.
    genes, halves, batches : ndarray
        The reference's ``reference_cluster_genes_``, ``reference_cluster_halves_``, ``reference_cluster_batches_``.

    Returns
    -------
    ndarray of shape (n_rows,)
        NaN where not compared: a cluster of fewer than ``MIN_CLUSTER_CELLS`` cells, or no reference cluster.
    """
    group = np.zeros(data.n_rows, dtype=np.int64) if groups is None else pd.factorize(np.asarray(groups))[0]
    # the same cells give the same clusters, whatever the estimator's random_state
    clusters, own, own_groups = _pooled_clusters(data, group, genes, np.random.RandomState(0), MIN_QUERY_CLUSTERS)
    n_reference = halves.shape[1]
    both = (np.vstack([halves[0], own[0]]), np.vstack([halves[1], own[1]]))
    pooled = both[0] + both[1]
    distances = np.full(len(own_groups), np.nan)
    compared = np.bincount(clusters[clusters >= 0], minlength=len(own_groups)) >= MIN_CLUSTER_CELLS
    for g in np.unique(own_groups[compared]):
        first = n_reference + np.flatnonzero((own_groups == g) & compared)
        for b in np.unique(batches):
            d = cross_distances(pooled, both, first, np.flatnonzero(batches == b)).min(axis=1)
            distances[first - n_reference] = np.fmin(distances[first - n_reference], d)
    return distances[clusters]
