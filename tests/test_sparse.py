"""The shifted sparse computations equal the dense ones, values and gradients."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from skvae.nn.layers import InputLinear
from skvae.nn.likelihoods import linear_squared_error, squared_error
from skvae.nn.sparse import ShiftedSparseRows
from skvae.train.rows import make_row_source


@st.composite
def shifted_sparse_problems(draw):
    n_rows, n_features, width = draw(st.integers(1, 12)), draw(st.integers(1, 40)), draw(st.integers(1, 9))
    density = draw(st.floats(0.0, 1.0))
    seed = draw(st.integers(0, 2**16))
    shifted = draw(st.booleans())
    rng = np.random.RandomState(seed)
    values = sp.random(n_rows, n_features, density=density, format="csr", random_state=rng, data_rvs=rng.standard_normal)
    shift = rng.normal(size=n_features) if shifted else np.zeros(n_features)
    return values, shift, width, seed


def as_dense_and_sparse(values, shift):
    sparse = ShiftedSparseRows.from_scipy(values, shift, dtype=np.float64)
    dense = torch.from_numpy(values.toarray() + shift).requires_grad_(False)
    return dense, sparse


@settings(max_examples=60)
@given(shifted_sparse_problems())
def test_input_layer_on_shifted_sparse_rows_equals_dense(problem):
    values, shift, width, seed = problem
    torch.manual_seed(seed)
    layer = InputLinear(values.shape[1], width).double()
    dense, sparse = as_dense_and_sparse(values, shift)
    out_dense = layer(dense)
    grads_dense = torch.autograd.grad(out_dense.square().sum(), list(layer.parameters()))
    out_sparse = layer(sparse)
    grads_sparse = torch.autograd.grad(out_sparse.square().sum(), list(layer.parameters()))
    torch.testing.assert_close(out_sparse, out_dense)
    for g_sparse, g_dense in zip(grads_sparse, grads_dense):
        torch.testing.assert_close(g_sparse, g_dense)


@settings(max_examples=60)
@given(shifted_sparse_problems())
def test_linear_squared_error_on_shifted_sparse_rows_equals_dense(problem):
    values, shift, width, seed = problem
    torch.manual_seed(seed)
    layer = nn.Linear(width, values.shape[1]).double()
    hidden = torch.randn(values.shape[0], width, dtype=torch.float64, requires_grad=True)
    weights = torch.rand(values.shape[0], dtype=torch.float64)  # arbitrary upstream gradient
    dense, sparse = as_dense_and_sparse(values, shift)

    loss_dense = squared_error(layer(hidden), dense)
    grads_dense = torch.autograd.grad(loss_dense @ weights, [hidden, *layer.parameters()])
    loss_sparse = linear_squared_error(layer, hidden, sparse)
    grads_sparse = torch.autograd.grad(loss_sparse @ weights, [hidden, *layer.parameters()])
    torch.testing.assert_close(loss_sparse, loss_dense)
    for g_sparse, g_dense in zip(grads_sparse, grads_dense):
        torch.testing.assert_close(g_sparse, g_dense)


@settings(max_examples=60)
@given(shifted_sparse_problems())
def test_row_sums_and_value_rows_from_scipy_equal_those_of_the_torch_tensors(problem):
    values, shift, _, _ = problem
    rows = ShiftedSparseRows.from_scipy(values, shift, dtype=np.float64)
    crow = rows.values.crow_indices()
    expected_rows = torch.repeat_interleave(torch.arange(values.shape[0]), crow.diff())
    torch.testing.assert_close(rows.value_rows, expected_rows)
    torch.testing.assert_close(rows.row_sums, torch.from_numpy(values.toarray() + shift).sum(dim=1))


def test_autograd_gradcheck_of_the_sparse_functions():
    rng = np.random.RandomState(0)
    values = sp.random(5, 7, density=0.4, format="csr", random_state=rng)
    sparse = ShiftedSparseRows.from_scipy(values, rng.normal(size=7), dtype=np.float64)

    def parameters(*shape):
        return torch.randn(*shape, dtype=torch.float64, requires_grad=True)

    assert torch.autograd.gradcheck(sparse.linear, (parameters(7, 3), parameters(3)))
    assert torch.autograd.gradcheck(sparse.linear_squared_error, (parameters(5, 3), parameters(7, 3), parameters(7)))


def test_row_source_picks_the_representation():
    rng = np.random.RandomState(0)
    mostly_constant = np.where(rng.uniform(size=(50, 20)) < 0.1, rng.normal(size=(50, 20)), -0.5)
    dense = rng.normal(size=(50, 20))
    assert isinstance(make_row_source(sp.csr_matrix(dense)).rows(slice(0, 5)), ShiftedSparseRows)
    assert isinstance(make_row_source(mostly_constant).rows(slice(0, 5)), ShiftedSparseRows)
    assert isinstance(make_row_source(dense).rows(slice(0, 5)), torch.Tensor)
    assert isinstance(make_row_source(mostly_constant, algorithm="dense").rows(slice(0, 5)), torch.Tensor)
    rows = make_row_source(mostly_constant, algorithm="sparse", dtype=np.float64).rows(np.array([3, 1]))
    np.testing.assert_allclose(rows.values.to_dense().numpy() + rows.shift.numpy(), mostly_constant[[3, 1]])


@pytest.mark.parametrize("cls_name", ["AutoencoderEmbedder", "BetaVAEEmbedder", "BetaVSCEmbedder"])
def test_float32_training_on_the_sparse_path_stays_close_to_the_dense_path(cls_name):
    import skvae

    rng = np.random.RandomState(0)
    X = np.where(rng.uniform(size=(200, 60)) < 0.1, rng.gamma(2.0, 1.0, size=(200, 60)), 0.0).astype(np.float32)
    params = dict(n_components=3, hidden_layer_sizes=(16, 8), batch_size=50, max_epochs=5, random_state=0)
    cls = getattr(skvae, cls_name)
    sparse, dense = cls(**params, algorithm="sparse").fit(X), cls(**params, algorithm="dense").fit(X)
    # float32 sums in two orders: close, not equal; the tolerance bounds the drift over 20 steps
    np.testing.assert_allclose(sparse.history_["loss"], dense.history_["loss"], rtol=1e-4)
    np.testing.assert_allclose(sparse.transform(X), dense.transform(X), rtol=1e-3, atol=1e-4)
