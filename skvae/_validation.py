"""Checks of the values that users pass: one place for every estimator, tool and data source.

The checks read values, not containers: a matrix in memory is checked whole, a matrix on
disk block by block (:meth:`skvae.train.data.RowData.value_blocks`), with the same rules and
messages either way.
"""

import os
import sys
import warnings
from numbers import Integral

import numpy as np
import pandas as pd
import scipy.sparse as sp
import sklearn
from sklearn.utils.validation import check_non_negative, validate_data

from ._covariates import Covariates, with_covariates
from .nn.likelihoods import LIKELIHOODS

# warnings point past the frames of these packages, at the user's code
_LIBRARY_FOLDERS = tuple(os.path.dirname(module.__file__) + os.sep for module in (sklearn, sys.modules[__package__]))
FLOAT32_MAX = float(np.finfo(np.float32).max)
# No UMI count of one gene in one cell comes near this; below it, a cell's total stays far inside float32.
MAX_COUNT = 2.0**31
# Values per block when a check scans a dense array: a bounded temporary, whatever the size of X.
_VALUES_PER_BLOCK = 2**22


def is_integer_valued(X):
    """Whether every value of ``X`` is a whole number, scanned in blocks so no temporary is the size of X.

    Parameters
    ----------
    X : ndarray or scipy.sparse matrix

    Returns
    -------
    bool

    Examples
    --------
    >>> import numpy as np
    >>> from skvae._validation import is_integer_valued
    >>> is_integer_valued(np.array([0.0, 3.0])), is_integer_valued(np.array([0.5]))
    (True, False)
    """
    values = np.ravel(X.data if sp.issparse(X) else X)
    return not any((values[start : start + _VALUES_PER_BLOCK] != np.round(values[start : start + _VALUES_PER_BLOCK])).any()
                   for start in range(0, values.size, _VALUES_PER_BLOCK))


def refuse_foreign_input(X):
    """Raise a clear TypeError for AnnData objects, dates and durations, which numpy would cast or mangle.

    Parameters
    ----------
    X : object
        What the user passed as ``X``.

    Examples
    --------
    >>> import numpy as np
    >>> from skvae._validation import refuse_foreign_input
    >>> refuse_foreign_input(np.zeros((2, 2)))  # numbers pass
    """
    if type(X).__name__ == "AnnData":  # anndata stays an optional dependency
        raise TypeError(
            "X is an AnnData object: pass its matrix, e.g. adata.X (log-normalised and scaled for "
            "likelihood='gaussian') or adata.layers['counts'] (raw counts for a count likelihood)."
        )
    dtypes = [dtype for dtype in getattr(X, "dtypes", [getattr(X, "dtype", None)]) if dtype is not None]
    if {dtype.kind for dtype in dtypes} & {"M", "m"}:
        raise TypeError("X holds dates or durations (datetime64 / timedelta64); pass numeric expression values.")
    if any(isinstance(dtype, pd.SparseDtype) and pd.isna(dtype.fill_value) for dtype in dtypes):
        raise ValueError("X is a pandas DataFrame of sparse columns that leave out NaN (fill value NaN), so most of "
                         "its values are missing: store it with fill value 0, e.g. X.sparse.to_coo() of "
                         "X.astype(pd.SparseDtype(float, 0)), or pass a scipy sparse matrix.")
    text = _a_text_value(X)
    if text is not None:
        raise ValueError(f"X holds text, such as {text!r}, and skvae could not convert text to numbers reliably: pass "
                         "numbers. If the text is numbers on purpose, convert it first, e.g. X.astype(float).")


def _a_text_value(X):
    """A string or bytes value held by ``X`` (an array, a DataFrame or nested lists), or None."""
    if isinstance(X, pd.DataFrame):
        columns = [X[name] for name, dtype in X.dtypes.items() if dtype.kind in "OUS"]
        values = (value for column in columns for value in column)
    elif sp.issparse(X) or (hasattr(X, "dtype") and X.dtype.kind not in "OUS"):
        return None
    else:
        try:
            values = np.asarray(X, dtype=object).ravel()
        except ValueError:  # ragged: scikit-learn's own message follows
            return None
    return next((value for value in values if isinstance(value, (str, bytes))), None)


def summed_duplicates(X):
    """``X``, with the entries of a gene stored twice in a row of a CSR matrix summed (the matrix they mean), as a copy.

    Parameters
    ----------
    X : ndarray or scipy.sparse CSR matrix

    Returns
    -------
    ndarray or scipy.sparse CSR matrix

    Examples
    --------
    >>> import scipy.sparse as sp
    >>> from skvae._validation import summed_duplicates
    >>> X = sp.csr_matrix(([1.0, 2.0], [0, 0], [0, 2]), shape=(1, 2))
    >>> summed_duplicates(X).toarray(), summed_duplicates(X).nnz
    (array([[3., 0.]]), 1)
    """
    if sp.issparse(X) and not X.has_canonical_format:
        X = X.copy()
        X.sum_duplicates()
    return X


def check_float32_range(values):
    """Raise a ValueError when ``values`` exceed float32's range: training and ``score`` compute in float32.

    Parameters
    ----------
    values : ndarray or scipy.sparse matrix

    Examples
    --------
    >>> import numpy as np
    >>> from skvae._validation import check_float32_range
    >>> check_float32_range(np.array([1e38]))  # within range
    """
    values = values.data if sp.issparse(values) else values
    if values.dtype == np.float64 and values.size and np.abs(values).max() > FLOAT32_MAX:
        raise ValueError(
            f"X has values beyond float32's range ({np.abs(values).max():.3g} > {FLOAT32_MAX:.3g}); training "
            "runs in float32. Scale the data (e.g. log-normalise and standardise it)."
        )


class ValueCheck:
    """The checks of an estimator's input values, fed the whole matrix or its blocks one at a time.

    Every block is checked for negative values (count likelihoods), for float32's range
    (with ``float32_range``) and for NaN and infinity (with ``check_finite``). :meth:`finish` then warns
    once for the whole input: of non-integer values for a count likelihood, of what looks
    like raw counts (non-negative whole numbers beyond 0 and 1) for the Gaussian one.

    Parameters
    ----------
    counts : bool
        Whether the likelihood models raw counts.
    whom : str
        Who refuses negative counts, for the message.
    check_finite : bool, default=False
        Refuse NaN and infinity (a matrix in memory had this from scikit-learn's checks).
    float32_range : bool, default=True
        Refuse values beyond float32's range (what is computed in float32).

    Examples
    --------
    >>> import numpy as np
    >>> from skvae._validation import ValueCheck
    >>> check = ValueCheck(counts=True, whom="a count model")
    >>> for block in (np.array([0.0, 2.0]), np.array([5.0])):
    ...     check.update(block)
    >>> check.finish()  # whole non-negative numbers: no warning
    """

    def __init__(self, *, counts, whom, check_finite=False, float32_range=True):
        self.counts, self.whom = counts, whom
        self.check_finite, self.float32_range = check_finite, float32_range
        self._integer, self._min, self._max, self._size = True, np.inf, -np.inf, 0

    def update(self, values):
        """Check one block of values.

        Parameters
        ----------
        values : ndarray or scipy.sparse matrix
        """
        values = values.data if sp.issparse(values) else np.asarray(values)
        if self.check_finite and not np.isfinite(values).all():
            raise ValueError("Input X contains NaN or infinity (in the matrix on disk).")
        if self.float32_range:
            check_float32_range(values)
        if self.counts:
            check_non_negative(values, self.whom)
            # compared as float64: a float16 block's maximum cannot hold 2**31
            if values.size and float(values.max()) > MAX_COUNT:
                raise ValueError(f"X has a count of {values.max():.3g}, but {self.whom}: UMI counts of one gene in "
                                 f"one cell stay far below {MAX_COUNT:.3g}. Pass the raw counts (not scaled values).")
        if values.size:
            self._min, self._max = min(self._min, values.min()), max(self._max, values.max())
            self._size += values.size
            # the integer test costs a pass: the Gaussian warning needs it only for non-negative values beyond 1
            if self._integer and (self.counts or (self._min >= 0 and self._max > 1)):
                self._integer = is_integer_valued(values)

    def finish(self):
        """Warn once for the whole input (call after every block was checked), at the user's call (:func:`warn`)."""
        if self.counts and not self._integer:
            warn(f"X has non-integer values, but {self.whom}. Normalised or log-transformed data (such as "
                 "LogNormalizer's output) is the likely cause: pass the raw UMI counts of QC'd cells, or use "
                 "likelihood='gaussian' for normalised and scaled data.")
        if not self.counts and self._size and self._min >= 0 and self._max > 1 and self._integer:
            warn("X looks like raw counts (non-negative integers), but likelihood='gaussian' reconstructs its "
                 "input with a squared error, which suits log-normalised, scaled expression: normalise it first "
                 "(LogNormalizer, then ClippedStandardScaler), or model the counts with likelihood='nb'.")


def is_on_disk(X):
    """Whether ``X`` is a matrix on disk that skvae reads a block of rows at a time (a backed AnnData's ``X``).

    Parameters
    ----------
    X : object

    Returns
    -------
    bool

    Examples
    --------
    >>> import numpy as np
    >>> from skvae._validation import is_on_disk
    >>> is_on_disk(np.eye(2))
    False
    """
    from .train.data import is_backed_sparse

    return is_backed_sparse(X)


def holds_raw_counts(X):
    """Whether every value of ``X`` is a non-negative whole number, streamed in blocks from a matrix on disk.

    Parameters
    ----------
    X : array-like, sparse matrix or anndata.abc.CSRDataset

    Returns
    -------
    bool

    Examples
    --------
    >>> import numpy as np
    >>> from skvae._validation import holds_raw_counts
    >>> holds_raw_counts(np.array([[0.0, 3.0]])), holds_raw_counts(np.array([[0.5, -1.0]]))
    (True, False)
    """
    from .train.data import RowData

    return not any((values.size and values.min() < 0) or not is_integer_valued(values)
                   for values in RowData.from_input(X).value_blocks())


def refuse_boolean_numbers(estimator, constraints):
    """Raise a TypeError for a boolean given to a numeric parameter (Python counts True as 1).

    Parameters
    ----------
    estimator : scikit-learn estimator
    constraints : dict of str to list
        Its parameters' constraints (scikit-learn's ``_parameter_constraints``).

    Examples
    --------
    >>> from skvae.preprocessing import HighlyVariableGenes
    >>> from skvae._validation import refuse_boolean_numbers
    >>> from numbers import Integral
    >>> from sklearn.utils._param_validation import Interval
    >>> constraints = {"n_top_genes": [Interval(Integral, 1, None, closed="left")]}
    >>> refuse_boolean_numbers(HighlyVariableGenes(n_top_genes=True), constraints)
    Traceback (most recent call last):
    ...
    TypeError: HighlyVariableGenes(n_top_genes=True): a boolean is not a number here; pass a number.
    """
    from sklearn.utils._param_validation import Interval

    for name, allowed in constraints.items():
        value = getattr(estimator, name, None)
        if isinstance(value, (bool, np.bool_)) and any(isinstance(c, Interval) for c in allowed) and \
                "boolean" not in allowed:
            raise TypeError(f"{type(estimator).__name__}({name}={value!r}): a boolean is not a number here; pass a "
                            "number.")


def validated_input(estimator, X, batch, *, covariates, counts, whom, reset, training, required=True,
                    one_for_all=False, float32_range=None, continuous=None):
    """An embedder's input checked in one call: the rows (:func:`validated_rows`) with the covariates of ``batch``.

    Parameters
    ----------
    estimator : skvae.base.BaseEmbedder
        Its features are recorded or checked (scikit-learn's ``validate_data``).
    X : array-like, sparse matrix, anndata.abc.CSRDataset or skvae.train.data.RowData
        A ``RowData`` (codes to decode) is taken as it is, its rows unchecked.
    batch : label, array-like, DataFrame, dict or None
        As the estimator's methods take it.
    covariates : skvae._covariates.Covariates or None
        The fitted model's (ignored with ``reset``).
    counts : bool
        The model reads raw counts.
    whom : str
        Who refuses negative counts, for the message.
    reset : bool
        ``fit``: record the features, and make the covariates of ``batch``.
    training : bool
    required : bool, default=True
        A model fitted with batches needs them.
    one_for_all : bool, default=False
        One label (or one per column) for every row.
    float32_range : bool, default=None
        As in :func:`validated_rows`.
    continuous : sequence of str, default=None
        With ``reset``: the columns of ``batch`` that are continuous covariates.

    Returns
    -------
    data : skvae.train.data.RowData
        The rows, with the model's ``covariates`` (codes, n_rows x n_covariates) when it reads them.
    covariates : skvae._covariates.Covariates or None
        Those of ``batch`` (with ``reset``), or the model's.
    """
    from .train.data import RowData

    data = X if isinstance(X, RowData) else validated_rows(
        estimator, X, reset=reset, training=training, counts=counts, whom=whom, float32_range=float32_range)
    if reset:
        covariates = Covariates.from_batch(batch, data.n_rows, continuous=continuous_names(continuous))
    return with_covariates(data, covariates, batch, reader=type(estimator).__name__, required=required,
                           one_for_all=one_for_all), covariates


def checked_codes(X, n_components, *, reader):
    """Latent codes to decode, checked: a float matrix of ``n_components`` columns, as rows (no expression checks).

    Parameters
    ----------
    X : array-like of shape (n_samples, n_components)
    n_components : int
    reader : str
        The estimator's name, for the message.

    Returns
    -------
    skvae.train.data.RowData

    Examples
    --------
    >>> from skvae._validation import checked_codes
    >>> checked_codes([[0.0, 1.0]], 3, reader="BetaVAEEmbedder")
    Traceback (most recent call last):
    ...
    ValueError: X has 2 columns, but BetaVAEEmbedder decodes codes of 3.
    """
    from sklearn.utils import check_array

    from .train.data import RowData

    X = check_array(X, dtype=[np.float64, np.float32])
    if X.shape[1] != n_components:
        raise ValueError(f"X has {X.shape[1]} columns, but {reader} decodes codes of {n_components}.")
    return RowData.from_input(X)


def continuous_names(continuous_covariates):
    """The estimator's ``continuous_covariates`` as a tuple of column names (empty for None); a TypeError otherwise.

    Parameters
    ----------
    continuous_covariates : str, sequence of str or None

    Returns
    -------
    tuple of str

    Examples
    --------
    >>> from skvae._validation import continuous_names
    >>> continuous_names(["percent_mito", "S_score"]), continuous_names(None)
    (('percent_mito', 'S_score'), ())
    """
    if continuous_covariates is None:
        return ()
    names = (continuous_covariates,) if isinstance(continuous_covariates, str) else tuple(continuous_covariates)
    if not all(isinstance(name, str) for name in names) or len(set(names)) < len(names):
        raise TypeError(f"continuous_covariates must name distinct columns of batch= (strings), got "
                        f"{continuous_covariates!r}.")
    return names


def check_architecture(built, now, params, *, reader, doing):
    """Refuse to continue or save a model whose shaping parameters ``set_params`` changed since it was built.

    Parameters
    ----------
    built, now : dict
        The shaping parameters' values (an estimator's ``_architecture()``) when the model was built (None: not
        recorded, nothing to check) and now; of a weight, whether it is > 0 (whether the model has the part).
    params : dict
        The estimator's parameters now, as set.
    reader : str
        The estimator's name.
    doing : str
        What was asked, e.g. "continue it with partial_fit".

    Examples
    --------
    >>> from skvae._validation import check_architecture
    >>> check_architecture({"n_components": 6}, {"n_components": 8}, {"n_components": 8}, reader="BetaVAEEmbedder",
    ...                    doing="save it")
    Traceback (most recent call last):
    ...
    ValueError: set_params changed n_components=8 (the model has 6) after the model was built, which the fitted \
network cannot follow, so BetaVAEEmbedder cannot save it: set them back, or call fit to build a new model.
    """
    changed = [] if built is None else [name for name, value in now.items() if built.get(name) != value]
    if changed:
        listing = ", ".join(f"{name}={params[name]!r} (the model has {_described(name, built[name])})"
                            for name in changed)
        raise ValueError(f"set_params changed {listing} after the model was built, which the fitted network cannot "
                         f"follow, so {reader} cannot {doing}: set them back, or call fit to build a new model.")


def _described(name, built):
    """A shaping parameter's value as the built model has it (of a weight: whether the model has the part)."""
    if name == "batch_adversary":
        return "an adversary" if built else "no adversary"
    return repr(built)


def validated_rows(estimator, X, *, reset, training, counts, whom, float32_range=None):
    """``X`` checked and decided once, as a :class:`~skvae.train.data.RowData`: the estimator's one call to its data.

    In memory, scikit-learn's ``validate_data`` (which records or checks
    ``n_features_in_`` and ``feature_names_in_``); on disk, the file's own checks
    (:meth:`~skvae.train.data.BackedRows.check_file`). Then the values, with the same
    rules either way (:class:`ValueCheck`). For training (``training=True``) at least 2
    rows, values within float32's range, and rows in memory cast to float32; for a
    fitted model, the features it was fitted on, in float32 or float64.

    Parameters
    ----------
    estimator : sklearn.base.BaseEstimator
    X : array-like, sparse matrix or anndata.abc.CSRDataset
    reset : bool
        Record the features (a new model) rather than check them.
    training : bool
    counts : bool
        The model reads raw counts.
    whom : str
        Who refuses negative counts, for the message.
    float32_range : bool, default=None
        Refuse values beyond float32's range; None: when training or on disk.

    Returns
    -------
    skvae.train.data.RowData
    """
    from .train.data import RowData

    refuse_foreign_input(X)
    dtype = [np.float32, np.float64] if training else [np.float64, np.float32]
    min_rows = 2 if training else 1
    data = RowData.from_input(X, check_in_memory=lambda X: summed_duplicates(validate_data(
        estimator, X, accept_sparse="csr", dtype=dtype, ensure_min_samples=min_rows, reset=reset)))
    if data.on_disk:
        data.check_file(n_features=None if reset else estimator.n_features_in_, min_rows=min_rows,
                        reader=type(estimator).__name__)
        if reset:
            estimator.n_features_in_ = data.n_features
            if hasattr(estimator, "feature_names_in_"):
                del estimator.feature_names_in_
    check = ValueCheck(counts=counts, whom=whom, check_finite=data.on_disk,
                       float32_range=training or data.on_disk if float32_range is None else float32_range)
    for values in data.value_blocks():
        check.update(values)
    check.finish()
    return data.astype(np.float32) if training else data


def check_network_fits_memory(n_features, hidden_layer_sizes, *, likelihood, n_categories=(), encode_batch=False,
                              dispersion_categories=0, n_continuous=0, gene_factors=False):
    """A ValueError, before anything is allocated, for a network whose genes-wide tables exceed this machine's memory.

    Parameters
    ----------
    n_features : int
    hidden_layer_sizes : tuple of int
    likelihood : str
        The estimator's ``likelihood``: its heads are the decoder's output layers.
    n_categories : tuple of int, default=()
        The categories of each covariate.
    encode_batch : bool, default=False
    dispersion_categories : int, default=0
    n_continuous : int, default=0
        Continuous covariates (a few weights per layer each: counted with the categories).
    gene_factors : bool, default=False
        A factor per gene and category (``batch_model="genes"``).

    Examples
    --------
    >>> from skvae._validation import check_network_fits_memory
    >>> check_network_fits_memory(2000, (128,), likelihood="nb")  # a few MB: no error
    """
    n_batches = sum(n_categories)
    n_inputs = n_batches + n_continuous
    # per weight: itself, its gradient and Adam's two moments, in float32
    # the input layer and the output heads
    weights = n_features * hidden_layer_sizes[0] * (1 + len(LIKELIHOODS[likelihood].heads))
    # one-hot covariates into every decoder layer (and the encoder's first), a dispersion per gene and category
    weights += n_inputs * (sum(hidden_layer_sizes) + hidden_layer_sizes[0] * encode_batch)
    weights += (dispersion_categories + n_batches * gene_factors) * n_features
    needed = 4 * 4 * weights
    memory = _physical_memory()
    if memory and needed > memory:
        what = f"X has {n_features} features" + (f" and batch {n_batches} categories" if n_batches else "")
        raise ValueError(f"{what}: the network's layers over them would take {needed / 2**30:.3g} GiB, more than "
                         f"this machine's {memory / 2**30:.3g} GiB. Select genes first (e.g. HighlyVariableGenes), "
                         "check the matrix's shape" + (", and check that batch holds batches (samples, donors), "
                                                       "not one label per cell" if n_batches else "") + ".")


def _physical_memory():
    """This machine's memory in bytes, or None where the system does not say."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else None


def hidden_layer_sizes(sizes):
    """``hidden_layer_sizes`` as a tuple of positive ints; a ValueError for anything else.

    Parameters
    ----------
    sizes : array-like of int

    Returns
    -------
    tuple of int

    Examples
    --------
    >>> import numpy as np
    >>> from skvae._validation import hidden_layer_sizes
    >>> hidden_layer_sizes(np.array([128, 32]))
    (128, 32)
    """
    try:
        items = list(sizes) if np.ndim(sizes) == 1 else None
    except ValueError:  # numpy refuses ragged nesting
        items = None
    if not items or not all(isinstance(s, Integral) and not isinstance(s, (bool, np.bool_)) and s >= 1 for s in items):
        raise ValueError(f"hidden_layer_sizes must be a non-empty 1-D sequence of positive integers, got {sizes!r}.")
    return tuple(int(s) for s in items)


def warn_if_code_wider(n_components, sizes):
    """Warn when the code is wider than the last hidden layer, which then bounds what it carries.

    Parameters
    ----------
    n_components : int
    sizes : tuple of int
        The hidden layer sizes.
    """
    if n_components > sizes[-1]:
        widened = tuple(max(size, n_components) for size in sizes)
        warn(f"n_components={n_components} is larger than the last hidden layer ({sizes[-1]}): the code is "
             f"computed from, and decoded through, {sizes[-1]} units, so it carries at most that many independent "
             f"directions. Widen the network, e.g. hidden_layer_sizes={widened}.")


def warn(message, category=UserWarning):
    """``warnings.warn`` at the first frame outside skvae and scikit-learn: the user's call, however deep the check.

    Parameters
    ----------
    message : str
    category : type, default=UserWarning
    """
    frame, level = sys._getframe(1), 2
    while frame is not None and frame.f_code.co_filename.startswith(_LIBRARY_FOLDERS):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)
