"""Seurat-style preprocessing of UMI counts: quality control, LogNormalize, vst, ScaleData.

Row filtering cannot live in a scikit-learn Pipeline, so quality control is a
function returning masks; the rest are transformers that chain in a Pipeline::

    make_pipeline(LogNormalizer(), ClippedStandardScaler(), BetaVSCEmbedder())
"""

import warnings
from numbers import Integral, Real

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.base import BaseEstimator, OneToOneFeatureMixin, TransformerMixin, _fit_context
from sklearn.feature_selection import SelectorMixin
from sklearn.utils import Bunch, check_array, gen_batches
from sklearn.utils._param_validation import Interval
from sklearn.utils.sparsefuncs import mean_variance_axis
from sklearn.utils.validation import check_is_fitted, check_non_negative, validate_data

from ._persistence import Saveable, attributes_from_builtins, attributes_to_builtins, to_builtins
from ._covariates import combined_labels
from ._validation import continuous_names, is_integer_valued, refuse_boolean_numbers
from .loess import loess
from .train.data import BackedColumns, RowData, is_backed_sparse

# Rows per block when a dense transform computes in float64: a bounded temporary, whatever the size of X.
_ROWS_PER_BLOCK = 4096


def _per_cell_sum(X):
    # float64 accumulation (bincount's weights are float64): a float32 row can sum past float32's range
    if sp.issparse(X):
        X = X.tocsr()
        return np.bincount(np.repeat(np.arange(X.shape[0]), np.diff(X.indptr)), weights=X.data, minlength=X.shape[0])
    return X.sum(axis=1, dtype=np.float64)


def _n_nonzero(X, axis):
    return X.getnnz(axis=axis) if sp.issparse(X) else np.count_nonzero(X, axis=axis)


def _validated_counts(X, gene_names=None):
    """X as a float array or CSR matrix of non-negative counts, with a name for each gene when names are given."""
    X = check_array(X, accept_sparse="csr", dtype=[np.float64, np.float32])
    check_non_negative(X, "counts")
    if gene_names is not None and len(gene_names) != X.shape[1]:
        raise ValueError(f"gene_names has {len(gene_names)} names but X has {X.shape[1]} genes.")
    return X


def _batch_groups(batch, n_cells, continuous=()):
    """The rows of each batch, for per-batch statistics; each batch needs 2 cells for a variance.

    ``continuous``: columns of ``batch`` that are continuous covariates (numbers per cell), left out.
    """
    if continuous and isinstance(batch, (pd.DataFrame, dict)):
        batch = {key: batch[key] for key in batch.keys() if str(key) not in continuous}
        if not batch:
            return []
    codes, categories = pd.factorize(combined_labels(batch, n_cells))
    groups = [np.flatnonzero(codes == code) for code in range(len(categories))]
    small = [repr(category) for category, rows in zip(categories, groups, strict=True) if len(rows) < 2]
    if small:
        raise ValueError(f"batch {', '.join(small[:5])}{' and more' if len(small) > 5 else ''} has fewer than 2 cells: "
                         "a gene's variance needs at least 2. (A column of numbers per cell, such as percent "
                         "mitochondrial counts, is a continuous covariate: name it in continuous_covariates.)")
    return groups


def _parts(block, rows, groups):
    """Each group's rows of ``block`` (the rows ``rows`` of the whole): the block itself for None, None when it has none."""
    for group in groups:
        if group is None:
            yield block
            continue
        inside = group[(group >= rows.start) & (group < rows.stop)] - rows.start
        yield block[inside] if len(inside) else None


def _moments(X):
    """The number of rows, each column's mean and sum of squared deviations from it, computed in float64."""
    X = X.astype(np.float64, copy=False)  # float32 sums would differ with the blocks a file is read in
    if sp.issparse(X):
        mean, variance = mean_variance_axis(X, axis=0)
    else:
        mean, variance = X.mean(axis=0), X.var(axis=0)
    n = X.shape[0]
    return n, np.asarray(mean, dtype=np.float64), np.asarray(variance, dtype=np.float64) * n


def _merged(a, b):
    """The moments of two blocks of rows together (Chan, Golub and LeVeque's pairwise update); ``a`` may be None."""
    if a is None:
        return b
    (na, mean_a, squares_a), (nb, mean_b, squares_b) = a, b
    n = na + nb
    delta = mean_b - mean_a
    return n, mean_a + delta * (nb / n), squares_a + squares_b + delta**2 * (na * nb / n)


def _clipped_sums(X, clip):
    """The sums over rows of each column's values clipped at ``clip``, and of their squares (float64)."""
    if sp.issparse(X):
        X = X.tocsc()
        clipped = sp.csc_matrix((np.minimum(X.data, np.repeat(clip, np.diff(X.indptr))), X.indices, X.indptr), X.shape)
        return np.stack([np.asarray(clipped.sum(axis=0)).ravel(), np.asarray(clipped.power(2).sum(axis=0)).ravel()])
    clipped = np.minimum(X, clip)
    return np.stack([clipped.sum(axis=0), (clipped**2).sum(axis=0)])


def qc_metrics(X, gene_names, *, mito_prefix="MT-"):
    """Per-cell quality metrics of a counts matrix, as Seurat computes them.

    Parameters
    ----------
    X : {array-like, sparse matrix} of shape (n_cells, n_genes)
        UMI counts.
    gene_names : array-like of str of shape (n_genes,)
        Gene symbols; mitochondrial genes start with ``mito_prefix``.
    mito_prefix : str, default="MT-"
        Prefix of mitochondrial gene symbols (``"mt-"`` for mouse).

    Returns
    -------
    metrics : pandas.DataFrame of shape (n_cells, 3)
        ``n_genes`` (genes with a count), ``total_counts`` and ``pct_mito``
        (percentage of counts on mitochondrial genes).

    Examples
    --------
    >>> import numpy as np
    >>> from skvae.preprocessing import qc_metrics
    >>> qc_metrics(np.array([[1, 0, 3], [0, 2, 2]]), ["MT-CO1", "CD3E", "LYZ"])
       n_genes  total_counts  pct_mito
    0        2           4.0      25.0
    1        2           4.0       0.0
    """
    X = _validated_counts(X, gene_names)
    total = _per_cell_sum(X)
    mito = np.char.startswith(np.asarray(gene_names, dtype=str), mito_prefix)
    with np.errstate(invalid="ignore", divide="ignore"):
        pct_mito = np.where(total > 0, 100 * _per_cell_sum(X[:, mito]) / total, 0.0)
    return pd.DataFrame({"n_genes": _n_nonzero(X, axis=1), "total_counts": total, "pct_mito": pct_mito})


def filter_cells_genes(
    X, gene_names, *, min_cells=3, min_genes=200, max_genes=2500, max_pct_mito=5.0, mito_prefix="MT-"
):
    """The Seurat PBMC3k tutorial's quality control, as masks.

    Genes are kept when seen in at least ``min_cells`` cells; then, on those genes,
    cells are kept when ``min_genes < n_genes < max_genes`` and
    ``pct_mito < max_pct_mito``. On PBMC3k this keeps 2,638 cells and 13,714 genes.

    Parameters
    ----------
    X : {array-like, sparse matrix} of shape (n_cells, n_genes)
        UMI counts.
    gene_names : array-like of str of shape (n_genes,)
        Gene symbols.
    min_cells : int, default=3
    min_genes : int, default=200
    max_genes : int, default=2500
    max_pct_mito : float, default=5.0
    mito_prefix : str, default="MT-"

    Returns
    -------
    result : :class:`~sklearn.utils.Bunch`
        ``cell_mask`` (n_cells,) and ``gene_mask`` (n_genes,) booleans;
        ``cell_metrics``: :func:`qc_metrics` of every cell on the kept genes;
        ``n_cells_per_gene`` (n_genes,).

    Examples
    --------
    >>> import numpy as np
    >>> from skvae.preprocessing import filter_cells_genes
    >>> X = np.array([[5, 1, 0], [4, 0, 0], [3, 2, 0], [6, 0, 1]])
    >>> kept = filter_cells_genes(X, ["A", "B", "C"], min_cells=2, min_genes=1, max_genes=3)
    >>> kept.gene_mask.tolist(), kept.cell_mask.tolist()
    ([True, True, False], [True, False, True, False])
    """
    X = _validated_counts(X, gene_names)
    n_cells_per_gene = _n_nonzero(X, axis=0)
    gene_mask = n_cells_per_gene >= min_cells
    metrics = qc_metrics(X[:, gene_mask], np.asarray(gene_names)[gene_mask], mito_prefix=mito_prefix)
    cell_mask = (
        (metrics["n_genes"] > min_genes) & (metrics["n_genes"] < max_genes) & (metrics["pct_mito"] < max_pct_mito)
    ).to_numpy()
    return Bunch(cell_mask=cell_mask, gene_mask=gene_mask, cell_metrics=metrics, n_cells_per_gene=n_cells_per_gene)


class LogNormalizer(OneToOneFeatureMixin, TransformerMixin, BaseEstimator):
    """Seurat's LogNormalize: counts / cell total * ``target_sum``, then log1p.

    Sparse input gives sparse output; float32 stays float32.

    Parameters
    ----------
    target_sum : float, default=1e4
        Total every cell is scaled to before the logarithm.

    Attributes
    ----------
    n_features_in_ : int
        Number of genes seen during ``fit``.

    feature_names_in_ : ndarray of shape (`n_features_in_`,)
        Gene names seen during ``fit``, when `X` has string column names.

    Examples
    --------
    >>> import numpy as np
    >>> from skvae.preprocessing import LogNormalizer
    >>> LogNormalizer(target_sum=10).fit_transform(np.array([[1.0, 4.0]])).round(4)
    array([[1.0986, 2.1972]])
    """

    _parameter_constraints = {"target_sum": [Interval(Real, 0, None, closed="neither")]}

    def __init__(self, target_sum=1e4):
        self.target_sum = target_sum

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Check the counts and record the number of genes.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_cells, n_genes)
            UMI counts.
        y : Ignored
            Not used, present for API consistency by convention.

        Returns
        -------
        self : object
            The fitted transformer.
        """
        X = validate_data(self, X, accept_sparse="csr", dtype=[np.float64, np.float32])
        check_non_negative(X, "LogNormalizer")
        return self

    def transform(self, X):
        """Normalise each cell to ``target_sum`` and take log1p.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_cells, n_genes)
            UMI counts; every cell must have at least one count.

        Returns
        -------
        X_new : {ndarray, sparse matrix} of shape (n_cells, n_genes)
        """
        check_is_fitted(self)
        X = validate_data(self, X, accept_sparse="csr", dtype=[np.float64, np.float32], reset=False, copy=True)
        check_non_negative(X, "LogNormalizer")
        totals = _per_cell_sum(X)
        if (empty := np.flatnonzero(totals == 0)).size:
            raise ValueError(
                f"{empty.size} cell(s) have no counts (rows {empty[:5].tolist()}...): their normalised "
                "expression is undefined. Remove them first, e.g. with filter_cells_genes."
            )
        # the products in float64: the factor of a cell with a huge total is below float32's range
        scale = self.target_sum / totals
        if sp.issparse(X):
            X.data = np.log1p(X.data * np.repeat(scale, np.diff(X.indptr))).astype(X.dtype, copy=False)
            return X
        for block in gen_batches(X.shape[0], _ROWS_PER_BLOCK):
            X[block] = np.log1p(X[block] * scale[block, None])
        return X

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        tags.input_tags.positive_only = True
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags


class ClippedStandardScaler(OneToOneFeatureMixin, TransformerMixin, BaseEstimator):
    """Seurat's ScaleData: z-score each gene, then clip values above ``max_value``.

    Genes are centred on their mean and divided by their standard deviation
    (with ``n - 1``, as R's ``sd``); a gene with no variance is only centred.
    Only large values are clipped, as in Seurat, so a gene seen in few cells
    cannot dominate. Centring makes the output dense, also for sparse input.

    Parameters
    ----------
    max_value : float or None, default=10.0
        Upper clip of the scaled values; None for no clipping.

    Attributes
    ----------
    mean_ : ndarray of shape (n_features,)
        Mean of each gene.

    scale_ : ndarray of shape (n_features,)
        Standard deviation of each gene (1 where it is 0).

    n_features_in_ : int
        Number of genes seen during ``fit``.

    feature_names_in_ : ndarray of shape (`n_features_in_`,)
        Gene names seen during ``fit``, when `X` has string column names.

    Examples
    --------
    >>> import numpy as np
    >>> from skvae.preprocessing import ClippedStandardScaler
    >>> X = np.array([[0.0], [0.0], [0.0], [4.0]])
    >>> ClippedStandardScaler(max_value=1.0).fit_transform(X).ravel()
    array([-0.5, -0.5, -0.5,  1. ])
    """

    _parameter_constraints = {"max_value": [Interval(Real, 0, None, closed="neither"), None]}

    def __init__(self, max_value=10.0):
        self.max_value = max_value

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Compute each gene's mean and standard deviation.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_cells, n_genes)
            E.g. log-normalised expression.
        y : Ignored
            Not used, present for API consistency by convention.

        Returns
        -------
        self : object
            The fitted transformer.
        """
        X = validate_data(self, X, accept_sparse=["csr", "csc"], dtype=[np.float64, np.float32], ensure_min_samples=2)
        n = X.shape[0]
        # float64 statistics: in float32 a constant gene gets a rounding-error variance and a huge scale
        if sp.issparse(X):
            mean, variance = mean_variance_axis(X.astype(np.float64), axis=0)
        else:
            mean, variance = X.mean(axis=0, dtype=np.float64), X.var(axis=0, dtype=np.float64)
        std = np.sqrt(variance * n / (n - 1))
        self.mean_ = np.asarray(mean, dtype=np.float64)
        # scikit-learn's bound on the variance that summation error alone gives a constant feature
        eps = np.finfo(np.float64).eps
        constant = variance <= n * eps * variance + (n * np.abs(self.mean_) * eps) ** 2
        self.scale_ = np.where(constant | (std == 0), 1.0, std)
        return self

    def transform(self, X):
        """Scale and clip.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_cells, n_genes)

        Returns
        -------
        X_new : ndarray of shape (n_cells, n_genes)
        """
        check_is_fitted(self)
        X = validate_data(self, X, accept_sparse="csr", dtype=[np.float64, np.float32], reset=False)
        X = X.toarray() if sp.issparse(X) else X.copy()
        X -= self.mean_.astype(X.dtype)
        X /= self.scale_.astype(X.dtype)
        if self.max_value is not None:
            np.minimum(X, X.dtype.type(self.max_value), out=X)
        return X

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags


class HighlyVariableGenes(Saveable, SelectorMixin, BaseEstimator):
    """Select the most variable genes by Seurat's vst method, from counts.

    A LOESS curve (degree 2) of log10 variance against log10 mean gives each
    gene's expected variance; counts are standardised by it, clipped at
    ``sqrt(n_cells)`` and the genes ranked by the variance of the result
    (Stuart et al., 2019; scanpy's ``flavor="seurat_v3"``).

    With batches (``fit(X, batch=...)``) the genes are ranked within each batch,
    and those selected in the most batches are kept, ties broken by their median
    rank, as scanpy's ``highly_variable_genes(flavor="seurat_v3", batch_key=...)``
    does: a gene that varies only because batches differ is not preferred.

    Parameters
    ----------
    n_top_genes : int, default=2000
        Number of genes to keep (all of them if there are fewer).
    span : float, default=0.3
        Share of genes in each local regression of the LOESS fit.
    continuous_covariates : str or list of str, default=None
        Columns of ``batch=`` that are continuous covariates (numbers per cell,
        for the embedder that follows, e.g. ``"percent_mito"``): the genes are
        ranked within the batches of the other columns.

    Attributes
    ----------
    means_ : ndarray of shape (n_features,)
        Mean count of each gene.

    variances_ : ndarray of shape (n_features,)
        Variance of each gene's counts.

    variances_norm_ : ndarray of shape (n_features,)
        Variance of the standardised, clipped counts: the ranking score (with
        batches, its mean over the batches).

    n_batches_selected_ : ndarray of int of shape (n_features,) or None
        With batches: in how many batches each gene is among the ``n_top_genes``
        most variable. None without batches.

    support_ : ndarray of bool of shape (n_features,)
        The selected genes.

    n_features_in_ : int
        Number of genes seen during ``fit``.

    feature_names_in_ : ndarray of shape (`n_features_in_`,)
        Gene names seen during ``fit``, when `X` has string column names.

    References
    ----------
    T. Stuart et al. "Comprehensive Integration of Single-Cell Data". Cell 177,
    1888-1902 (2019).

    Examples
    --------
    >>> import numpy as np
    >>> from skvae.preprocessing import HighlyVariableGenes
    >>> rng = np.random.RandomState(0)
    >>> counts = rng.poisson(rng.gamma(1.0, 1.0, size=300), size=(200, 300))
    >>> counts[:20, 7] += rng.poisson(10, size=20)  # gene 7 marks a group of 20 cells
    >>> selector = HighlyVariableGenes(n_top_genes=3).fit(counts)
    >>> bool(selector.get_support()[7]), selector.transform(counts).shape
    (True, (200, 3))
    """

    _parameter_constraints = {
        "n_top_genes": [Interval(Integral, 1, None, closed="left")],
        "span": [Interval(Real, 0, 1, closed="right")],
        "continuous_covariates": ["array-like", str, None],
    }

    def __init__(self, n_top_genes=2000, *, span=0.3, continuous_covariates=None):
        self.n_top_genes = n_top_genes
        self.span = span
        self.continuous_covariates = continuous_covariates

    def _validate_params(self):
        super()._validate_params()
        refuse_boolean_numbers(self, self._parameter_constraints)

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None, *, batch=None):
        """Rank the genes by standardised variance.

        Parameters
        ----------
        X : {array-like, sparse matrix, anndata.abc.CSRDataset} of shape (n_cells, n_genes)
            UMI counts. A CSR matrix on disk (a backed AnnData's ``X``, or
            ``anndata.io.sparse_dataset`` of a layer) is read in two passes of
            bounded blocks of rows, never whole; it selects the same genes as the
            matrix in memory.
        y : Ignored
            Not used, present for API consistency by convention.
        batch : array-like of shape (n_cells,), DataFrame or dict, default=None
            Each cell's batch: rank the genes within each batch (at least 2 cells
            each) and keep those selected in the most batches. Several columns
            (a DataFrame or dict, as the embedders take them): within each
            combination of their values.

        Returns
        -------
        self : object
            The fitted selector.
        """
        data = self._validated_counts(X)
        n = data.n_rows
        groups = [] if batch is None else _batch_groups(batch, n, continuous_names(self.continuous_covariates))
        # the statistics of all cells, then of each batch's
        (self.means_, self.variances_, norm), *per_batch = self._standardised_variance(data, [None, *groups])
        self.n_batches_selected_ = None
        if not groups:  # no batches, or only continuous covariates
            self.variances_norm_ = norm
            top = np.argsort(-norm, kind="stable")[: self.n_top_genes]
        else:
            norms = np.array([statistics[2] for statistics in per_batch])
            # each gene's rank within each batch (0 = most variable), kept where it is among the top genes
            ranks = np.argsort(np.argsort(-norms, axis=1, kind="stable"), axis=1).astype(float)
            ranks[ranks >= self.n_top_genes] = np.nan
            self.n_batches_selected_ = np.sum(~np.isnan(ranks), axis=0)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # genes selected in no batch: all-NaN medians
                median_rank = np.nanmedian(ranks, axis=0)
            self.variances_norm_ = norms.mean(axis=0)
            top = np.lexsort((np.nan_to_num(median_rank, nan=np.inf), -self.n_batches_selected_))[: self.n_top_genes]
        self.support_ = np.zeros(data.n_features, dtype=bool)
        self.support_[top] = True
        return self

    def _validated_counts(self, X):
        """``X`` as rows in memory (scikit-learn's checks) or on disk (the file's), of non-negative counts."""
        data = RowData.from_input(X, check_in_memory=lambda X: validate_data(
            self, X, accept_sparse="csr", dtype=[np.float64, np.float32], ensure_min_samples=2))
        if data.on_disk:
            data.check_file(min_rows=2, reader=type(self).__name__)
            self.n_features_in_ = data.n_features
            self.__dict__.pop("feature_names_in_", None)
        integers = True
        for values in data.value_blocks():
            check_non_negative(values, "HighlyVariableGenes")
            integers = integers and is_integer_valued(values)
        if not integers:
            warnings.warn(
                "HighlyVariableGenes ranks genes by the variance of their raw counts (Seurat's vst), but X has "
                "non-integer values: log-normalised input selects other genes. Put it first in a Pipeline, "
                "before LogNormalizer: HighlyVariableGenes(), LogNormalizer(), ClippedStandardScaler().",
                UserWarning,
                stacklevel=3,
            )
        return data

    def _standardised_variance(self, data, groups):
        """Each group's genes' mean, variance, and the variance of their standardised, clipped counts (vst).

        ``groups``: row indices, or None for every row. Two passes over ``data``'s row
        blocks (one block in memory): the moments, merged across blocks (Chan et al.'s
        pairwise update), then the sums of the counts clipped at each group's mean +
        sqrt(n) * expected std.
        """
        moments = [None] * len(groups)
        for rows, block in data.row_blocks():
            for g, part in enumerate(_parts(block, rows, groups)):
                if part is not None:
                    moments[g] = _merged(moments[g], _moments(part))
        results, clips = [], []
        for count, mean, squares in moments:
            variance = squares / (count - 1)
            varies = variance > 0
            expected_std = np.ones_like(mean)
            expected_std[varies] = np.sqrt(10 ** loess(np.log10(mean[varies]), np.log10(variance[varies]),
                                                       span=self.span))
            results.append((count, mean, variance, varies, expected_std))
            clips.append(mean + np.sqrt(count) * expected_std)
        sums = [np.zeros((2, data.n_features)) for _ in groups]
        for rows, block in data.row_blocks():
            for g, part in enumerate(_parts(block, rows, groups)):
                if part is not None:
                    sums[g] += _clipped_sums(part, clips[g])
        statistics = []
        for (n, mean, variance, varies, expected_std), (total, total_sq) in zip(results, sums, strict=True):
            norm = (n * mean**2 + total_sq - 2 * mean * total) / ((n - 1) * expected_std**2)
            statistics.append((mean, variance, np.where(varies, norm, 0.0)))
        return statistics

    def transform(self, X):
        """Keep the selected genes of ``X``.

        Parameters
        ----------
        X : {array-like, sparse matrix, anndata.abc.CSRDataset} of shape (n_cells, n_genes)
            A matrix on disk gives a :class:`~skvae.train.data.BackedColumns`: the
            selected genes of the file, which skvae's embedders read a minibatch
            at a time.

        Returns
        -------
        X_new : array-like, sparse matrix or BackedColumns of shape (n_cells, n_selected_genes)
        """
        if is_backed_sparse(X):
            check_is_fitted(self)
            if X.shape[1] != self.n_features_in_:
                raise ValueError(f"X has {X.shape[1]} features, but HighlyVariableGenes is expecting "
                                 f"{self.n_features_in_} features as input.")
            return BackedColumns(X, np.flatnonzero(self.get_support()))
        return super().transform(X)

    def _get_support_mask(self):
        check_is_fitted(self)
        return self.support_

    # what a save keeps (skvae.pipeline.EmbeddingPipeline.save)
    _fitted_attributes = ("support_", "means_", "variances_", "variances_norm_", "n_batches_selected_",
                          "n_features_in_", "feature_names_in_")

    def saved_state(self):
        """Parameters and fitted attributes as builtins, for :meth:`skvae.pipeline.EmbeddingPipeline.save`.

        Returns
        -------
        dict
        """
        check_is_fitted(self)
        return {"estimator": type(self).__name__, "params": {name: to_builtins(value, name) for name, value in
                                                             self.get_params().items()},
                "attributes": attributes_to_builtins(self, self._fitted_attributes)}

    @classmethod
    def from_saved_state(cls, state, path):
        """The fitted selection of :meth:`saved_state`'s dictionary, checked against itself.

        Parameters
        ----------
        state : dict
        path : str or path-like
            The file it was read from, for messages.

        Returns
        -------
        HighlyVariableGenes
        """
        try:
            selection = cls(**state["params"])
            selection._validate_params()
            attributes = attributes_from_builtins(state["attributes"], path)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path} is damaged: its gene selection does not load: {exc}") from None
        n_features = attributes.get("n_features_in_")
        support = attributes.get("support_")
        names = attributes.get("feature_names_in_")
        if not (isinstance(n_features, int) and isinstance(support, np.ndarray) and support.dtype == bool
                and support.shape == (n_features,) and (names is None or names.shape == (n_features,))):
            raise ValueError(f"{path} is damaged: its gene selection's mask does not match its genes.")
        for name, value in attributes.items():
            if not (name == "feature_names_in_" and value is None):  # fitted without names: none to restore
                setattr(selection, name, value)
        return selection

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        tags.input_tags.positive_only = True
        return tags
