"""The cells' covariates (``batch=``): each an object that holds what it knows, encodes, saves and loads.

An estimator's ``batch=`` is one label per cell (one covariate: sample, donor or
technology) or, for several at once, a DataFrame or dict of named columns (e.g.
``adata.obs[["sample", "technology"]]``, as scVI's ``batch_key`` plus
``categorical_covariate_keys``). Columns that the estimator's ``continuous_covariates``
names are numbers per cell (percent mitochondrial counts, cell-cycle scores, as scVI's
``continuous_covariate_keys``): :class:`ContinuousCovariate`. :class:`Covariates` turns
``batch=`` into what the models read, an int64 array of shape (n_cells, n_categorical) of
category codes and a float array of shape (n_cells, n_continuous) of values, and back
into what a save holds.
"""

from collections.abc import Hashable, Mapping

import numpy as np
import pandas as pd

from .nn.likelihoods import LIKELIHOODS


class CategoricalCovariate:
    """One categorical covariate: its name and its categories, in the order the model codes them.

    Parameters
    ----------
    name : str or None
        The column it came from (None: ``batch=`` was one unnamed label per cell).
    categories : array-like
        Its distinct labels (strings or numbers), each category's code its position.

    Examples
    --------
    >>> from skvae._covariates import CategoricalCovariate
    >>> donor = CategoricalCovariate.from_labels("donor", ["d2", "d1", "d2"])
    >>> donor.categories.tolist(), donor.encode(["d2", "d1"]).tolist()
    (['d1', 'd2'], [1, 0])
    """

    def __init__(self, name, categories):
        self.name = name
        self.categories = np.asarray(categories, dtype=object)

    @classmethod
    def from_labels(cls, name, labels):
        """The covariate of these labels: their distinct values, sorted (in order of appearance where they cannot be).

        Parameters
        ----------
        name : str or None
        labels : array-like of shape (n_cells,)

        Returns
        -------
        CategoricalCovariate
        """
        distinct = pd.unique(np.asarray(labels, dtype=object))
        try:
            distinct = sorted(distinct)
        except TypeError:
            distinct = list(distinct)
        categories = np.empty(len(distinct), dtype=object)
        categories[:] = distinct
        return cls(name, categories)

    def __len__(self):
        return len(self.categories)

    @property
    def what(self):
        """How messages name it: ``batch`` or ``batch['donor']``."""
        return "batch" if self.name is None else f"batch[{self.name!r}]"

    def encode(self, labels):
        """Each label's category code; a ValueError naming labels that are not among the categories.

        Parameters
        ----------
        labels : array-like of shape (n_cells,)

        Returns
        -------
        ndarray of int64 of shape (n_cells,)
        """
        labels = np.asarray(labels, dtype=object)
        codes = pd.Categorical(labels, categories=self.categories).codes
        if (codes < 0).any():
            unseen = pd.unique(labels[codes < 0])
            raise ValueError(f"{self.what} has categories not seen in fit: {listing(unseen)}; the model knows "
                             f"{listing(self.categories)} (map_query adds new batches to a fitted model).")
        return codes.astype(np.int64)

    def to_saved(self):
        """Name and categories as Python strings and numbers, which a weights-only load reads.

        Returns
        -------
        dict
        """
        saved = [value.item() if isinstance(value, np.generic) else value for value in self.categories]
        if not all(isinstance(value, (str, int, float, bool)) for value in saved):
            raise ValueError(f"The batch categories {listing(self.categories)} cannot be saved: save needs strings "
                             "or numbers as batch labels.")
        return {"name": self.name, "categories": saved}

    @classmethod
    def from_saved(cls, saved, path):
        """The covariate of :meth:`to_saved`'s dictionary, checked: a name, distinct strings or numbers.

        Parameters
        ----------
        saved : dict
        path : str or path-like
            The file, for messages.

        Returns
        -------
        CategoricalCovariate
        """
        saved = saved if isinstance(saved, dict) else {}
        name, categories = saved.get("name"), saved.get("categories")
        if not (name is None or isinstance(name, str)):
            raise ValueError(f"{path} is damaged: a batch column's name is not a string.")
        if not isinstance(categories, list) or len(categories) < 1 or not all(
                isinstance(value, (str, int, float, bool)) and value == value for value in categories):
            raise ValueError(f"{path} is damaged: its batch categories are not a list of strings and numbers.")
        loaded = np.empty(len(categories), dtype=object)
        loaded[:] = categories
        if pd.Index(loaded).has_duplicates:
            raise ValueError(f"{path} is damaged: its batch categories repeat a label ({listing(categories)}).")
        return cls(name, loaded)


class ContinuousCovariate:
    """One continuous covariate: a number per cell (percent mitochondrial counts, a cell-cycle score).

    Values are taken as they are: the model standardises each covariate itself
    (:class:`skvae.nn.layers.ContinuousInputs`), from the cells it is trained on.

    Parameters
    ----------
    name : str
        Its column of ``batch=``.

    Examples
    --------
    >>> from skvae._covariates import ContinuousCovariate
    >>> ContinuousCovariate("percent_mito").values([1.5, 3.0], 2).tolist()
    [1.5, 3.0]
    """

    def __init__(self, name):
        self.name = name

    @property
    def what(self):
        """How messages name it: ``batch['percent_mito']``."""
        return f"batch[{self.name!r}]"

    def values(self, values, n_rows, *, fitting=False, one_for_all=False):
        """The column's values as floats; a ValueError for text, a missing or infinite value, or (in fit) a constant.

        Parameters
        ----------
        values : array-like of shape (n_rows,), or a number with ``one_for_all``
        n_rows : int
        fitting : bool, default=False
            Refuse a column whose values are all the same: it tells the model nothing.
        one_for_all : bool, default=False
            One value for every row.

        Returns
        -------
        ndarray of float64 of shape (n_rows,)
        """
        if isinstance(values, pd.Series):
            values = values.to_numpy()
        if one_for_all and np.ndim(values) == 0:
            values = np.full(n_rows, values, dtype=object)
        values = np.asarray(values, dtype=object)
        if values.ndim != 1 or len(values) != n_rows:
            raise ValueError(f"{self.what} must hold one number per cell ({n_rows}), got shape {values.shape}.")
        try:
            numbers = values.astype(np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"{self.what} is a continuous covariate (continuous_covariates), but it holds values "
                             f"that are not numbers, e.g. {values[0]!r}: give numbers, or leave it out of "
                             "continuous_covariates to treat it as categories.") from None
        if not np.isfinite(numbers).all():
            bad = np.flatnonzero(~np.isfinite(numbers))
            raise ValueError(f"{self.what} has {len(bad)} missing or infinite values (NaN or inf), e.g. at cell "
                             f"{int(bad[0])}: give every cell a finite number.")
        if fitting and n_rows > 1 and np.ptp(numbers) == 0:
            raise ValueError(f"{self.what} has the same value ({numbers[0]:g}) for every cell: a constant covariate "
                             "tells the model nothing. Leave it out of batch= and continuous_covariates.")
        return numbers

    def to_saved(self):
        """Its name and kind, as a save holds them.

        Returns
        -------
        dict
        """
        return {"name": self.name, "kind": "continuous"}


class Covariates:
    """The covariates a model was fitted with: one unnamed (``batch=`` labels) or several named columns.

    Parameters
    ----------
    columns : list of CategoricalCovariate
        One per categorical covariate, in the order of their code columns; every
        name None (one column) or a distinct string.
    continuous : list of ContinuousCovariate, default=()
        The continuous covariates, in the order of their value columns.

    Examples
    --------
    >>> import pandas as pd
    >>> from skvae._covariates import Covariates
    >>> obs = pd.DataFrame({"sample": ["s1", "s2", "s3"], "technology": ["10x", "10x", "smart"]})
    >>> covariates = Covariates.from_batch(obs, 3)
    >>> covariates.n_categories, covariates.encode(obs.iloc[::-1], 3).tolist()
    ((3, 2), [[2, 1], [1, 0], [0, 0]])
    >>> obs["percent_mito"] = [1.0, 4.5, 2.0]
    >>> with_mito = Covariates.from_batch(obs, 3, continuous=["percent_mito"])
    >>> with_mito.n_categories, with_mito.encode_continuous(obs, 3).tolist()
    ((3, 2), [[1.0], [4.5], [2.0]])
    """

    def __init__(self, columns, continuous=()):
        self.columns = list(columns)
        self.continuous = list(continuous)

    @classmethod
    def from_batch(cls, batch, n_rows, *, continuous=None):
        """The covariates of ``fit``'s ``batch=`` (None for None).

        Parameters
        ----------
        batch : array-like of shape (n_rows,), DataFrame, dict of str to array-like, or None
        n_rows : int
        continuous : sequence of str, default=None
            The columns of ``batch`` that are continuous (the estimator's
            ``continuous_covariates``); the others are categorical.

        Returns
        -------
        Covariates or None
        """
        names = [] if continuous is None else [str(name) for name in continuous]
        if batch is None:
            if names:
                raise ValueError(f"continuous_covariates={names} names columns of batch=, but batch is None: pass "
                                 f"them in batch=, e.g. adata.obs[{names!r}].")
            return None
        if not names:
            return cls([CategoricalCovariate.from_labels(name, labels) for name, labels in _columns(batch, n_rows)])
        if not _named(batch):
            raise ValueError(f"continuous_covariates={names} names columns of batch=, so batch= must be a DataFrame or "
                             "dict of named columns (e.g. adata.obs[['sample', 'percent_mito']]), not one label per "
                             "cell.")
        given = _holding(batch, names)
        categorical = {key: batch[key] for name, key in given.items() if name not in names}
        columns = [CategoricalCovariate.from_labels(name, labels) for name, labels in _columns(categorical, n_rows)] \
            if categorical else []
        continuous = [ContinuousCovariate(name) for name in names]
        for column in continuous:  # checked once, at fit, with the constant column refused
            column.values(batch[given[column.name]], n_rows, fitting=True)
        return cls(columns, continuous)

    @property
    def n_categories(self):
        """The number of categories of each covariate.

        Returns
        -------
        tuple of int
        """
        return tuple(len(column) for column in self.columns)

    @property
    def n_continuous(self):
        """The number of continuous covariates.

        Returns
        -------
        int
        """
        return len(self.continuous)

    @property
    def names(self):
        """Each categorical covariate's column name (None for ``batch=`` given as labels).

        Returns
        -------
        list of str or None
        """
        return [column.name for column in self.columns]

    @property
    def categories(self):
        """The categories: one array for one covariate (``batch_categories_``), else a dict by column name.

        Returns
        -------
        ndarray of object, or dict of str to ndarray of object
        """
        if len(self.columns) == 1:
            return self.columns[0].categories
        return {column.name: column.categories for column in self.columns}

    def describe(self):
        """The categories in words, for messages: ``2: 'a', 'b'`` or ``sample (3: ...), technology (2: ...)``.

        Returns
        -------
        str
        """
        parts = [f"{len(column)}: {listing(column.categories)}" for column in self.columns]
        numbers = [f"{column.name} (continuous)" for column in self.continuous]
        if len(parts) == 1 and not numbers:
            return parts[0]
        return ", ".join([*(f"{name} ({part})" for name, part in zip(self.names, parts, strict=True)), *numbers])

    def encode(self, batch, n_rows, *, one_for_all=False):
        """Each row's code of each covariate.

        Parameters
        ----------
        batch : label, array-like of shape (n_rows,), DataFrame or dict
            As in ``fit``: labels for one covariate, named columns for several (a
            DataFrame or dict holding at least the fitted columns). With
            ``one_for_all`` one label (one covariate) or a dict of one label per
            column, for every row.
        n_rows : int
        one_for_all : bool, default=False

        Returns
        -------
        ndarray of int64 of shape (n_rows, n_covariates), or None without categorical covariates
        """
        if not self.columns:
            return None
        if len(self.columns) == 1 and not _named(batch):
            return self.columns[0].encode(batch_labels(batch, n_rows, one_for_all=one_for_all))[:, None]
        if self.names == [None]:  # fitted on unnamed labels: a single column of any name is them
            keys = list(batch.keys())
            if len(keys) != 1:
                raise ValueError(f"This model was fitted with one batch column of labels, but batch has {len(keys)} "
                                 "columns: pass one label per cell (or one column).")
            return self.columns[0].encode(_column_labels(batch[keys[0]], n_rows, one_for_all, keys[0]))[:, None]
        given = dict(_columns(batch, n_rows, one_for_all=one_for_all, expected=self.names))
        return np.stack([column.encode(given[column.name]) for column in self.columns], axis=1)

    def encode_continuous(self, batch, n_rows, *, one_for_all=False):
        """Each row's value of each continuous covariate (None without any).

        Parameters
        ----------
        batch : DataFrame or dict
            Holding the continuous columns (with ``one_for_all``: one number each).
        n_rows : int
        one_for_all : bool, default=False

        Returns
        -------
        ndarray of float64 of shape (n_rows, n_continuous) or None
        """
        if not self.continuous:
            return None
        if not _named(batch):
            raise ValueError(f"This model was fitted with continuous covariates ({self.describe()}): pass batch= as a "
                             "DataFrame or dict holding those columns.")
        given = _holding(batch, [column.name for column in self.continuous], fitted=True)
        return np.stack([column.values(batch[given[column.name]], n_rows, one_for_all=one_for_all)
                         for column in self.continuous], axis=1)

    def group_labels(self, batch, n_rows):
        """One label per row of the categorical covariates (:func:`combined_labels`): the groups cells come in.

        Parameters
        ----------
        batch : array-like of shape (n_rows,), DataFrame or dict
        n_rows : int

        Returns
        -------
        ndarray of object of shape (n_rows,), or None without categorical covariates
        """
        if not self.continuous:
            return combined_labels(batch, n_rows)
        if not self.columns:
            return None
        return combined_labels(dict(_columns(batch, n_rows, expected=self.names)), n_rows)

    def extended(self, batch, n_rows):
        """These covariates with the categories of ``batch`` that they lack appended, each column's sorted.

        Existing categories keep their codes, so a model's weights for them stay where they are.

        Parameters
        ----------
        batch : array-like of shape (n_rows,), DataFrame or dict
            As in ``fit``.
        n_rows : int

        Returns
        -------
        extended : Covariates
        added : list of ndarray
            Each column's new categories.
        """
        if len(self.columns) == 1 and not _named(batch):
            given = [batch_labels(batch, n_rows)]
        elif self.names == [None]:
            given = [labels for _, labels in _columns(batch, n_rows)]
            if len(given) != 1:
                raise ValueError(f"This model was fitted with one batch column of labels, but batch has {len(given)} "
                                 "columns: pass one label per cell (or one column).")
        else:
            given = [labels for _, labels in _columns(batch, n_rows, expected=self.names)]
        columns, added = [], []
        for column, labels in zip(self.columns, given, strict=True):
            new = CategoricalCovariate.from_labels(column.name, labels).categories
            new = new[~np.isin(new, column.categories)]
            columns.append(CategoricalCovariate(column.name, np.concatenate([column.categories, new])))
            added.append(new)
        return Covariates(columns, self.continuous), added

    def listed(self):
        """The categories as lists (one covariate) or a dict of lists by column: what ranks compare.

        Returns
        -------
        list or dict of str to list
        """
        if self.continuous:
            return {**{column.name: column.categories.tolist() for column in self.columns},
                    "continuous": [column.name for column in self.continuous]}
        if len(self.columns) == 1:
            return self.columns[0].categories.tolist()
        return {column.name: column.categories.tolist() for column in self.columns}

    def to_saved(self):
        """Every covariate as its :meth:`~CategoricalCovariate.to_saved` gives it, categorical ones first.

        Returns
        -------
        list of dict
        """
        return [column.to_saved() for column in (*self.columns, *self.continuous)]

    @classmethod
    def from_saved(cls, saved, path):
        """The covariates of :meth:`to_saved`'s list, checked (None stays None).

        Parameters
        ----------
        saved : list of dict or None
        path : str or path-like

        Returns
        -------
        Covariates or None
        """
        if saved is None:
            return None
        if not isinstance(saved, list) or not saved:
            raise ValueError(f"{path} is damaged: its batch columns are not a list.")
        continuous = [column for column in saved if isinstance(column, dict) and column.get("kind") == "continuous"]
        if not all(isinstance(column.get("name"), str) for column in continuous):
            raise ValueError(f"{path} is damaged: a continuous covariate's name is not a string.")
        covariates = cls([CategoricalCovariate.from_saved(column, path) for column in saved if column not in continuous],
                         [ContinuousCovariate(column["name"]) for column in continuous])
        names = [*covariates.names, *(column.name for column in covariates.continuous)]
        if len(names) > 1 and (None in names or len(set(names)) < len(names)):
            raise ValueError(f"{path} is damaged: its batch columns' names are missing or repeated ({names}).")
        return covariates


def network_sizes(covariates, dispersion, batch_model="layers", likelihood="nb"):
    """What the covariates make of a network: each categorical covariate's categories, the continuous ones, the
    categories a dispersion per gene and batch has, and whether they act as factors per gene.

    Parameters
    ----------
    covariates : Covariates or None
    dispersion : {"gene", "gene-batch"}
        The estimator's ``dispersion``: "gene-batch" follows the first categorical covariate.
    batch_model : {"layers", "genes"}, default="layers"
        The estimator's ``batch_model``: "genes" makes a factor per gene and category (with categorical covariates).
    likelihood : str, default="nb"
        The estimator's ``likelihood``: factors per gene multiply counts, so "genes" needs a count likelihood.

    Returns
    -------
    dict
        ``n_categories`` (tuple of int), ``n_continuous`` (int), ``dispersion_categories`` (int) and
        ``gene_factors`` (bool).

    Examples
    --------
    >>> from skvae._covariates import Covariates, network_sizes
    >>> network_sizes(Covariates.from_batch(["a", "b", "a"], 3), "gene-batch")
    {'n_categories': (2,), 'n_continuous': 0, 'dispersion_categories': 2, 'gene_factors': False}
    """
    n_categories = () if covariates is None else covariates.n_categories
    if batch_model == "genes" and n_categories and not LIKELIHOODS[likelihood].counts:
        raise ValueError(f"batch_model='genes' multiplies each gene's counts by a factor per batch, and "
                         f"likelihood={likelihood!r} models scaled data, not counts: use a count likelihood (e.g. "
                         "likelihood='nb' on raw counts, as make_count_embedder does) or batch_model='layers'.")
    return {"n_categories": n_categories, "n_continuous": 0 if covariates is None else covariates.n_continuous,
            "dispersion_categories": n_categories[0] if n_categories and dispersion == "gene-batch" else 0,
            "gene_factors": bool(n_categories) and batch_model == "genes"}


def with_covariates(data, covariates, batch, *, reader, required, one_for_all=False):
    """``data`` with each row's category codes of ``batch`` as the model's covariates (n_rows x n_covariates).

    Parameters
    ----------
    data : skvae.train.data.RowData
    covariates : Covariates or None
        What the model was fitted with (None: no batches).
    batch : label, array-like, DataFrame, dict or None
        As the estimator's methods take it.
    reader : str
        The estimator's name, for messages.
    required : bool
        A model fitted with batches needs them.
    one_for_all : bool, default=False
        A single label (or one per column) for every row.

    Returns
    -------
    skvae.train.data.RowData
        With the codes of the categorical covariates and the values of the continuous ones.
    """
    if covariates is None:
        if batch is not None:
            raise ValueError(f"batch was passed, but this {reader} was fitted without batches: fit it with "
                             "batch=... to condition it on them, or leave batch out.")
        return data
    if batch is None:
        if required:
            raise ValueError(f"This {reader} was fitted with batches ({covariates.describe()}): pass each cell's "
                             "batch= as well.")
        return data
    return data.with_covariates(covariates.encode(batch, data.n_rows, one_for_all=one_for_all),
                                covariates.encode_continuous(batch, data.n_rows, one_for_all=one_for_all))


def combined_labels(batch, n_rows):
    """One label per row: ``batch``'s labels, or the combination of its columns' values (``"s1 | 10x"``).

    Parameters
    ----------
    batch : array-like of shape (n_rows,), DataFrame or dict
    n_rows : int

    Returns
    -------
    ndarray of object of shape (n_rows,)

    Examples
    --------
    >>> from skvae._covariates import combined_labels
    >>> combined_labels({"sample": ["s1", "s2"], "technology": ["10x", "10x"]}, 2).tolist()
    ['s1 | 10x', 's2 | 10x']
    """
    columns = _columns(batch, n_rows)
    if len(columns) == 1:
        return columns[0][1]
    labels = np.empty(n_rows, dtype=object)
    labels[:] = [" | ".join(map(str, values)) for values in zip(*(column for _, column in columns), strict=True)]
    return labels


def _holding(batch, names, *, fitted=False):
    """``batch``'s column keys by their names as strings, checked to hold the continuous covariates ``names``."""
    given = {str(key): key for key in batch.keys()}
    missing = [name for name in names if name not in given]
    if missing:
        raise ValueError(f"batch lacks the continuous covariate(s) {missing}{' the model was fitted with' * fitted}; "
                         f"it has {list(given)}.")
    return given


def _named(batch):
    return isinstance(batch, (pd.DataFrame, Mapping))


def _columns(batch, n_rows, *, one_for_all=False, expected=None):
    """``[(name, labels), ...]`` of ``batch``: one unnamed column of labels, or the named columns of a DataFrame or dict.

    ``expected``: the fitted columns' names, which ``batch`` must hold (others are ignored).
    """
    if not _named(batch):
        if expected is not None and len(expected) > 1:
            raise ValueError(f"This model was fitted with {len(expected)} batch columns ({', '.join(expected)}): pass "
                             "batch= as a DataFrame or dict holding them, e.g. adata.obs[" + repr(list(expected)) + "]"
                             + (" (or a dict of one label per column)" if one_for_all else "") + ".")
        return [(None, batch_labels(batch, n_rows, one_for_all=one_for_all))]
    names = [str(name) if not isinstance(name, str) else name for name in batch.keys()]
    if len(set(names)) < len(names):
        raise ValueError(f"batch has repeated column names ({names}): name each covariate once.")
    if not names:
        raise ValueError("batch is an empty DataFrame or dict: pass at least one column of labels, or batch=None.")
    columns = dict(zip(names, batch.keys(), strict=True))
    if expected is not None:
        missing = [name for name in expected if name not in columns]
        if missing:
            raise ValueError(f"batch lacks the column(s) {missing} the model was fitted with; it has {names}.")
        names = list(expected)
    return [(name, _column_labels(batch[columns[name]], n_rows, one_for_all, name)) for name in names]


def _column_labels(values, n_rows, one_for_all, name):
    if isinstance(values, pd.Series):
        values = values.to_numpy()
    try:
        return batch_labels(values, n_rows, one_for_all=one_for_all)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"column {name!r}: {exc}") from None


def listing(values, most=5):
    """The first ``most`` values' reprs, and how many more.

    Parameters
    ----------
    values : iterable
    most : int, default=5

    Returns
    -------
    str

    Examples
    --------
    >>> from skvae._covariates import listing
    >>> listing(range(7), most=2)
    '0, 1 and 5 more'
    """
    values = list(values)
    return ", ".join(map(repr, values[:most])) + (f" and {len(values) - most} more" if len(values) > most else "")


def batch_labels(batch, n_rows, *, one_for_all=False):
    """``batch`` as a 1-D object array of one label per row; a ValueError for any other shape or a missing label.

    Parameters
    ----------
    batch : label or array-like of shape (n_rows,)
    n_rows : int
    one_for_all : bool, default=False
        Take a single label for every row.

    Returns
    -------
    ndarray of object of shape (n_rows,)

    Examples
    --------
    >>> from skvae._covariates import batch_labels
    >>> batch_labels(["a", "b", "a"], 3).tolist(), batch_labels("a", 2, one_for_all=True).tolist()
    (['a', 'b', 'a'], ['a', 'a'])
    """
    if isinstance(batch, np.ndarray) and batch.ndim == 0:
        batch = batch.item()  # a 0-d array is its one label
    if one_for_all and (np.ndim(batch) == 0 or isinstance(batch, tuple)):
        _refuse_foreign_labels([batch])
        labels = np.empty(n_rows, dtype=object)
        labels[:] = [batch] * n_rows if isinstance(batch, tuple) else batch
    else:
        labels = np.asarray(batch, dtype=object)
    if labels.ndim != 1:
        raise ValueError(f"batch must be one label per cell (1-D), got an array of shape {labels.shape}.")
    if len(labels) != n_rows:
        raise ValueError(f"batch has {len(labels)} labels for {n_rows} cells of X: pass {n_rows} labels, one per cell.")
    missing = pd.isna(labels)
    if missing.any():
        raise ValueError(f"batch has {int(missing.sum())} missing labels (None or NaN), e.g. at cell "
                         f"{int(np.flatnonzero(missing)[0])}: give every cell a batch.")
    _refuse_foreign_labels(labels)
    return labels


def _refuse_foreign_labels(labels):
    """A TypeError for a batch label that is a container (tuple, list, array, dict) or cannot be hashed."""
    if pd.api.types.infer_dtype(labels, skipna=True) in ("string", "integer", "floating", "boolean", "bytes",
                                                         "mixed-integer-float", "decimal", "date", "datetime"):
        return
    foreign = next((label for label in labels if isinstance(label, (tuple, list, set, frozenset, dict, np.ndarray))
                    or not isinstance(label, Hashable)), None)
    if foreign is not None:
        raise TypeError(f"batch labels must be single values (strings, numbers), got a {type(foreign).__name__}: "
                        f"{foreign!r}. Give several covariates as named columns instead (a DataFrame or dict, e.g. "
                        "adata.obs[['donor', 'technology']]).")
