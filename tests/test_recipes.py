"""make_count_embedder: the recommended configuration for raw counts, as a scikit-learn estimator."""

import pickle

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.base import clone
from sklearn.manifold import TSNE
from sklearn.pipeline import Pipeline

from skvae import BetaVAEEmbedder, make_count_embedder
from skvae.preprocessing import HighlyVariableGenes
from skvae.recipes import RECOMMENDED_COUNT_SETTINGS

QUICK = dict(n_top_genes=40, max_epochs=3, random_state=0)


@pytest.fixture(scope="module")
def counts():
    rng = np.random.RandomState(0)
    return sp.csr_matrix(rng.poisson(rng.gamma(0.3, 2.0, size=(3, 80))[rng.randint(3, size=120)]).astype(np.float32))


def test_it_is_gene_selection_then_a_negative_binomial_vae():
    pipeline = make_count_embedder()
    assert [name for name, _ in pipeline.steps] == ["genes", "embedder"]
    assert isinstance(pipeline["genes"], HighlyVariableGenes) and pipeline["genes"].n_top_genes == 2000
    assert isinstance(pipeline["embedder"], BetaVAEEmbedder)
    assert {key: pipeline["embedder"].get_params()[key] for key in RECOMMENDED_COUNT_SETTINGS} == RECOMMENDED_COUNT_SETTINGS
    # the budget follows the data size, and the KL weight warms up over its first half
    assert pipeline["embedder"].likelihood == "nb"
    assert pipeline["embedder"].max_epochs == "auto" == pipeline["embedder"].kl_warmup_epochs


def test_overrides_reach_their_step_and_unknown_ones_are_refused():
    pipeline = make_count_embedder(n_top_genes=500, beta=2.0, random_state=3)
    assert pipeline["genes"].n_top_genes == 500
    assert pipeline["embedder"].beta == 2.0 and pipeline["embedder"].random_state == 3
    with pytest.raises(TypeError, match=r"unknown settings \['n_latent'\].*n_components"):
        make_count_embedder(n_latent=10)


def test_it_clones_pickles_and_embeds_raw_counts(counts):
    pipeline = make_count_embedder(**QUICK)
    unfitted = clone(pipeline)
    codes = pipeline.fit_transform(counts)
    assert codes.shape == (120, 10) and np.isfinite(codes).all()
    assert pipeline["genes"].get_support().sum() == 40
    np.testing.assert_array_equal(unfitted.fit_transform(counts), codes)  # a clone refits to the same codes
    restored = pickle.loads(pickle.dumps(pipeline))
    np.testing.assert_array_equal(restored.transform(counts), pipeline.transform(counts))


def test_it_fits_in_a_pipeline_with_tsne(counts):
    pipeline = Pipeline([("embed", make_count_embedder(**QUICK)), ("tsne", TSNE(perplexity=10, random_state=0))])
    assert pipeline.fit_transform(counts.toarray()).shape == (120, 2)


def test_the_recipes_encoder_is_not_linear_in_the_genes(counts):
    """genes -> 128 -> batch norm -> ReLU -> dropout -> the code's heads, as the docstring says (scVI's encoder)."""
    pipeline = make_count_embedder(**QUICK).fit(counts)
    encoder = pipeline["embedder"].module_.encoder
    assert encoder.input_layer.weight.shape == (40, 128)
    assert [type(layer).__name__ for layer in encoder.input_activation] == ["BatchNorm1d", "ReLU", "Dropout"]
    assert encoder.input_activation[2].p == 0.1
    assert all([type(layer).__name__ for layer in branch] == ["Linear"] for branch in encoder.branches.values())
    assert "linearly" not in make_count_embedder.__doc__
