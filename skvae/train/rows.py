"""Rows of a dense or sparse matrix as torch minibatches, made one minibatch at a time.

A row source serves :class:`Minibatch` es: the rows, with what each row comes with (its
covariates, label and continuous covariates; :meth:`RowSource.carrying`). Two
representations of the rows, chosen by :func:`make_row_source`:

- dense tensors (sparse input is densified one minibatch at a time, never whole);
- :class:`skvae.nn.sparse.ShiftedSparseRows`: each row as a sparse vector plus a
  per-feature shift, for sparse input and for dense input that is mostly one value
  per feature (such as Seurat-scaled expression), and for a sparse matrix on disk
  (:class:`BackedSparseRowSource`).
"""

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from sklearn.utils import gen_batches

from ..nn.sparse import ShiftedSparseRows

# "auto" takes the sparse representation of dense input when at most this share of
# its entries differ from their column's median (6 % on Seurat-scaled PBMC3k).
SPARSE_DENSITY_LIMIT = 0.3
# Entries per column block when dense input is examined and converted: bounded temporaries.
_BLOCK_ENTRIES = 2**22


@dataclass
class Minibatch:
    """The rows of one minibatch with what each comes with, as tensors on the training device.

    Parameters
    ----------
    x : torch.Tensor or skvae.nn.sparse.ShiftedSparseRows
        The rows.
    covariates : torch.Tensor of shape (n_rows, n_covariates), int64, default=None
        Each row's category codes (the models' ``covariates``), or None.
    labels : torch.Tensor of shape (n_rows,), int64, default=None
        Each row's cell type, an index of the classes or -1 for an unlabelled
        cell (a classifier's ``labels``), or None.
    continuous : torch.Tensor of shape (n_rows, n_continuous), default=None
        Each row's continuous covariates (the models' ``continuous``), in the
        rows' float type, or None.

    Examples
    --------
    >>> import torch
    >>> from skvae.train.rows import Minibatch
    >>> Minibatch(torch.zeros(2, 3)).covariates is None
    True
    """

    x: object
    covariates: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    continuous: torch.Tensor | None = None

    @property
    def given(self):
        """What the models' ``embed``, ``decode`` and ``loss`` take with the rows: ``covariates`` and ``continuous``.

        Returns
        -------
        dict of str to torch.Tensor or None
        """
        return {"covariates": self.covariates, "continuous": self.continuous}

    def __len__(self):
        return len(self.x)


class RowSource:
    """What every row source shares: ``n_rows`` rows served as :class:`Minibatch` es, with what each row carries.

    A subclass says how a minibatch's rows are made (:meth:`rows`).

    Parameters
    ----------
    n_rows : int
    dtype : numpy dtype
    device : str or torch.device

    Examples
    --------
    >>> import numpy as np
    >>> from skvae.train.rows import make_row_source
    >>> source = make_row_source(np.eye(3), algorithm="dense").carrying(covariates=np.array([[0], [1], [1]]))
    >>> minibatch = source.minibatch(np.array([2, 0]))
    >>> minibatch.x.shape, minibatch.covariates.tolist()
    (torch.Size([2, 3]), [[1], [0]])
    """

    def __init__(self, n_rows, *, dtype, device):
        self.n_rows, self._dtype, self._device = n_rows, dtype, device
        self._per_row = (None, None, None)

    def carrying(self, covariates=None, labels=None, continuous=None):
        """Give each row what it comes with, which every minibatch then carries; returns self.

        Parameters
        ----------
        covariates : ndarray of shape (n_rows, n_covariates), default=None
        labels : ndarray of shape (n_rows,), default=None
        continuous : ndarray of shape (n_rows, n_continuous), default=None
            Cast to the rows' float type.

        Returns
        -------
        RowSource
        """
        continuous = None if continuous is None else np.asarray(continuous, dtype=self._dtype)
        self._per_row = tuple(None if values is None else torch.as_tensor(values, device=self._device)
                              for values in (covariates, labels, continuous))
        return self

    def rows(self, rows):
        """The rows ``rows`` (a slice or an array of indices) as the model reads them, on the source's device.

        Parameters
        ----------
        rows : slice or ndarray of int

        Returns
        -------
        torch.Tensor or ShiftedSparseRows
        """
        raise NotImplementedError

    def minibatch(self, rows):
        """The minibatch of ``rows`` (a slice or an array of indices): the rows and what they carry.

        Parameters
        ----------
        rows : slice or ndarray of int

        Returns
        -------
        Minibatch
        """
        index = torch.as_tensor(rows) if isinstance(rows, np.ndarray) else rows
        return Minibatch(self.rows(rows), *(None if values is None else values[index] for values in self._per_row))

    def minibatches(self, indices):
        """Yield the minibatch of each of ``indices``.

        Parameters
        ----------
        indices : list of ndarray of int or slice

        Yields
        ------
        Minibatch
        """
        yield from (self.minibatch(index) for index in indices)


class DenseRowSource(RowSource):
    """Minibatches as dense tensors.

    Parameters
    ----------
    X : ndarray or scipy.sparse CSR matrix of shape (n_samples, n_features)
        Sparse rows are densified one minibatch at a time.
    dtype : numpy dtype
    device : str or torch.device

    Examples
    --------
    >>> import numpy as np
    >>> from skvae.train.rows import DenseRowSource
    >>> DenseRowSource(np.eye(4), dtype=np.float32, device="cpu").minibatch(slice(1, 3)).x
    tensor([[0., 1., 0., 0.],
            [0., 0., 1., 0.]])
    """

    def __init__(self, X, *, dtype, device):
        super().__init__(X.shape[0], dtype=dtype, device=device)
        # np.array/np.require copy read-only inputs (memmaps), which torch must not share
        self._X = X if sp.issparse(X) else torch.from_numpy(np.require(X, dtype=dtype, requirements=["C", "W"]))

    def rows(self, rows):
        """The dense tensor of ``rows`` (a slice or an array of indices), on the source's device.

        Parameters
        ----------
        rows : slice or ndarray of int

        Returns
        -------
        torch.Tensor of shape (n_selected, n_features)
        """
        if sp.issparse(self._X):
            return torch.from_numpy(self._X[rows].toarray().astype(self._dtype, copy=False)).to(self._device)
        return self._X[torch.as_tensor(rows) if isinstance(rows, np.ndarray) else rows].to(self._device)


class _SparseRowSource(RowSource):
    """Minibatches as :class:`~skvae.nn.sparse.ShiftedSparseRows`: a subclass says where a minibatch's CSR rows come from."""

    def __init__(self, n_rows, shift, *, dtype, device, with_transpose):
        super().__init__(n_rows, dtype=dtype, device=device)
        self._shift, self._with_transpose = shift, with_transpose

    def rows(self, rows):
        """The shifted sparse rows ``rows`` (a slice or an array of indices), on the source's device.

        Parameters
        ----------
        rows : slice or ndarray of int

        Returns
        -------
        ShiftedSparseRows
        """
        return ShiftedSparseRows.from_scipy(
            self.csr(rows), self._shift, dtype=self._dtype, device=self._device, with_transpose=self._with_transpose
        )

    def csr(self, rows):
        """The stored part of ``rows`` (a slice or an array of indices) as a scipy CSR matrix.

        Parameters
        ----------
        rows : slice or ndarray of int

        Returns
        -------
        scipy.sparse.csr_matrix
        """
        raise NotImplementedError


class ShiftedSparseRowSource(_SparseRowSource):
    """Minibatches as :class:`~skvae.nn.sparse.ShiftedSparseRows` of ``values + shift``.

    Parameters
    ----------
    values : scipy.sparse matrix of shape (n_samples, n_features)
    shift : ndarray of shape (n_features,)
    dtype : numpy dtype
    device : str or torch.device
    with_transpose : bool
        Keep each minibatch's transpose, for gradients.

    Examples
    --------
    >>> import numpy as np
    >>> import scipy.sparse as sp
    >>> from skvae.train.rows import ShiftedSparseRowSource
    >>> source = ShiftedSparseRowSource(sp.eye(4, format="csr"), np.ones(4), dtype=np.float32, device="cpu",
    ...                                 with_transpose=False)
    >>> rows = source.minibatch(np.array([2, 0])).x
    >>> rows.values.to_dense() + rows.shift
    tensor([[1., 1., 2., 1.],
            [2., 1., 1., 1.]])
    """

    def __init__(self, values, shift, *, dtype, device, with_transpose):
        super().__init__(values.shape[0], shift, dtype=dtype, device=device, with_transpose=with_transpose)
        self._values = values.tocsr().astype(dtype, copy=False)

    def csr(self, rows):
        return _csr_rows(self._values, rows)


class StoredCSR:
    """The three arrays of a CSR matrix in an HDF5 group (a backed AnnData's ``X``), read a few rows at a time.

    ``indptr`` is read into memory once (8 bytes a row); a set of rows is then two
    reads, one of ``data`` and one of ``indices``, each a single HDF5 selection that
    unites the rows' runs of stored values. Values are read in the type stored (so
    float16 and integer files work) and cast after.

    Parameters
    ----------
    group : h5py.Group
        Holding ``data``, ``indices`` and ``indptr``.
    shape : tuple of int
    indptr : ndarray of int, default=None
        The group's ``indptr`` when already read (it is read here otherwise).

    Examples
    --------
    >>> import tempfile
    >>> import anndata
    >>> import numpy as np
    >>> import scipy.sparse as sp
    >>> from skvae.train.rows import StoredCSR
    >>> path = tempfile.mkdtemp() + "/cells.h5ad"
    >>> anndata.AnnData(sp.csr_matrix(np.arange(12.0).reshape(4, 3))).write_h5ad(path)
    >>> X = anndata.read_h5ad(path, backed="r").X
    >>> StoredCSR(X.group, X.shape).rows(np.array([1, 3]), np.float32).toarray()
    array([[ 3.,  4.,  5.],
           [ 9., 10., 11.]], dtype=float32)
    """

    def __init__(self, group, shape, indptr=None):
        self.data, self.indices = group["data"], group["indices"]
        self.indptr = np.asarray(group["indptr"][:] if indptr is None else indptr, dtype=np.int64)
        self.shape, self.filename = tuple(shape), group.file.filename

    def rows(self, rows, dtype):
        """The rows ``rows`` (ascending, distinct row indices) as a CSR matrix of ``dtype``.

        Parameters
        ----------
        rows : ndarray of int
        dtype : numpy dtype

        Returns
        -------
        scipy.sparse.csr_matrix
        """
        starts, stops = self.indptr[rows], self.indptr[rows + 1]
        lengths = stops - starts
        indptr = np.concatenate([[0], np.cumsum(lengths)])
        # consecutive rows have adjacent values: one run each
        new_run = np.ones(len(rows), dtype=bool)
        new_run[1:] = starts[1:] != stops[:-1]
        first = np.flatnonzero(new_run)
        run_starts, run_stops = starts[first], np.append(stops[first[1:] - 1], stops[-1]) if len(rows) else stops
        values = _read_runs(self.data, run_starts, run_stops).astype(dtype, copy=False)
        indices = _read_runs(self.indices, run_starts, run_stops)
        return sp.csr_matrix((values, indices, indptr), shape=(len(rows), self.shape[1]))


def _read_runs(dataset, starts, stops):
    """The values of ``dataset[start:stop]`` for each run, concatenated, in one read of a united selection."""
    import h5py  # installed with anndata, the only source of files on disk

    lengths = stops - starts
    out = np.empty(int(lengths.sum()), dtype=dataset.dtype)
    if not len(out):
        return out
    if len(starts) == 1:
        return dataset[int(starts[0]) : int(stops[0])]
    space = dataset.id.get_space()
    space.select_none()
    for start, length in zip(starts.tolist(), lengths.tolist(), strict=True):
        if length:
            space.select_hyperslab((start,), (length,), op=h5py.h5s.SELECT_OR)
    dataset.id.read(h5py.h5s.create_simple((len(out),)), space, out)
    return out


class BackedSparseRowSource(_SparseRowSource):
    """Minibatches read from a CSR matrix on disk, such as a backed AnnData's ``X``.

    Only the rows of each minibatch are read (:class:`StoredCSR`: two reads a
    minibatch), then put back in the order asked for; while a minibatch trains, the
    next ones are read in a background thread. Memory holds a few minibatches, not
    the matrix.

    Parameters
    ----------
    dataset : anndata.abc.CSRDataset
        E.g. ``anndata.read_h5ad(path, backed="r").X``, or
        ``anndata.io.sparse_dataset(group)`` of a layer.
    rows : slice or ndarray of int, default=slice(None)
        The rows of ``dataset`` this source serves (a rank's block of a shared
        file, a training split), in the order that indexes them from 0.
    dtype : numpy dtype
    device : str or torch.device
    with_transpose : bool
        Keep each minibatch's transpose, for gradients.
    read_ahead : int, default=2
        Minibatches read ahead of the one in use.
    stored : StoredCSR, default=None
        The file's arrays, when already opened and checked; read from ``dataset``
        when None.
    columns : ndarray of int, default=None
        The columns of ``dataset`` to serve, in order (a gene selection); all of
        them when None.

    Examples
    --------
    >>> import tempfile
    >>> import anndata
    >>> import numpy as np
    >>> import scipy.sparse as sp
    >>> from skvae.train.rows import BackedSparseRowSource
    >>> path = tempfile.mkdtemp() + "/cells.h5ad"
    >>> anndata.AnnData(sp.csr_matrix(np.arange(12.0).reshape(4, 3))).write_h5ad(path)
    >>> source = BackedSparseRowSource(anndata.read_h5ad(path, backed="r").X, dtype=np.float32, device="cpu",
    ...                                with_transpose=False)
    >>> source.minibatch(np.array([3, 0])).x.values.to_dense()
    tensor([[ 9., 10., 11.],
            [ 0.,  1.,  2.]])
    """

    def __init__(self, dataset, *, rows=slice(None), dtype, device, with_transpose, read_ahead=2, stored=None,
                 columns=None):
        # the rows are read from disk, one minibatch at a time: there is no matrix in memory to hold
        self._stored = StoredCSR(dataset.group, dataset.shape) if stored is None else stored
        self._row_ids = np.arange(dataset.shape[0])[rows]
        self._columns = columns
        super().__init__(len(self._row_ids), np.zeros(dataset.shape[1] if columns is None else len(columns)),
                         dtype=dtype, device=device, with_transpose=with_transpose)
        self._read_ahead = read_ahead

    def csr(self, rows):
        wanted = self._row_ids[rows]
        distinct, inverse = np.unique(wanted, return_inverse=True)  # ascending: what HDF5 reads in one pass
        try:
            block = self._stored.rows(distinct, self._dtype)
        except (OSError, KeyError, RuntimeError) as exc:
            raise ValueError(f"Reading rows of {self._stored.filename} failed ({exc}): the file may have been "
                             "truncated or changed while skvae read it.") from None
        if not block.has_canonical_format:  # duplicate or unsorted genes in a row: summed, as in memory
            block.sum_duplicates()
        if self._columns is not None:
            block = block[:, self._columns]
            block.sort_indices()  # columns asked for out of order come out of order
        return block if np.array_equal(distinct, wanted) else block[inverse]

    def minibatches(self, indices):
        """Yield the minibatch of each of ``indices``, reading ahead in a background thread.

        Parameters
        ----------
        indices : list of ndarray of int or slice

        Yields
        ------
        Minibatch
        """
        with ThreadPoolExecutor(max_workers=1) as reader:
            pending = deque()
            for index in indices:
                pending.append(reader.submit(self.minibatch, index))
                if len(pending) > self._read_ahead:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()


def _csr_rows(X, rows):
    """Rows of a CSR matrix; a range of rows as views of its arrays, without copying them."""
    if not isinstance(rows, slice):
        return X[rows]
    start, stop, _ = rows.indices(X.shape[0])
    first, last = X.indptr[start], X.indptr[stop]
    return sp.csr_matrix(
        (X.data[first:last], X.indices[first:last], X.indptr[start : stop + 1] - first),
        shape=(stop - start, X.shape[1]),
        copy=False,
    )


def make_row_source(X, *, algorithm="auto", center=True, dtype=np.float32, device="cpu", with_transpose=False):
    """A minibatch source for ``X``.

    Parameters
    ----------
    X : ndarray or scipy.sparse CSR matrix of shape (n_samples, n_features)
    algorithm : {"auto", "dense", "sparse"}, default="auto"
        "dense": dense tensors. "sparse": shifted sparse rows (shift 0 for sparse
        input, the column median for dense input). "auto": "sparse" for sparse
        input and for dense input with at most :data:`SPARSE_DENSITY_LIMIT` of its
        entries off their column's median, else "dense".
    center : bool, default=True
        Whether dense input is shifted by its column medians in the sparse
        representation. False keeps each row as it is (shift 0), as count
        likelihoods need: their encoder input ``log1p(x / l * 1e4)`` is sparse only
        where ``x`` is; "auto" then counts the non-zero entries.
    dtype : numpy dtype, default=np.float32
    device : str or torch.device, default="cpu"
    with_transpose : bool, default=False
        Keep each sparse minibatch's transpose, for gradients (training).

    Returns
    -------
    source : DenseRowSource or ShiftedSparseRowSource
        ``source.minibatch(rows)`` gives the :class:`Minibatch` of ``rows`` (a slice or
        indices), ``source.carrying(...)`` what its rows carry; ``source.n_rows`` is the
        number of rows.

    Examples
    --------
    >>> import numpy as np
    >>> from skvae.train.rows import make_row_source
    >>> scaled = np.where(np.eye(50) > 0, 3.0, -0.2)  # one value per column, mostly
    >>> type(make_row_source(scaled)).__name__, type(make_row_source(scaled, algorithm="dense")).__name__
    ('ShiftedSparseRowSource', 'DenseRowSource')
    """
    if algorithm == "dense":
        return DenseRowSource(X, dtype=dtype, device=device)
    if sp.issparse(X):
        return ShiftedSparseRowSource(X, np.zeros(X.shape[1]), dtype=dtype, device=device, with_transpose=with_transpose)
    shift, n_off = np.zeros(X.shape[1], X.dtype), 0
    # column blocks: the temporaries are the size of a block, not of X
    column_blocks = list(gen_batches(X.shape[1], max(1, _BLOCK_ENTRIES // max(1, X.shape[0]))))
    for columns in column_blocks:
        block = X[:, columns]
        if center:  # a column that is mostly one value (0 for counts, -mean / sd once scaled) has it as its median
            shift[columns] = np.partition(block, X.shape[0] // 2, axis=0)[X.shape[0] // 2]
        n_off += np.count_nonzero(block != shift[columns])
    if algorithm == "auto" and n_off > SPARSE_DENSITY_LIMIT * X.size:
        return DenseRowSource(X, dtype=dtype, device=device)
    # x - x is exactly 0, so the background entries are not stored
    values = sp.hstack([sp.csr_matrix((X[:, columns] - shift[columns]).astype(dtype, copy=False))
                        for columns in column_blocks], format="csr")
    return ShiftedSparseRowSource(values, shift, dtype=dtype, device=device, with_transpose=with_transpose)
