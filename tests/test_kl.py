"""Property tests of the loss terms against closed forms and torch.distributions."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from torch.distributions import Bernoulli, Normal, kl_divergence

from skvae.nn.kl import bernoulli_kl, gaussian_kl, spike_and_slab_kl
from skvae.nn.likelihoods import squared_error

shapes = st.tuples(st.integers(1, 8), st.integers(1, 6))
means = st.floats(-5, 5)
logvars = st.floats(-5, 3)
probabilities = st.floats(1e-4, 1 - 1e-4)


def tensors(shape, elements):
    return arrays(np.float64, shape, elements=elements).map(torch.from_numpy)


@st.composite
def posteriors(draw):
    shape = draw(shapes)
    return draw(tensors(shape, means)), draw(tensors(shape, logvars)), draw(tensors(shape, probabilities))


@given(posteriors())
def test_gaussian_kl_matches_torch_distributions(posterior):
    mu, logvar, _ = posterior
    expected = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0)).sum(-1)
    actual = gaussian_kl(mu, logvar)
    assert actual.shape == (mu.shape[0],)
    torch.testing.assert_close(actual, expected)
    assert (actual >= 0).all()


@given(shapes)
def test_gaussian_kl_is_zero_at_the_prior(shape):
    assert (gaussian_kl(torch.zeros(shape), torch.zeros(shape)) == 0).all()


@given(shapes.flatmap(lambda s: tensors(s, probabilities)), probabilities)
def test_bernoulli_kl_matches_torch_distributions(p, prior_p):
    expected = kl_divergence(Bernoulli(probs=p), Bernoulli(probs=torch.tensor(prior_p, dtype=p.dtype)))
    torch.testing.assert_close(bernoulli_kl(p, prior_p), expected)


def test_bernoulli_kl_handles_certain_outcomes():
    p = torch.tensor([0.0, 1.0, 1.0, 0.0])
    result = bernoulli_kl(p, torch.tensor([0.0, 1.0, 0.5, 0.5]))
    torch.testing.assert_close(result, torch.tensor([0.0, 0.0, np.log(2.0), np.log(2.0)], dtype=torch.float32))


@given(posteriors(), probabilities)
def test_spike_and_slab_kl_is_non_negative(posterior, prior_activity):
    kl = spike_and_slab_kl(*posterior, prior_activity)
    assert kl.shape == (posterior[0].shape[0],)
    assert (kl >= -1e-12).all()


@given(shapes, probabilities)
def test_spike_and_slab_kl_is_zero_when_posterior_equals_prior(shape, prior_activity):
    kl = spike_and_slab_kl(torch.zeros(shape), torch.zeros(shape), torch.full(shape, prior_activity), prior_activity)
    torch.testing.assert_close(kl, torch.zeros(shape[0]), atol=1e-6, rtol=0)


@given(posteriors())
def test_spike_and_slab_kl_reduces_to_gaussian_kl_when_always_active(posterior):
    mu, logvar, _ = posterior
    kl = spike_and_slab_kl(mu, logvar, torch.ones_like(mu), 1.0)
    torch.testing.assert_close(kl, gaussian_kl(mu, logvar))


@given(posteriors(), probabilities)
def test_spike_and_slab_kl_decomposes_into_slab_and_selection(posterior, prior_activity):
    mu, logvar, spike = posterior
    slab = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0))
    selection = kl_divergence(Bernoulli(probs=spike), Bernoulli(probs=torch.tensor(prior_activity, dtype=spike.dtype)))
    torch.testing.assert_close(spike_and_slab_kl(mu, logvar, spike, prior_activity), (spike * slab + selection).sum(-1))


@settings(max_examples=50)
@given(shapes.flatmap(lambda s: st.tuples(tensors(s, means), tensors(s, means))))
def test_squared_error_is_the_per_row_sum_of_squares(pair):
    a, b = pair
    expected = ((a.numpy() - b.numpy()) ** 2).sum(axis=1)
    np.testing.assert_allclose(squared_error(a, b).numpy(), expected)
    assert (squared_error(a, a) == 0).all()


@pytest.mark.parametrize("prior", [1e-300, 0.9999999999])
def test_bernoulli_kl_is_finite_in_float32_for_priors_float32_cannot_hold(prior):
    p = torch.tensor([1e-6, 0.5, 1 - 1e-6], dtype=torch.float32, requires_grad=True)
    kl = bernoulli_kl(p, prior)
    expected = bernoulli_kl(p.detach().double(), prior)
    assert torch.isfinite(kl).all()
    torch.testing.assert_close(kl.double(), expected, rtol=1e-5, atol=1e-5)
    assert torch.isfinite(torch.autograd.grad(kl.sum(), p)[0]).all()


def test_bernoulli_kl_keeps_zero_log_zero_at_a_certain_prior():
    assert bernoulli_kl(torch.tensor([0.0, 1.0]), 0.0).tolist() == [0.0, float("inf")]
    assert bernoulli_kl(torch.tensor([1.0]), 1.0).tolist() == [0.0]
