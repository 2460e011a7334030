"""The estimators with count likelihoods: raw counts in, clear errors, sparse = dense, real data."""

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from sklearn.base import clone

from skvae import AutoencoderEmbedder, BetaVAEEmbedder, BetaVSCEmbedder, PosteriorCollapseWarning
from skvae.nn.likelihoods import NORMALIZED_TOTAL

ESTIMATORS = [AutoencoderEmbedder, BetaVAEEmbedder, BetaVSCEmbedder]
COUNT_LIKELIHOODS = ["poisson", "nb", "zinb"]
SMALL = dict(n_components=3, hidden_layer_sizes=(32, 16, 8), batch_size=32, max_epochs=10, random_state=0)


def make_counts(n_samples=120, n_features=40, seed=0):
    """Raw counts of three groups of cells with different library sizes."""
    rng = np.random.RandomState(seed)
    groups = rng.randint(3, size=n_samples)
    rates = rng.gamma(0.5, 2.0, size=(3, n_features))[groups] * rng.uniform(0.5, 2.0, size=(n_samples, 1))
    return rng.poisson(rates).astype(np.float64), groups


@pytest.fixture(scope="module")
def counts():
    return make_counts()[0]


@pytest.fixture(scope="module", params=[(cls, lik) for cls in ESTIMATORS for lik in COUNT_LIKELIHOODS],
                ids=lambda p: f"{p[0].__name__}-{p[1]}")
def fitted(request, counts):
    cls, likelihood = request.param
    return cls(**SMALL, likelihood=likelihood).fit(sp.csr_matrix(counts))


@pytest.mark.filterwarnings("ignore::skvae.PosteriorCollapseWarning")  # tiny fits: nothing to encode
def test_count_models_train_on_sparse_counts(fitted, counts):
    assert fitted.history_["loss"][-1] < fitted.history_["loss"][0]
    assert fitted.transform(counts).shape == (counts.shape[0], SMALL["n_components"])


def test_sparse_and_dense_counts_give_the_same_codes_and_score(fitted, counts):
    np.testing.assert_allclose(fitted.transform(sp.csr_matrix(counts)), fitted.transform(counts), rtol=1e-9, atol=1e-9)
    assert fitted.score(sp.csr_matrix(counts)) == pytest.approx(fitted.score(counts), rel=1e-5)


@pytest.mark.filterwarnings("ignore::skvae.PosteriorCollapseWarning")  # tiny fits: nothing to encode
@pytest.mark.parametrize("likelihood", COUNT_LIKELIHOODS)
def test_training_on_sparse_counts_equals_training_on_dense(likelihood, counts):
    params = dict(SMALL, likelihood=likelihood, max_epochs=3)
    sparse = BetaVAEEmbedder(**params).fit(sp.csr_matrix(counts)).transform(counts)
    dense = BetaVAEEmbedder(**params, algorithm="dense").fit(counts).transform(counts)
    np.testing.assert_allclose(sparse, dense, rtol=1e-3, atol=1e-4)  # float32 training, two summation orders


def test_inverse_transform_and_sample_give_normalised_expression(fitted, counts):
    decoded = fitted.inverse_transform(fitted.transform(counts))
    assert decoded.shape == counts.shape and (decoded >= 0).all()
    np.testing.assert_allclose(decoded.sum(axis=1), NORMALIZED_TOTAL, rtol=1e-6)
    if hasattr(fitted, "sample"):
        np.testing.assert_allclose(fitted.sample(4, random_state=0).sum(axis=1), NORMALIZED_TOTAL, rtol=1e-4)


@pytest.mark.filterwarnings("ignore::skvae.PosteriorCollapseWarning")  # tiny fits: nothing to encode
def test_score_is_the_negative_evidence_bound_with_beta_one(counts):
    embedder = BetaVAEEmbedder(**SMALL, likelihood="nb", beta=3.0).fit(counts)
    rows = torch.from_numpy(counts).float()
    with torch.no_grad():
        terms = embedder.module_.loss(rows, deterministic=True)
    expected = -(terms.reconstruction + terms.kl).mean().item()
    assert embedder.score(counts.astype(np.float32)) == pytest.approx(expected, rel=1e-5)


@pytest.mark.filterwarnings("ignore::skvae.PosteriorCollapseWarning")  # tiny fits: nothing to encode
def test_same_random_state_same_count_embedding(counts):
    first = BetaVSCEmbedder(**SMALL, likelihood="zinb").fit_transform(counts)
    np.testing.assert_array_equal(first, BetaVSCEmbedder(**SMALL, likelihood="zinb").fit_transform(counts))


@pytest.mark.parametrize("likelihood", COUNT_LIKELIHOODS)
def test_negative_counts_are_refused_by_fit_and_transform(likelihood, counts):
    bad = counts.copy()
    bad[3, 5] = -1.0
    with pytest.raises(ValueError, match=f"Negative values in data passed to .*likelihood='{likelihood}'.*raw counts"):
        AutoencoderEmbedder(**SMALL, likelihood=likelihood).fit(bad)
    fitted = AutoencoderEmbedder(**SMALL, likelihood=likelihood).fit(counts)
    with pytest.raises(ValueError, match="Negative values"):
        fitted.transform(sp.csr_matrix(bad))


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_counts_are_refused(value, counts):
    bad = counts.copy()
    bad[0, 0] = value
    with pytest.raises(ValueError, match="NaN|infinity"):
        BetaVAEEmbedder(**SMALL, likelihood="nb").fit(bad)


@pytest.mark.filterwarnings("ignore::skvae.PosteriorCollapseWarning")  # tiny fits: nothing to encode
def test_non_integer_counts_warn_naming_the_likely_cause(counts):
    normalised = np.log1p(counts / counts.sum(axis=1, keepdims=True) * 1e4)
    with pytest.warns(UserWarning, match="non-integer values.*likelihood='nb'.*LogNormalizer"):
        BetaVAEEmbedder(**SMALL, likelihood="nb").fit(normalised)


def test_integer_counts_and_gaussian_models_do_not_warn(counts):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.simplefilter("ignore", PosteriorCollapseWarning)  # a few epochs on toy data: not what is tested
        BetaVAEEmbedder(**SMALL, likelihood="nb").fit(counts)
        BetaVAEEmbedder(**SMALL).fit(np.log1p(counts) / 3.0)


@pytest.mark.filterwarnings("ignore::skvae.PosteriorCollapseWarning")  # tiny fits: nothing to encode
def test_cells_without_counts_embed_without_nan(counts):
    with_empty = counts.copy()
    with_empty[:4] = 0.0
    embedder = BetaVAEEmbedder(**SMALL, likelihood="nb").fit(sp.csr_matrix(with_empty))
    assert np.isfinite(embedder.transform(with_empty)).all()


def test_unknown_likelihood_is_refused(counts):
    with pytest.raises(ValueError, match="likelihood"):
        BetaVAEEmbedder(likelihood="gamma").fit(counts)


def test_positive_only_tag_follows_the_likelihood():
    assert BetaVAEEmbedder(likelihood="nb").__sklearn_tags__().input_tags.positive_only
    assert not BetaVAEEmbedder().__sklearn_tags__().input_tags.positive_only


def test_count_model_clones_saves_and_loads(fitted, counts, tmp_path):
    assert clone(fitted).likelihood == fitted.likelihood
    path = tmp_path / "model.pt"
    fitted.save(path)
    loaded = type(fitted).load(path)
    np.testing.assert_array_equal(loaded.transform(counts), fitted.transform(counts))
    assert loaded.likelihood == fitted.likelihood


def test_saves_from_before_the_decoder_heads_still_load(counts, tmp_path):
    embedder = AutoencoderEmbedder(**SMALL).fit(np.log1p(counts))
    path = tmp_path / "old.pt"
    embedder.save(path)
    state = torch.load(path, weights_only=True)
    state["state_dict"] = {k.replace("decoder.heads.mean.", "decoder.output."): v for k, v in state["state_dict"].items()}
    state["params"].pop("likelihood")
    state.pop("checksum")  # saves that old had no checksum either
    state["format"] = "skvae-estimator-v1"
    torch.save(state, path)
    np.testing.assert_array_equal(AutoencoderEmbedder.load(path).transform(np.log1p(counts)),
                                  embedder.transform(np.log1p(counts)))


@pytest.mark.slow
@pytest.mark.parametrize("likelihood", ["nb", "zinb"])
def test_count_model_embeds_pbmc3k_cell_types(likelihood):
    from skvae.datasets import fetch_pbmc3k
    from skvae.preprocessing import HighlyVariableGenes
    from skvae.study.evaluation import latent_scores

    pbmc = fetch_pbmc3k()
    counts = HighlyVariableGenes(n_top_genes=2000).fit_transform(pbmc.data)
    codes = BetaVAEEmbedder(n_components=10, likelihood=likelihood, max_epochs=40, random_state=0).fit_transform(counts)
    assert np.isfinite(codes).all()
    # the majority class is 27 % of the cells; 40 epochs at the seed settings reach 0.74-0.79 (PCA: 0.90)
    assert latent_scores(codes, pbmc.target)["kNN accuracy"] > 0.7


@pytest.mark.parametrize("value", [1e38, 3e9])
def test_counts_beyond_any_umi_count_are_refused_up_front(value, counts):
    X = np.asarray(counts, dtype=np.float64).copy()
    X[0, 0] = value
    with pytest.raises(ValueError, match="UMI counts of one gene in one cell stay far below"):
        BetaVAEEmbedder(likelihood="nb", max_epochs=1).fit(X)
