"""Minibatches written as a sparse matrix plus a per-feature shift, and exact layers on them.

Single-cell input is mostly one value per gene: 0 for counts and log-normalised
data, ``-mean / sd`` for Seurat-scaled data. Writing each row as ``x = d + shift``
with ``d`` sparse turns the two products with the genes axis into sparse ones:

- the encoder's first layer: ``W x + b = W d + (W shift + b)``;
- the decoder's last layer and the squared error, with ``r = W h + b - x``:
  ``|r|^2 = h'(W'W)h + 2 h'W'c + |c|^2 - 2 d'(W h) - 2 d'c + |d|^2`` where
  ``c = b - shift``; ``W'W`` is one ``genes x width^2`` product per minibatch.

Both are exact rewrites of the dense computation, with their gradients written out.
"""

import warnings
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
from torch.autograd import Function


class _ShiftedSparseLinear(Function):
    """``(values + shift) @ weight + bias`` with ``weight`` stored (in, out).

    The backward reads the minibatch's precomputed transpose: no index sorting, and
    the weight's gradient is one sparse product plus a rank-one update.
    """

    @staticmethod
    def forward(ctx, values, values_t, shift, weight, bias):
        ctx.save_for_backward(values_t, shift)
        return torch.sparse.mm(values, weight) + (shift @ weight + bias)

    @staticmethod
    def backward(ctx, grad_output):
        values_t, shift = ctx.saved_tensors
        column_sums = grad_output.sum(dim=0)
        grad_weight = torch.sparse.mm(values_t, grad_output).addr_(shift, column_sums)
        return None, None, None, grad_weight, column_sums


class _ShiftedSparseLinearSquaredError(Function):
    """Per-row ``|hidden @ weight.T + bias - x|^2`` for rows ``x = values + shift``.

    With ``c = bias - shift``, ``G = W'W`` and ``P = values @ W``, the value is
    ``h'Gh + 2 h'W'c + |c|^2 - 2 (P h + values c) + |values|^2``. The backward is
    written out so that the weight's gradient is one dense product
    ``2 W (H' diag(g) H)``, a rank-one update and one sparse product, with no
    ``genes x width`` intermediate of autograd's.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, values, values_t, shift):
        offset = bias - shift
        values_sq_norm = hidden.new_zeros(len(hidden)).index_add_(0, _row_of_each_value(values), values.values().square())
        gram = weight.T @ weight
        weight_offset = weight.T @ offset
        projected = torch.sparse.mm(values, weight)
        values_offset = torch.sparse.mm(values, offset[:, None]).squeeze(1)
        ctx.save_for_backward(hidden, weight, offset, values_t, gram, weight_offset, projected)
        return (
            ((hidden @ gram) * hidden).sum(dim=1)
            + 2 * hidden @ weight_offset
            + offset.dot(offset)
            - 2 * ((projected * hidden).sum(dim=1) + values_offset)
            + values_sq_norm
        )

    @staticmethod
    def backward(ctx, grad_output):
        hidden, weight, offset, values_t, gram, weight_offset, projected = ctx.saved_tensors
        weighted_hidden = grad_output[:, None] * hidden
        hidden_sum = weighted_hidden.sum(dim=0)
        grad_hidden = 2 * grad_output[:, None] * (hidden @ gram + weight_offset - projected)
        grad_weight = weight @ (2 * hidden.T @ weighted_hidden)
        grad_weight.addr_(offset, hidden_sum, alpha=2)
        grad_weight.sub_(torch.sparse.mm(values_t, weighted_hidden), alpha=2)
        grad_bias = 2 * (
            weight @ hidden_sum + grad_output.sum() * offset - torch.sparse.mm(values_t, grad_output[:, None]).squeeze(1)
        )
        return grad_hidden, grad_weight, grad_bias, None, None, None


@dataclass
class ShiftedSparseRows:
    """A minibatch of rows ``x = values + shift``.

    Parameters
    ----------
    values : torch.Tensor, sparse CSR of shape (n_rows, n_features)
    values_t : torch.Tensor, sparse CSR of shape (n_features, n_rows) or None
        The transpose, for gradients with respect to weights; None at inference,
        where no gradient is taken.
    shift : torch.Tensor of shape (n_features,)

    Examples
    --------
    >>> import numpy as np
    >>> import scipy.sparse as sp
    >>> import torch
    >>> from skvae.nn.sparse import ShiftedSparseRows
    >>> block = sp.csr_matrix(np.array([[0.0, 2.0], [1.0, 0.0]]))
    >>> rows = ShiftedSparseRows.from_scipy(block, np.array([-1.0, -1.0]), dtype=np.float64)
    >>> rows.linear(torch.eye(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)).tolist()
    [[-1.0, 1.0], [0.0, -1.0]]
    """

    values: torch.Tensor
    values_t: torch.Tensor | None
    shift: torch.Tensor

    def __len__(self):
        return self.values.shape[0]

    @classmethod
    def from_scipy(cls, block, shift, *, dtype, device="cpu", with_transpose=True):
        """Build from a scipy CSR block and a numpy shift.

        Parameters
        ----------
        block : scipy.sparse CSR matrix of shape (n_rows, n_features)
        shift : ndarray of shape (n_features,)
        dtype : numpy dtype
        device : str or torch.device, default="cpu"
        with_transpose : bool, default=True
            Also keep the transpose, needed for gradients.

        Returns
        -------
        ShiftedSparseRows
        """
        block = block.astype(dtype, copy=False)
        shift = np.asarray(shift, dtype=dtype)
        transpose = block.T.tocsr() if with_transpose else None
        rows = cls(
            values=_torch_csr(block, device),
            values_t=None if transpose is None else _torch_csr(transpose, device),
            shift=torch.from_numpy(shift).to(device),
        )
        # the cached properties, from scipy's arrays: a fraction of the time torch's kernels take for them
        per_row = np.diff(block.indptr)
        rows.__dict__["value_rows"] = torch.from_numpy(np.repeat(np.arange(len(per_row)), per_row)).to(device)
        sums = np.asarray(block.sum(axis=1), dtype=dtype).ravel() + shift.sum(dtype=dtype)
        rows.__dict__["row_sums"] = torch.from_numpy(sums).to(device)
        return rows

    def linear(self, weight, bias):
        """``x @ weight + bias`` for every row ``x``, with ``weight`` stored (in, out).

        Parameters
        ----------
        weight : torch.Tensor of shape (n_features, out_features)
        bias : torch.Tensor of shape (out_features,)

        Returns
        -------
        torch.Tensor of shape (n_rows, out_features)
        """
        return _ShiftedSparseLinear.apply(self.values, self.values_t, self.shift, weight, bias)

    def linear_squared_error(self, hidden, weight, bias):
        """Per-row ``|hidden @ weight.T + bias - x|^2`` without forming the reconstruction.

        Parameters
        ----------
        hidden : torch.Tensor of shape (n_rows, width)
        weight : torch.Tensor of shape (n_features, width)
            An ``nn.Linear`` weight.
        bias : torch.Tensor of shape (n_features,)

        Returns
        -------
        torch.Tensor of shape (n_rows,)
        """
        return _ShiftedSparseLinearSquaredError.apply(
            hidden, weight, bias, self.values, self.values_t, self.shift
        )

    def coordinates(self):
        """Row, column and value of every stored entry of ``values``.

        Returns
        -------
        rows, columns : torch.Tensor of shape (n_stored,), int64
        values : torch.Tensor of shape (n_stored,)
        """
        return self.value_rows, self.values.col_indices(), self.values.values()

    @cached_property
    def value_rows(self):
        """Row index of each stored entry of ``values`` (computed once per minibatch).

        Returns
        -------
        torch.Tensor of shape (n_stored,), int64
        """
        return _row_of_each_value(self.values)

    @cached_property
    def row_sums(self):
        """Sum of each row ``values + shift`` (computed once per minibatch).

        Returns
        -------
        torch.Tensor of shape (n_rows,)
        """
        stored = self.values.values()
        return stored.new_zeros(self.values.shape[0]).index_add_(0, self.value_rows, stored) + self.shift.sum()

    def log1p_scaled(self, row_scale):
        """Rows ``log1p(x * row_scale)`` of rows with no shift, still sparse (``log1p(0) = 0``).

        Parameters
        ----------
        row_scale : torch.Tensor of shape (n_rows,)
            A factor per row, e.g. ``1e4 / library size``.

        Returns
        -------
        ShiftedSparseRows
        """
        return self._stored_changed("log1p_scaled", lambda stored, rows, _: torch.log1p(stored * row_scale[rows]))

    def scaled(self, factor):
        """Rows of no shift with each entry ``x[i, j]`` times ``factor[i, j]``, still sparse.

        Parameters
        ----------
        factor : torch.Tensor of shape (n_rows, n_features)

        Returns
        -------
        ShiftedSparseRows
        """
        return self._stored_changed("scaled", lambda stored, rows, columns: stored * factor[rows, columns()])

    def _stored_changed(self, name, change):
        """Rows with no shift whose stored entries are ``change(stored, rows, columns)``: their zeros stay zeros.

        ``columns`` is a function that gives the entries' columns (computed only when asked: the transpose's cost
        a pass over its entries).
        """
        if self.shift.any():
            raise ValueError(f"{name} needs rows with no shift: only the stored entries change, so zeros stay zeros.")
        values = _with_values(self.values, change(self.values.values(), self.value_rows, self.values.col_indices))
        values_t = None
        if self.values_t is not None:
            # the transpose's columns are the rows, its rows the features
            values_t = _with_values(self.values_t, change(self.values_t.values(), self.values_t.col_indices(),
                                                          lambda: _row_of_each_value(self.values_t)))
        return ShiftedSparseRows(values, values_t, self.shift)


def _row_of_each_value(csr):
    """Row index of each stored value of a torch CSR tensor."""
    crow = csr.crow_indices()
    return torch.repeat_interleave(torch.arange(len(crow) - 1, device=crow.device), crow.diff())


def _with_values(csr, values):
    """A CSR tensor with the structure of ``csr`` and other ``values``."""
    return _csr_tensor(csr.crow_indices(), csr.col_indices(), values, csr.shape)


def _csr_tensor(crow_indices, col_indices, values, size, device=None):
    """``torch.sparse_csr_tensor`` of a structure known to be valid, without torch's beta warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta", UserWarning)
        return torch.sparse_csr_tensor(crow_indices, col_indices, values, size=size, device=device,
                                       check_invariants=False)


def _torch_csr(block, device):
    # scipy's CSR is valid by construction
    return _csr_tensor(
        torch.from_numpy(block.indptr),
        torch.from_numpy(block.indices.astype(block.indptr.dtype, copy=False)),
        torch.from_numpy(block.data),
        block.shape,
        device,
    )
