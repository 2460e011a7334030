"""batch_model="genes": a factor per gene and batch, the encoder reading counts divided by it."""

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from skvae import BetaVAEEmbedder, BetaVSCEmbedder, make_count_embedder
from skvae.nn.likelihoods import make_likelihood
from skvae.nn.models import VariationalAutoencoder
from skvae.nn.sparse import ShiftedSparseRows


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 12), st.integers(1, 10), st.floats(0.0, 0.9), st.integers(0, 10_000))
def test_scaled_sparse_rows_equal_the_dense_product(n_rows, n_features, density, seed):
    rng = np.random.RandomState(seed)
    block = sp.random(n_rows, n_features, density=density, format="csr", random_state=rng) * 10
    factor = torch.from_numpy(rng.lognormal(size=(n_rows, n_features)))
    rows = ShiftedSparseRows.from_scipy(block, np.zeros(n_features), dtype=np.float64).scaled(factor)
    expected = block.toarray() * factor.numpy()
    np.testing.assert_allclose(rows.values.to_dense().numpy(), expected)
    np.testing.assert_allclose(rows.values_t.to_dense().numpy(), expected.T)
    np.testing.assert_allclose(rows.row_sums.numpy(), expected.sum(axis=1))
    with pytest.raises(ValueError, match="no shift"):
        ShiftedSparseRows.from_scipy(block, np.ones(n_features), dtype=np.float64).scaled(factor)


def _module(n_features=30):
    torch.manual_seed(0)
    return VariationalAutoencoder(n_features, 3, (16,), likelihood=make_likelihood("nb", n_features),
                                  n_categories=(2,), gene_factors=True)


def test_the_factors_multiply_the_decoded_expression_and_divide_the_encoders_counts():
    module = _module().eval()
    assert not hasattr(module.decoder, "covariate_offsets")  # the hidden layers never see the batch
    assert module.encode_batch and not hasattr(module.encoder, "covariate_offsets")
    log_factor = torch.randn(30)
    with torch.no_grad():
        module.gene_offsets.weight[1] = log_factor
    zeros, ones = torch.zeros(5, 1, dtype=torch.long), torch.ones(5, 1, dtype=torch.long)
    z = torch.randn(5, 3)
    scale = module.decoder(z)["scale"]
    torch.testing.assert_close(module.decode(z, ones), torch.softmax(scale + log_factor, dim=1) * 1e4)
    torch.testing.assert_close(module.decode(z, zeros), torch.softmax(scale, dim=1) * 1e4)
    x = torch.poisson(torch.rand(5, 30) * 5)
    # a batch-1 cell is encoded as the batch-0 cell of its counts divided by the factors
    torch.testing.assert_close(module.embed(x, ones), module.embed(x / log_factor.exp(), zeros))
    with pytest.raises(ValueError, match="count likelihood"):
        VariationalAutoencoder(30, 3, (16,), n_categories=(2,), gene_factors=True)


def _cells(n=1200, n_genes=80, seed=0, strength=0.6):
    """Counts of 3 types in 2 batches, batch b with a per-gene effect exp(N(0, strength)); its true log effect."""
    rng = np.random.RandomState(seed)
    types, batch = rng.randint(3, size=n), rng.randint(2, size=n)
    profiles = rng.gamma(0.5, 2.0, size=(3, n_genes)) + 0.05
    log_effect = rng.normal(0.0, strength, size=n_genes)
    counts = rng.poisson(profiles[types] * np.exp(log_effect * batch[:, None]) * 5).astype(np.float32)
    return counts, np.array(["a", "b"], dtype=object)[batch], log_effect


def _fit(counts, batch, **params):
    model = BetaVAEEmbedder(**{"likelihood": "nb", "n_components": 4, "hidden_layer_sizes": (32,), "max_epochs": 40,
                               "random_state": 0, "batch_model": "genes", **params})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model.fit(counts, batch=batch)


def test_the_learned_factors_find_the_batches_per_gene_effect():
    counts, batch, log_effect = _cells()
    learned = _fit(counts, batch).module_.gene_offsets.weight.detach().numpy()
    # the softmax leaves a common shift free: compare the centred log ratios of b over a
    ratio = learned[1] - learned[0]
    assert np.corrcoef(ratio - ratio.mean(), log_effect - log_effect.mean())[0, 1] > 0.8


def test_transform_needs_the_batch_and_sparse_input_embeds_as_dense():
    counts, batch, _ = _cells(n=400)
    model = _fit(counts, batch, max_epochs=3)
    with pytest.raises(ValueError, match="batch="):
        model.transform(counts)
    np.testing.assert_allclose(model.transform(sp.csr_matrix(counts), batch=batch), model.transform(counts, batch=batch),
                               atol=1e-5)


def test_refusals_name_the_parameter_and_leave_the_estimator_as_it_was():
    counts, batch, _ = _cells(n=300)
    model = BetaVAEEmbedder(batch_model="genes", max_epochs=1)
    with pytest.raises(ValueError, match="batch_model='genes'.*gaussian"):
        model.fit(np.log1p(counts), batch=batch)
    assert not hasattr(model, "module_")
    with pytest.raises(ValueError, match="batch_model"):
        BetaVAEEmbedder(batch_model="cells").fit(counts)
    # without batches there is nothing to factor: the network is the plain one
    plain = _fit(counts, None, max_epochs=1)
    assert not plain.module_.gene_factors and not hasattr(plain.module_, "gene_offsets")
    # a fitted network cannot change how it takes batches
    fitted = _fit(counts, batch, max_epochs=1).set_params(batch_model="layers")
    with pytest.raises(ValueError, match="batch_model"):
        fitted.partial_fit(counts, batch=batch)


def test_save_load_and_map_query_keep_the_references_factors(tmp_path):
    counts, batch, _ = _cells(n=600)
    query = np.where(np.arange(600) % 3 == 0, "query", batch).astype(object)
    reference = query != "query"
    model = BetaVSCEmbedder(likelihood="nb", n_components=4, hidden_layer_sizes=(32,), max_epochs=5, random_state=0,
                            batch_model="genes", batch_adversary=0.3).fit(counts[reference], batch=query[reference])
    codes = model.transform(counts[reference], batch=query[reference])
    model.save(tmp_path / "reference.pt")
    loaded = BetaVSCEmbedder.load(tmp_path / "reference.pt")
    assert loaded.batch_model == "genes"
    np.testing.assert_array_equal(loaded.transform(counts[reference], batch=query[reference]), codes)
    known = loaded.module_.gene_offsets.weight.detach().clone()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded.map_query(counts[~reference], batch=query[~reference], max_epochs=5)
    grown = loaded.module_.gene_offsets.weight.detach()
    assert grown.shape == (3, counts.shape[1])
    np.testing.assert_array_equal(grown[:2].numpy(), known.numpy())
    assert not torch.equal(grown[2], known.mean(dim=0))  # the query's factors were learned
    np.testing.assert_array_equal(loaded.transform(counts[reference], batch=query[reference]), codes)


def test_the_recipe_takes_it():
    counts, batch, _ = _cells(n=300)
    recipe = make_count_embedder(batch_model="genes", max_epochs=2, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        codes = recipe.fit(counts, batch=batch).transform(counts, batch=batch)
    assert codes.shape == (300, 10) and recipe["embedder"].module_.gene_factors


def test_the_memory_check_counts_a_factor_per_gene_and_category():
    from skvae._validation import _physical_memory, check_network_fits_memory

    memory = _physical_memory()
    if memory is None:
        pytest.skip("this system does not say how much memory it has")
    n_features, n_batches = 30_000, int(memory / (16 * 30_000)) + 1  # the factors alone exceed it
    check_network_fits_memory(n_features, (16,), likelihood="nb", n_categories=(n_batches,))
    with pytest.raises(ValueError, match="GiB"):
        check_network_fits_memory(n_features, (16,), likelihood="nb", n_categories=(n_batches,), gene_factors=True)
