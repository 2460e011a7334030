"""Rows of a dense or sparse matrix as torch tensors, one minibatch at a time."""

import numpy as np
import scipy.sparse as sp
import torch
from sklearn.utils import gen_batches


def rows_as_tensor(X, rows, *, dtype=np.float32, device="cpu"):
    """Dense tensor of the selected rows of ``X``.

    Sparse matrices are densified here, one selection at a time, never whole.

    Parameters
    ----------
    X : ndarray or scipy.sparse CSR matrix of shape (n_samples, n_features)
    rows : slice or ndarray of int
    dtype : numpy dtype, default=np.float32
    device : str or torch.device, default="cpu"

    Returns
    -------
    torch.Tensor of shape (n_selected, n_features)
    """
    block = X[rows].toarray() if sp.issparse(X) else X[rows]
    # np.array copies: read-only inputs (memmaps) must not be shared with torch
    return torch.from_numpy(np.array(block, dtype=dtype)).to(device)


def iter_row_batches(X, batch_size, *, order=None, dtype=np.float32, device="cpu"):
    """Yield dense tensors of consecutive minibatches of rows of ``X``.

    Parameters
    ----------
    X : ndarray or scipy.sparse CSR matrix of shape (n_samples, n_features)
    batch_size : int
    order : ndarray of int, default=None
        Row indices to visit, in order; all rows in their order when None.
    dtype : numpy dtype, default=np.float32
    device : str or torch.device, default="cpu"

    Yields
    ------
    torch.Tensor of shape (<= batch_size, n_features)
    """
    n_rows = X.shape[0] if order is None else len(order)
    for batch in gen_batches(n_rows, batch_size):
        rows = batch if order is None else order[batch]
        yield rows_as_tensor(X, rows, dtype=dtype, device=device)
