"""Likelihoods against torch.distributions; sparse rows give the dense result, values and gradients."""

import inspect

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from torch import nn
from torch.distributions import NegativeBinomial as TorchNB
from torch.distributions import Poisson as TorchPoisson

from skvae.nn.layers import DecoderOutputs
from skvae.nn.likelihoods import (
    LIKELIHOODS,
    NORMALIZED_TOTAL,
    CountLikelihood,
    Gaussian,
    NegativeBinomial,
    Poisson,
    ZeroInflatedNegativeBinomial,
    _NegativeBinomialSparseNLL,
    library_size,
)
from skvae.nn.sparse import ShiftedSparseRows

COUNT_LIKELIHOODS = [Poisson, NegativeBinomial, ZeroInflatedNegativeBinomial]
counts = arrays(np.float64, st.integers(1, 30), elements=st.integers(0, 500).map(float))


def entrywise(x, low, high):
    """A float64 tensor of x's shape with entries in [low, high]."""
    return arrays(np.float64, x.shape, elements=st.floats(low, high)).map(torch.from_numpy)


@given(counts.flatmap(lambda x: st.tuples(st.just(torch.from_numpy(x)), entrywise(x, -8.0, 8.0))))
def test_poisson_log_prob_matches_torch_distributions(case):
    x, log_mu = case
    torch.testing.assert_close(Poisson(1).log_prob(x, log_mu=log_mu), TorchPoisson(log_mu.exp()).log_prob(x))


@given(counts.flatmap(lambda x: st.tuples(st.just(torch.from_numpy(x)), entrywise(x, -8.0, 8.0), entrywise(x, -5.0, 5.0))))
def test_negative_binomial_log_prob_matches_torch_distributions(case):
    x, log_mu, log_theta = case
    # torch's NB counts successes with probability p: mean theta p / (1 - p), so logits = log mu - log theta
    expected = TorchNB(total_count=log_theta.exp(), logits=log_mu - log_theta).log_prob(x)
    actual = NegativeBinomial(1).log_prob(x, log_mu=log_mu, log_theta=log_theta)
    torch.testing.assert_close(actual, expected, rtol=1e-6, atol=1e-6)


@given(counts.flatmap(lambda x: st.tuples(
    st.just(torch.from_numpy(x)), entrywise(x, -8.0, 8.0), entrywise(x, -5.0, 5.0), entrywise(x, -6.0, 6.0))))
def test_zero_inflated_negative_binomial_is_the_mixture(case):
    x, log_mu, log_theta, logits = case
    # log(pi [x = 0] + (1 - pi) NB(x)), in log space so that small probabilities do not underflow
    log_nb = TorchNB(total_count=log_theta.exp(), logits=log_mu - log_theta).log_prob(x)
    log_zero_component = F.logsigmoid(logits) + torch.where(x == 0, 0.0, -torch.inf)
    expected = torch.logsumexp(torch.stack([log_zero_component, F.logsigmoid(-logits) + log_nb]), dim=0)
    actual = ZeroInflatedNegativeBinomial(1).log_prob(x, log_mu=log_mu, log_theta=log_theta, dropout_logits=logits)
    torch.testing.assert_close(actual, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("cls", COUNT_LIKELIHOODS)
def test_count_log_probs_sum_to_one_over_the_counts(cls):
    x = torch.arange(3000, dtype=torch.float64)
    params = dict(log_mu=torch.tensor(3.0, dtype=torch.float64), log_theta=torch.tensor(0.5, dtype=torch.float64),
                  dropout_logits=torch.tensor(-1.0, dtype=torch.float64))
    names = [name for name, p in inspect.signature(cls.log_prob).parameters.items() if p.kind is p.KEYWORD_ONLY]
    total = cls(1).log_prob(x, **{name: params[name] for name in names}).exp().sum()
    torch.testing.assert_close(total, torch.tensor(1.0, dtype=torch.float64))


@st.composite
def count_problems(draw):
    """Sparse counts (some rows possibly empty), decoder outputs and per-gene log dispersions."""
    n_rows, n_genes = draw(st.integers(1, 10)), draw(st.integers(1, 25))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.RandomState(seed)
    X = sp.random(n_rows, n_genes, density=draw(st.floats(0.0, 1.0)), format="csr", random_state=rng,
                  data_rvs=lambda size: rng.poisson(5, size) + 1.0)
    return X, seed


def _problem_tensors(cls, n_genes, seed, width=4):
    torch.manual_seed(seed)
    likelihood = cls(n_genes).double()
    with torch.no_grad():
        for parameter in likelihood.parameters():
            parameter.normal_()
    heads = nn.ModuleDict({name: nn.Linear(width, n_genes) for name in cls.heads}).double()
    return likelihood, heads


@settings(max_examples=40)
@pytest.mark.parametrize("cls", COUNT_LIKELIHOODS)
@given(problem=count_problems())
def test_sparse_counts_give_the_dense_likelihood_and_gradients(cls, problem):
    X, seed = problem
    likelihood, heads = _problem_tensors(cls, X.shape[1], seed)
    hidden = torch.randn(X.shape[0], 4, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    parameters = [*heads.parameters(), *likelihood.parameters()]
    results = []
    for rows in (ShiftedSparseRows.from_scipy(X, np.zeros(X.shape[1]), dtype=np.float64), torch.from_numpy(X.toarray())):
        nll = likelihood.negative_log_likelihood(DecoderOutputs(hidden, heads), rows)
        results.append((nll, torch.autograd.grad(nll.sum(), parameters)))
    (sparse, sparse_grads), (dense, dense_grads) = results
    assert sparse.shape == (X.shape[0],)
    torch.testing.assert_close(sparse, dense)
    for a, b in zip(sparse_grads, dense_grads, strict=True):
        torch.testing.assert_close(a, b)


@settings(max_examples=30)
@given(problem=count_problems())
def test_poisson_closed_form_zero_term_equals_the_generic_sum(problem):
    X, seed = problem
    likelihood = Poisson(X.shape[1]).double()
    scale = torch.randn(X.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)).requires_grad_()
    offset = torch.randn(X.shape[0], dtype=torch.float64)
    generic = CountLikelihood.zero_log_prob_sum(likelihood, {"scale": scale}, offset)
    closed_form = likelihood.zero_log_prob_sum({"scale": scale}, offset)
    torch.testing.assert_close(closed_form, generic)
    torch.testing.assert_close(torch.autograd.grad(closed_form.sum(), scale)[0], torch.autograd.grad(generic.sum(), scale)[0])


def _stored(X):
    coo = X.tocoo()
    return [torch.from_numpy(a) for a in (coo.row.astype(np.int64), coo.col.astype(np.int64), coo.data)]


@settings(max_examples=40)
@given(problem=count_problems())
def test_fused_negative_binomial_equals_the_generic_sparse_likelihood(problem):
    X, seed = problem
    likelihood, _ = _problem_tensors(NegativeBinomial, X.shape[1], seed)
    generator = torch.Generator().manual_seed(seed)
    scale = (3 * torch.randn(X.shape, dtype=torch.float64, generator=generator)).requires_grad_()
    log_library = torch.from_numpy(np.log(np.maximum(X.sum(axis=1).A1, 1.0)))
    fused = likelihood.sparse_negative_log_likelihood({"scale": scale}, log_library, *_stored(X))
    generic = CountLikelihood.sparse_negative_log_likelihood(likelihood, {"scale": scale}, log_library, *_stored(X))
    torch.testing.assert_close(fused, generic)
    parameters = [scale, likelihood.log_theta]
    for a, b in zip(torch.autograd.grad(fused.sum(), parameters), torch.autograd.grad(generic.sum(), parameters)):
        torch.testing.assert_close(a, b)


def test_fused_negative_binomial_passes_gradcheck():
    generator = torch.Generator().manual_seed(0)
    X = sp.random(5, 7, density=0.4, format="csr", random_state=0, data_rvs=lambda n: np.arange(1.0, n + 1))
    scale, log_theta = (torch.randn(*shape, dtype=torch.float64, generator=generator).requires_grad_()
                        for shape in ((5, 7), (7,)))
    log_library = torch.from_numpy(np.log(np.maximum(X.sum(axis=1).A1, 1.0)))
    assert torch.autograd.gradcheck(_NegativeBinomialSparseNLL.apply, (scale, log_library, log_theta, *_stored(X)))


@pytest.mark.parametrize("cls", COUNT_LIKELIHOODS)
def test_encoder_input_is_log_normalised_and_stays_sparse(cls):
    X = sp.csr_matrix(np.array([[0.0, 3.0, 1.0], [0.0, 0.0, 0.0], [2.0, 0.0, 2.0]]))
    expected = np.log1p(np.array([[0.0, 0.75, 0.25], [0.0, 0.0, 0.0], [0.5, 0.0, 0.5]]) * NORMALIZED_TOTAL)
    sparse = cls(3).encoder_input(ShiftedSparseRows.from_scipy(X, np.zeros(3), dtype=np.float64))
    assert sparse.values._nnz() == X.nnz
    np.testing.assert_allclose(sparse.values.to_dense().numpy(), expected)
    np.testing.assert_allclose(sparse.values_t.to_dense().numpy(), expected.T)
    np.testing.assert_allclose(cls(3).encoder_input(torch.from_numpy(X.toarray())).numpy(), expected)


def test_sparse_log1p_needs_rows_without_shift():
    rows = ShiftedSparseRows.from_scipy(sp.eye(2, format="csr"), np.ones(2), dtype=np.float64)
    with pytest.raises(ValueError, match="no shift"):
        rows.log1p_scaled(torch.ones(2, dtype=torch.float64))


@pytest.mark.parametrize("cls", COUNT_LIKELIHOODS)
def test_count_mean_is_normalised_expression(cls):
    outputs = {name: torch.randn(4, 6) for name in cls.heads}
    mean = cls(6).mean(outputs)
    assert (mean > 0).all()
    torch.testing.assert_close(mean.sum(dim=1), torch.full((4,), NORMALIZED_TOTAL))


def test_library_size_of_dense_and_sparse_rows():
    X = sp.random(5, 8, density=0.5, format="csr", random_state=0)
    sparse = library_size(ShiftedSparseRows.from_scipy(X, np.zeros(8), dtype=np.float64))
    np.testing.assert_allclose(sparse.numpy(), X.sum(axis=1).A1)
    np.testing.assert_allclose(library_size(torch.from_numpy(X.toarray())).numpy(), X.sum(axis=1).A1)


def test_registry_names_every_likelihood_once():
    assert LIKELIHOODS == {"gaussian": Gaussian, "poisson": Poisson, "nb": NegativeBinomial,
                           "zinb": ZeroInflatedNegativeBinomial}
    assert [cls.counts for cls in LIKELIHOODS.values()] == [False, True, True, True]


@settings(max_examples=30)
@pytest.mark.parametrize("cls", [NegativeBinomial, ZeroInflatedNegativeBinomial])
@given(problem=count_problems(), n_batches=st.integers(1, 3))
def test_a_dispersion_per_batch_is_each_rows_batchs_per_gene_dispersion(cls, problem, n_batches):
    X, seed = problem
    torch.manual_seed(seed)
    likelihood = cls(X.shape[1], n_batches).double()
    with torch.no_grad():
        likelihood.log_theta.normal_()
    heads = nn.ModuleDict({name: nn.Linear(4, X.shape[1]) for name in cls.heads}).double()
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(X.shape[0], 4, dtype=torch.float64, generator=generator)
    batch = torch.randint(n_batches, (X.shape[0],), generator=generator)
    # the dispersion follows the first covariate; a second one is read by the decoder only
    covariates = torch.stack([batch, torch.zeros_like(batch)], dim=1)
    dense = torch.from_numpy(X.toarray())
    nll = likelihood.negative_log_likelihood(DecoderOutputs(hidden, heads, covariates), dense)
    sparse_rows = ShiftedSparseRows.from_scipy(X, np.zeros(X.shape[1]), dtype=np.float64)
    torch.testing.assert_close(likelihood.negative_log_likelihood(DecoderOutputs(hidden, heads, covariates), sparse_rows), nll)
    per_gene = cls(X.shape[1]).double()
    for b in range(n_batches):
        rows = batch == b
        with torch.no_grad():
            per_gene.log_theta.copy_(likelihood.log_theta[b])
        expected = per_gene.negative_log_likelihood(DecoderOutputs(hidden[rows], heads), dense[rows])
        torch.testing.assert_close(nll[rows], expected)
    with pytest.raises(ValueError, match="covariates"):
        likelihood.negative_log_likelihood(DecoderOutputs(hidden, heads), dense)
