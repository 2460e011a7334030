"""Row sources: the representation "auto" chooses, built column block by column block, and exact."""

import numpy as np
import pytest
import scipy.sparse as sp

import skvae.train.rows
from skvae.train.rows import DenseRowSource, ShiftedSparseRowSource, make_row_source


def _whole_matrix_choice(X, center):
    """The decision computed on the whole matrix at once: the reference for the blockwise one."""
    shift = np.median(X, axis=0) if center else np.zeros(X.shape[1])
    return np.mean(X != shift) <= skvae.train.rows.SPARSE_DENSITY_LIMIT, shift


@pytest.mark.parametrize("density", [0.05, 0.25, 0.35, 0.9])
@pytest.mark.parametrize("center", [True, False])
def test_blockwise_auto_decision_and_rows_equal_the_whole_matrix_computation(density, center, monkeypatch):
    monkeypatch.setattr(skvae.train.rows, "_BLOCK_ENTRIES", 7 * 11)  # many column blocks of 11 rows' columns
    rng = np.random.RandomState(0)
    X = np.where(rng.uniform(size=(11, 40)) < density, rng.normal(size=(11, 40)), -0.3 if center else 0.0)
    source = make_row_source(X, center=center, dtype=np.float64)
    sparse_expected, shift = _whole_matrix_choice(X, center)
    assert isinstance(source, ShiftedSparseRowSource if sparse_expected else DenseRowSource)
    batch = source.rows(slice(0, 11))
    dense = batch if not sparse_expected else batch.values.to_dense() + batch.shift
    np.testing.assert_allclose(np.asarray(dense), X, rtol=1e-14, atol=1e-15)  # (x - shift) + shift, rounded
    if sparse_expected:
        np.testing.assert_array_equal(batch.shift.numpy(), shift)


def test_uncentred_rows_keep_counts_sparse_with_no_shift():
    X = np.array([[0.0, 5.0, 5.0], [0.0, 5.0, 0.0], [1.0, 5.0, 0.0]])
    source = make_row_source(X, algorithm="sparse", center=False, dtype=np.float64)
    batch = source.rows(slice(0, 3))
    assert not batch.shift.any() and batch.values._nnz() == np.count_nonzero(X)


def test_sparse_input_is_never_centred():
    source = make_row_source(sp.random(5, 4, density=0.5, format="csr", random_state=0), dtype=np.float64)
    assert isinstance(source, ShiftedSparseRowSource) and not source.rows(slice(0, 5)).shift.any()
