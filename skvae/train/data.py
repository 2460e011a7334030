"""The rows an estimator is given, decided once: a matrix in memory or a CSR matrix on disk, with per-row covariates.

:meth:`RowData.from_input` looks at what the user passed once and returns an
:class:`InMemoryRows` (numpy array or scipy sparse matrix) or a :class:`BackedRows`
(anndata's ``CSRDataset``: a backed ``X`` or ``sparse_dataset`` of a layer). From then on
every step asks the object, never the input's type: its size, its values for validation
(whole or streamed), a training / validation split, a rank's shard, minibatch sources for
each algorithm, and a sample of rows. What each row comes with travels with every split, shard
and minibatch, each in a slot of its own: its ``covariates`` (each cell's categories, such
as its batch, as integer codes), its ``continuous`` covariates (numbers, such as percent
mitochondrial counts) and its ``labels`` (a classifier's cell types).

A new kind of data source is a subclass of :class:`RowData` (what it holds and how it is taken,
split and read) and, where its rows are read in a way of their own, a row source of
:mod:`skvae.train.rows`.
"""

import contextlib
import copy
import os
import sys
from abc import ABC, abstractmethod

import numpy as np
import scipy.sparse as sp
import torch
from sklearn.model_selection import train_test_split
from sklearn.utils import gen_batches

from .rows import BackedSparseRowSource, StoredCSR, make_row_source

# Stored values per block when a matrix on disk is checked: a bounded read, whatever the file's size.
_VALUE_BLOCK = 2**22


def is_backed_sparse(X):
    """Whether ``X`` is a sparse matrix on disk from anndata (backed ``X`` or ``sparse_dataset``).

    Parameters
    ----------
    X : object

    Returns
    -------
    bool

    Examples
    --------
    >>> import scipy.sparse as sp
    >>> from skvae.train.data import is_backed_sparse
    >>> is_backed_sparse(sp.eye(3, format="csr"))
    False
    """
    if isinstance(X, BackedColumns):
        return True
    anndata_abc = sys.modules.get("anndata.abc")  # anndata stays optional: loaded only if the caller did
    return anndata_abc is not None and isinstance(X, (anndata_abc.CSRDataset, anndata_abc.CSCDataset))


class BackedColumns:
    """Some columns of a CSR matrix on disk, read with the rows that use them: a gene selection of a backed file.

    What :meth:`skvae.preprocessing.HighlyVariableGenes.transform` returns for a
    matrix on disk, so that the next step of a Pipeline (an embedder) trains on the
    selected genes a minibatch at a time without the file being rewritten. It is a
    matrix on disk to every skvae estimator (:func:`is_backed_sparse`).

    Parameters
    ----------
    dataset : anndata.abc.CSRDataset or BackedColumns
    columns : array-like of int
        The columns of ``dataset`` kept, in order.

    Attributes
    ----------
    dataset : anndata.abc.CSRDataset
        The whole matrix on disk.
    columns : ndarray of int
        Its columns kept.
    shape : tuple of int
    dtype : numpy dtype
    format : str

    Examples
    --------
    >>> import tempfile
    >>> import anndata
    >>> import numpy as np
    >>> import scipy.sparse as sp
    >>> from skvae.train.data import BackedColumns, RowData
    >>> path = tempfile.mkdtemp() + "/cells.h5ad"
    >>> anndata.AnnData(sp.csr_matrix(np.arange(12.0).reshape(4, 3))).write_h5ad(path)
    >>> selected = BackedColumns(anndata.read_h5ad(path, backed="r").X, [2, 0])
    >>> selected.shape, RowData.from_input(selected).take(np.array([1])).in_memory().X.toarray().tolist()
    ((4, 2), [[5.0, 3.0]])
    """

    def __init__(self, dataset, columns):
        columns = np.asarray(columns, dtype=np.int64)
        if isinstance(dataset, BackedColumns):  # a selection of a selection: of the matrix itself
            dataset, columns = dataset.dataset, dataset.columns[columns]
        if columns.ndim != 1 or (columns.size and (columns.min() < 0 or columns.max() >= dataset.shape[1])):
            raise ValueError(f"columns must be positions among the matrix's {dataset.shape[1]} columns.")
        self.dataset, self.columns = dataset, columns
        self.shape, self.dtype, self.format = (dataset.shape[0], len(columns)), dataset.dtype, dataset.format


def iter_minibatches(source, batch_size):
    """Yield the minibatches of ``source`` in order, ``batch_size`` rows each.

    Parameters
    ----------
    source : skvae.train.rows.RowSource
    batch_size : int

    Yields
    ------
    Minibatch

    Examples
    --------
    >>> import numpy as np
    >>> from skvae.train.data import RowData, iter_minibatches
    >>> source = RowData.from_input(np.zeros((10, 3))).source(algorithm="dense", center=False)
    >>> [len(minibatch) for minibatch in iter_minibatches(source, 4)]
    [4, 4, 2]
    """
    yield from source.minibatches(list(gen_batches(source.n_rows, batch_size)))


@torch.no_grad()
def map_minibatches(module, method, data, batch_size):
    """``module.<method>`` of every row of ``data``, in the rows' float precision, a minibatch at a time (inference).

    Sparse rows go through the encoder's sparse first layer, dense rows through dense
    products, so that each row's result does not depend on the others; float64 rows
    go through a float64 copy of the module.

    Parameters
    ----------
    module : skvae.nn.models model
    method : str
        ``"embed"``, ``"decode"`` or ``"spike_probability"``.
    data : RowData
        With the covariates the method reads (its labels are not read).
    batch_size : int

    Returns
    -------
    ndarray of shape (n_rows, ...)

    Examples
    --------
    >>> import numpy as np
    >>> from skvae.nn.models import Autoencoder
    >>> from skvae.train.data import RowData, map_minibatches
    >>> map_minibatches(Autoencoder(5, 2, (4,)), "embed", RowData.from_input(np.ones((3, 5))), 2).shape
    (3, 2)
    """
    dtype = np.float32 if data.dtype == np.float32 else np.float64
    module = module if dtype == np.float32 else copy.deepcopy(module).double()
    module.eval()
    source = data.source(algorithm="sparse" if data.stored_sparse else "dense", center=False, dtype=dtype)
    return np.concatenate([getattr(module, method)(minibatch.x, **minibatch.given).numpy()
                           for minibatch in iter_minibatches(source, batch_size)])


class RowData(ABC):
    """Rows of expression (cells x genes), each with its covariates and its label.

    Use :meth:`from_input` to make one from what the user passed; a subclass is one
    kind of data source.

    Parameters
    ----------
    n_rows, n_features : int
    dtype : numpy dtype
        The stored values' type.
    covariates : array-like of shape (n_rows, n_covariates), default=None
        Each row's category codes (checked: one row each).
    labels : array-like of shape (n_rows,), default=None
        Each row's class index, -1 for none.
    continuous : array-like of shape (n_rows, n_continuous), default=None
        Each row's continuous covariates.

    Attributes
    ----------
    n_rows, n_features : int
    dtype : numpy dtype
    covariates : ndarray of shape (n_rows, n_covariates) or None
    labels : ndarray of shape (n_rows,) or None
    continuous : ndarray of shape (n_rows, n_continuous) or None
    on_disk : bool
        Whether the rows are read from a file as they are used.
    stored_sparse : bool
        Whether the rows are stored sparse (scipy sparse, or a sparse file).

    Examples
    --------
    >>> import numpy as np
    >>> from skvae.train.data import RowData
    >>> data = RowData.from_input(np.arange(12.0).reshape(6, 2), covariates=[[0], [0], [0], [1], [1], [1]])
    >>> train, validation = data.split(0.5, np.random.RandomState(0))
    >>> train.n_rows, validation.n_rows, sorted(train.covariates[:, 0].tolist() + validation.covariates[:, 0].tolist())
    (3, 3, [0, 0, 0, 1, 1, 1])
    """

    on_disk = False
    stored_sparse = True

    def __init__(self, n_rows, n_features, dtype, covariates=None, labels=None, continuous=None):
        self.n_rows, self.n_features, self.dtype = n_rows, n_features, np.dtype(dtype)
        self.covariates, self.labels = self._checked("covariates", covariates), self._checked("labels", labels)
        self.continuous = self._checked("continuous", continuous)

    def _checked(self, name, values):
        if values is None:
            return None
        values = np.asarray(values)
        if len(values) != self.n_rows:
            raise ValueError(f"{name} has {len(values)} values for {self.n_rows} rows of X: one per cell.")
        return values

    def _per_row(self, rows=slice(None)):
        """The covariates, labels and continuous covariates of ``rows``, as keyword arguments of a subclass's constructor."""
        return {name: None if values is None else values[rows]
                for name, values in (("covariates", self.covariates), ("labels", self.labels),
                                     ("continuous", self.continuous))}

    def with_covariates(self, covariates, continuous=None):
        """The same rows with these covariates.

        Parameters
        ----------
        covariates : array-like of shape (n_rows, n_covariates) or None
            Category codes.
        continuous : array-like of shape (n_rows, n_continuous), default=None
            Values of continuous covariates.

        Returns
        -------
        RowData
        """
        data = copy.copy(self)
        data.covariates = self._checked("covariates", covariates)
        data.continuous = self._checked("continuous", continuous)
        return data

    def with_labels(self, labels):
        """The same rows with these labels.

        Parameters
        ----------
        labels : array-like of shape (n_rows,) or None

        Returns
        -------
        RowData
        """
        data = copy.copy(self)
        data.labels = self._checked("labels", labels)
        return data

    @property
    def shape(self):
        return self.n_rows, self.n_features

    @staticmethod
    def from_input(X, *, covariates=None, labels=None, check_in_memory=None):
        """The rows of ``X``: :class:`BackedRows` for a sparse matrix on disk, else :class:`InMemoryRows`.

        Parameters
        ----------
        X : array-like, scipy.sparse matrix or anndata.abc.CSRDataset
        covariates : array-like of shape (n_rows, n_covariates), default=None
        labels : array-like of shape (n_rows,), default=None
        check_in_memory : callable, default=None
            Applied to ``X`` when it is not on disk, returning the array or sparse
            matrix to hold (e.g. scikit-learn's ``validate_data``); None holds ``X`` as it is.

        Returns
        -------
        RowData

        Examples
        --------
        >>> import numpy as np
        >>> from skvae.train.data import RowData
        >>> data = RowData.from_input(np.zeros((5, 3)), covariates=[[0], [0], [1], [1], [1]])
        >>> type(data).__name__, data.shape, data.take(np.array([4, 0])).covariates.tolist()
        ('InMemoryRows', (5, 3), [[1], [0]])
        """
        if isinstance(X, BackedColumns):
            return BackedRows(X.dataset, covariates=covariates, labels=labels, columns=X.columns)
        if is_backed_sparse(X):
            return BackedRows(X, covariates=covariates, labels=labels)
        return InMemoryRows(X if check_in_memory is None else check_in_memory(X), covariates=covariates, labels=labels)

    @abstractmethod
    def take(self, rows):
        """These rows (an array of indices or a slice), with their covariates.

        Parameters
        ----------
        rows : ndarray of int or slice

        Returns
        -------
        RowData
        """

    def split(self, validation_fraction, random_state):
        """A random training / validation split of the rows, as scikit-learn's ``train_test_split`` makes it.

        Parameters
        ----------
        validation_fraction : float
        random_state : numpy.random.RandomState

        Returns
        -------
        train, validation : RowData
        """
        train, validation = train_test_split(np.arange(self.n_rows), test_size=validation_fraction,
                                             random_state=random_state)
        return self.take(train), self.take(validation)

    def shard(self, parallel):
        """The rows this rank of a data-parallel run trains on.

        Rows in memory are the rank's own already (each process passes its part); a file
        on disk is shared, and each rank takes its contiguous block of it.

        Parameters
        ----------
        parallel : skvae.train.distributed.RankGroup or None

        Returns
        -------
        RowData
        """
        return self

    def sample(self, max_rows):
        """Up to ``max_rows`` evenly spaced rows, in memory (all of them when there are fewer).

        Parameters
        ----------
        max_rows : int

        Returns
        -------
        InMemoryRows
        """
        if self.n_rows <= max_rows and not self.on_disk:
            return self
        return self.take(np.unique(np.linspace(0, self.n_rows - 1, min(self.n_rows, max_rows)).astype(int))).in_memory()

    @abstractmethod
    def source(self, *, algorithm, center, dtype=np.float32, device="cpu", with_transpose=False):
        """Minibatches of these rows, with their covariates and labels.

        Parameters
        ----------
        algorithm : {"auto", "dense", "sparse"}
            The representation (see :func:`skvae.train.rows.make_row_source`); rows on
            disk are always sparse.
        center : bool
            Whether dense rows are shifted by their column medians in the sparse representation.
        dtype : numpy dtype, default=np.float32
        device : str or torch.device, default="cpu"
        with_transpose : bool, default=False
            Keep each sparse minibatch's transpose, for gradients (training).

        Returns
        -------
        skvae.train.rows.RowSource
            Serving :class:`~skvae.train.rows.Minibatch` es that carry the rows'
            covariates, labels and continuous covariates.
        """

    @abstractmethod
    def astype(self, dtype):
        """These rows with values of ``dtype`` (rows on disk are cast as they are read).

        Parameters
        ----------
        dtype : numpy dtype

        Returns
        -------
        RowData
        """

    @abstractmethod
    def row_blocks(self, max_values=None):
        """Yield consecutive blocks of the rows in memory, each bounded in stored values, for statistics over all.

        Parameters
        ----------
        max_values : int, default=None
            The most values (stored ones, if sparse) a block holds; a single row
            holding more is a block of its own. None: 2**22 (about 50 MB).

        Yields
        ------
        rows : slice
            The block's rows.
        X : ndarray or scipy.sparse.csr_matrix
            Their values.
        """

    @abstractmethod
    def value_blocks(self):
        """Yield the stored values, a bounded block at a time, for validation.

        Yields
        ------
        ndarray
        """


class InMemoryRows(RowData):
    """Rows of a numpy array or a scipy sparse matrix in memory.

    Parameters
    ----------
    X : ndarray or scipy.sparse CSR matrix of shape (n_rows, n_features)
    covariates : array-like of shape (n_rows, n_covariates), default=None
    labels : array-like of shape (n_rows,), default=None
    continuous : array-like of shape (n_rows, n_continuous), default=None

    Examples
    --------
    >>> import numpy as np
    >>> from skvae.train.data import InMemoryRows
    >>> InMemoryRows(np.eye(4)).take(slice(1, 3)).X.tolist()
    [[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]]
    """

    def __init__(self, X, covariates=None, labels=None, continuous=None):
        super().__init__(X.shape[0], X.shape[1], X.dtype, covariates, labels, continuous)
        self.X = X
        self.stored_sparse = sp.issparse(X)

    def astype(self, dtype):
        return InMemoryRows(self.X.astype(dtype, copy=False), **self._per_row())

    def take(self, rows):
        return InMemoryRows(self.X[rows], **self._per_row(rows))

    def in_memory(self):
        """These rows (they are in memory already).

        Returns
        -------
        InMemoryRows
        """
        return self

    def source(self, *, algorithm, center, dtype=np.float32, device="cpu", with_transpose=False):
        return make_row_source(self.X, algorithm=algorithm, center=center, dtype=dtype, device=device,
                               with_transpose=with_transpose).carrying(self.covariates, self.labels, self.continuous)

    def row_blocks(self, max_values=None):
        """Yield consecutive blocks of the rows, each of at most ``max_values`` values (stored ones, if sparse).

        A single row holding more is a block of its own; a matrix that fits is one block, itself.

        Parameters
        ----------
        max_values : int, default=None
            None: 2**22.

        Yields
        ------
        rows : slice
        X : ndarray or scipy.sparse matrix
        """
        stored = (np.diff(sp.csr_matrix(self.X).indptr) if sp.issparse(self.X) else
                  np.full(self.n_rows, self.n_features))
        for rows in _row_ranges(stored, max_values):
            yield rows, self.X if rows == slice(0, self.n_rows) else self.X[rows]

    def value_blocks(self):
        yield self.X


class BackedRows(RowData):
    """Rows of a CSR matrix on disk, read a minibatch at a time; memory holds a few minibatches.

    Parameters
    ----------
    dataset : anndata.abc.CSRDataset
        E.g. ``anndata.read_h5ad(path, backed="r").X``.
    rows : ndarray of int, default=None
        The rows of ``dataset`` these are, in order; all of them when None.
    covariates : array-like of shape (len(rows), n_covariates), default=None
    labels : array-like of shape (len(rows),), default=None
    continuous : array-like of shape (len(rows), n_continuous), default=None
    stored : skvae.train.rows.StoredCSR, default=None
        The file's arrays, once :meth:`check_layout` has checked them (shared by
        the rows taken from these).
    columns : ndarray of int, default=None
        The columns of ``dataset`` these rows hold (a gene selection,
        :class:`BackedColumns`); all of them when None. Every stored value is
        still checked (:meth:`value_blocks`).

    Examples
    --------
    >>> import tempfile
    >>> import anndata
    >>> import numpy as np
    >>> import scipy.sparse as sp
    >>> from skvae.train.data import RowData
    >>> path = tempfile.mkdtemp() + "/cells.h5ad"
    >>> anndata.AnnData(sp.csr_matrix(np.arange(12.0).reshape(4, 3))).write_h5ad(path)
    >>> data = RowData.from_input(anndata.read_h5ad(path, backed="r").X)
    >>> data.on_disk, data.take(np.array([3, 1])).in_memory().X.toarray().tolist()
    (True, [[9.0, 10.0, 11.0], [3.0, 4.0, 5.0]])
    """

    on_disk = True

    def __init__(self, dataset, rows=None, covariates=None, labels=None, continuous=None, stored=None, columns=None):
        self.rows = np.arange(dataset.shape[0]) if rows is None else np.asarray(rows)
        self.columns = columns
        super().__init__(len(self.rows), dataset.shape[1] if columns is None else len(columns), dataset.dtype,
                         covariates, labels, continuous)
        self.dataset = dataset
        self._stored = stored

    def check_file(self, *, n_features=None, min_rows=1, reader="the model"):
        """What scikit-learn's checks are to a matrix in memory, for this one on disk: layout, features, rows.

        Parameters
        ----------
        n_features : int, default=None
            The features a fitted model expects (None: any).
        min_rows : int, default=1
        reader : str, default="the model"
            Who expects ``n_features``, for the message.
        """
        if self.format != "csr":
            raise TypeError(f"X is a {self.format.upper()} matrix on disk: skvae reads cells (rows), which a CSC file "
                            "stores scattered. Write the matrix as CSR (cells x genes), e.g. adata.X = "
                            "adata.X.tocsr() before adata.write_h5ad.")
        if self.n_features < 1:
            raise ValueError(f"{self.filename} holds a matrix of 0 genes: there is nothing to embed.")
        self.check_layout()
        if n_features is not None and self.n_features != n_features:
            raise ValueError(f"X has {self.n_features} features, but {reader} is expecting {n_features} features as "
                             "input.")
        if self.n_rows < min_rows:
            raise ValueError(f"Found array with {self.n_rows} sample(s) while a minimum of {min_rows} is required.")

    @property
    def filename(self):
        """The file the rows are read from."""
        return self.dataset.group.file.filename

    def check_layout(self):
        """Raise a ValueError naming the file and the problem unless the arrays on disk form a valid CSR matrix.

        Checks what reading rows relies on, before any is read: the three arrays exist;
        ``indptr`` has one entry per row and one more, starts at 0, never decreases and
        ends at the number of stored values; every column index lies within the stated
        number of genes. Indices are streamed in blocks.

        Returns
        -------
        BackedRows
            These rows, now reading through the checked arrays.
        """
        with self._reading():
            self._check_layout()
        return self

    def _check_layout(self):
        group, (n_rows, n_genes) = self.dataset.group, self.dataset.shape
        where = f"{self.filename} ({group.name})"
        missing = [name for name in ("data", "indices", "indptr") if name not in group]
        if missing:
            raise ValueError(f"{where} is not a CSR matrix: it lacks {missing}.")
        indptr, n_stored = group["indptr"], group["data"].shape[0]
        if indptr.shape[0] != n_rows + 1:
            raise ValueError(f"{where}: indptr has {indptr.shape[0]} entries for a stated {n_rows} rows (it needs "
                             f"{n_rows + 1}): the file is damaged or its shape attribute is wrong.")
        pointers = np.asarray(indptr[:], dtype=np.int64)
        if pointers[0] != 0 or (np.diff(pointers) < 0).any() or pointers[-1] != n_stored or \
                group["indices"].shape[0] != n_stored:
            raise ValueError(f"{where}: indptr does not run from 0 up to the {n_stored} stored values without "
                             f"decreasing (or indices and data differ in length): the file is damaged.")
        for block in self._blocks("indices"):
            if block.size and (block.min() < 0 or block.max() >= n_genes):
                raise ValueError(f"{where}: column indices run from {block.min()} to {block.max()}, beyond the "
                                 f"stated {n_genes} genes: the file is damaged or its shape attribute is wrong.")
        self._stored = StoredCSR(group, self.dataset.shape, pointers)

    def fingerprint(self):
        """Size and modification time of the file: what changes when it is written to.

        Returns
        -------
        tuple of int
        """
        status = os.stat(self.filename)
        return status.st_size, status.st_mtime_ns

    @property
    def format(self):
        """The file's layout, "csr" or "csc" (only CSR rows can be read a minibatch at a time)."""
        return self.dataset.format

    def astype(self, dtype):
        return self

    def take(self, rows):
        return BackedRows(self.dataset, self.rows[rows], **self._per_row(rows), stored=self._stored,
                          columns=self.columns)

    def shard(self, parallel):
        return self if parallel is None else self.take(parallel.shard_of(self.n_rows))

    def in_memory(self):
        """These rows read into memory, as a CSR matrix.

        Returns
        -------
        InMemoryRows
        """
        source = BackedSparseRowSource(self.dataset, rows=self.rows, dtype=_readable(self.dtype), device="cpu",
                                       with_transpose=False, stored=self._stored, columns=self.columns)
        return InMemoryRows(source.csr(slice(None)), **self._per_row())

    def source(self, *, algorithm, center, dtype=np.float32, device="cpu", with_transpose=False):
        return BackedSparseRowSource(self.dataset, rows=self.rows, dtype=dtype, device=device,
                                     with_transpose=with_transpose, stored=self._stored,
                                     columns=self.columns).carrying(self.covariates, self.labels, self.continuous)

    def row_blocks(self, max_values=None):
        """Yield consecutive blocks of the rows, read into memory, each of at most ``max_values`` stored values.

        A single row holding more is a block of its own. Memory holds one block at a time.

        Parameters
        ----------
        max_values : int, default=None
            None: 2**22 (about 50 MB of values and indices).

        Yields
        ------
        rows : slice
        X : scipy.sparse.csr_matrix
        """
        if self._stored is None:
            self.check_layout()
        pointers = self._stored.indptr
        for rows in _row_ranges(pointers[self.rows + 1] - pointers[self.rows], max_values):
            yield rows, self.take(rows).in_memory().X

    def value_blocks(self):
        yield from self._blocks("data")

    def _blocks(self, name):
        with self._reading():
            values = self.dataset.group[name]
            for start in range(0, values.shape[0], _VALUE_BLOCK):
                yield np.asarray(values[start : start + _VALUE_BLOCK])

    @contextlib.contextmanager
    def _reading(self):
        """HDF5's errors for a file damaged or truncated after it was opened, as a ValueError naming it."""
        try:
            yield
        except (OSError, KeyError, RuntimeError) as exc:
            raise ValueError(f"Reading {self.filename} failed ({exc}): the file may be damaged, or have been "
                             "truncated or changed after it was opened.") from None


def _row_ranges(stored, max_values=None):
    """Consecutive slices of rows holding at most ``max_values`` (None: 2**22) of ``stored`` (values per row) each, at
    least a row."""
    max_values = _VALUE_BLOCK if max_values is None else max_values
    ends = np.cumsum(stored)
    start = 0
    while start < len(stored):
        # the most rows from start whose values fit, and at least one
        stop = max(start + 1, int(np.searchsorted(ends, (ends[start - 1] if start else 0) + max_values, "right")))
        yield slice(start, stop)
        start = stop


def _readable(dtype):
    """float32 and float64 stay; other stored types (integers, float16) are read as float64."""
    return dtype if dtype in (np.float32, np.float64) else np.dtype(np.float64)
