"""Batches (integration): the decoder conditioned on each cell's batch, on every data path, with clear errors."""

import anndata
import numpy as np
import pytest
import scipy.sparse as sp
import sklearn
import torch
from sklearn.model_selection import GridSearchCV
from sklearn.neighbors import NearestNeighbors
from sklearn.pipeline import Pipeline

import skvae
from skvae import AutoencoderEmbedder, BetaVAEEmbedder, BetaVSCEmbedder
from skvae.nn.models import LossWeights
from skvae.preprocessing import HighlyVariableGenes

SMALL = dict(n_components=3, hidden_layer_sizes=(16, 8), batch_size=32, max_epochs=3, random_state=0, likelihood="nb")


def _two_batches(n=600, n_genes=120, effect_sd=0.5, seed=0):
    """Counts of 3 cell types measured in 2 batches with a per-gene multiplicative batch effect."""
    rng = np.random.RandomState(seed)
    profiles = rng.gamma(0.5, 2.0, size=(3, n_genes))
    types, batch = rng.randint(3, size=n), rng.randint(2, size=n)
    effect = np.exp(rng.normal(0, effect_sd, size=(2, n_genes)))
    return rng.poisson(profiles[types] * effect[batch] * 3).astype(float), types, np.array(["a", "b"])[batch]


@pytest.fixture(scope="module")
def data():
    return _two_batches()


def _same_label_share(Z, labels, k=15):
    neighbours = NearestNeighbors(n_neighbors=k + 1).fit(Z).kneighbors(Z, return_distance=False)[:, 1:]
    return (labels[neighbours] == labels[:, None]).mean()


@pytest.mark.filterwarnings("ignore::skvae.PosteriorCollapseWarning")
def test_a_batch_aware_model_mixes_batches_an_uncorrected_one_keeps_apart(data):
    X, types, batch = _two_batches(n=1500, n_genes=200)
    params = dict(n_components=8, hidden_layer_sizes=(64, 32), likelihood="nb", batch_norm=True, max_epochs=100,
                  random_state=0)
    uncorrected = BetaVAEEmbedder(**params).fit_transform(X)
    integrated = BetaVAEEmbedder(**params).fit_transform(X, batch=batch)
    # 15 nearest neighbours from the same batch: 0.5 is perfect mixing of two equal batches
    assert _same_label_share(uncorrected, batch) > 0.97
    assert _same_label_share(integrated, batch) < 0.94
    assert _same_label_share(integrated, types) > 0.97  # cell types stay apart


@pytest.mark.parametrize("cls", [AutoencoderEmbedder, BetaVAEEmbedder, BetaVSCEmbedder])
@pytest.mark.parametrize("likelihood", ["gaussian", "poisson", "nb", "zinb"])
def test_every_model_and_likelihood_trains_with_batches(cls, likelihood, data):
    X, _, batch = data
    X = X if likelihood != "gaussian" else np.log1p(X)
    estimator = cls(**{**SMALL, "likelihood": likelihood}).fit(X, batch=batch)
    assert estimator.batch_categories_.tolist() == ["a", "b"]
    assert estimator.transform(X).shape == (len(X), 3)
    assert estimator.inverse_transform(estimator.transform(X[:4]), batch="a").shape == (4, X.shape[1])
    assert np.isfinite(estimator.score(X, batch=batch))


def test_no_batch_is_the_model_without_batches(data):
    X, _, _ = data
    np.testing.assert_array_equal(BetaVAEEmbedder(**SMALL).fit_transform(X),
                                  BetaVAEEmbedder(**SMALL).fit(X, batch=None).transform(X))
    assert BetaVAEEmbedder(**SMALL).fit(X).batch_categories_ is None


def test_decoding_as_another_batch_changes_the_expression_and_one_label_serves_all(data):
    X, _, batch = data
    estimator = BetaVAEEmbedder(**{**SMALL, "max_epochs": 20}).fit(X, batch=batch)
    codes = estimator.transform(X[:5])
    as_a, as_b = estimator.inverse_transform(codes, batch="a"), estimator.inverse_transform(codes, batch="b")
    assert not np.allclose(as_a, as_b)
    np.testing.assert_array_equal(as_a, estimator.inverse_transform(codes, batch=["a"] * 5))
    assert estimator.sample(4, batch="b", random_state=0).shape == (4, X.shape[1])


def test_labels_can_be_integers_or_a_pandas_categorical(data):
    import pandas as pd

    X, _, batch = data
    by_strings = BetaVAEEmbedder(**SMALL).fit(X, batch=batch).transform(X)
    categorical = pd.Categorical(batch)
    np.testing.assert_array_equal(by_strings, BetaVAEEmbedder(**SMALL).fit(X, batch=categorical).transform(X))
    integers = BetaVAEEmbedder(**SMALL).fit(X, batch=(batch == "b").astype(int))
    assert integers.batch_categories_.tolist() == [0, 1]
    np.testing.assert_array_equal(by_strings, integers.transform(X))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda e, X, b: e.fit(X, batch=b[:-1]), "batch has 599 labels for 600 cells"),
        (lambda e, X, b: e.fit(X, batch=np.where(np.arange(len(b)) == 3, None, b)), "1 missing labels.*cell 3"),
        (lambda e, X, b: e.fit(X, batch=np.where(np.arange(len(b)) == 3, np.nan, b.astype(object))), "missing"),
        (lambda e, X, b: e.fit(X, batch=np.stack([b, b], axis=1)), "1-D"),
    ],
)
def test_bad_batches_for_fit_are_clear_errors(call, message, data):
    X, _, batch = data
    estimator = BetaVAEEmbedder(**SMALL)
    with pytest.raises(ValueError, match=message):
        call(estimator, X, batch)
    assert not hasattr(estimator, "module_")


def test_unseen_missing_and_unexpected_batches_are_clear_errors(data):
    X, _, batch = data
    fitted = BetaVAEEmbedder(**SMALL).fit(X, batch=batch)
    codes = fitted.transform(X[:3])
    with pytest.raises(ValueError, match="categories not seen in fit: 'c'"):
        fitted.score(X[:3], batch=["a", "c", "a"])
    with pytest.raises(ValueError, match="categories not seen in fit: 'z'"):
        fitted.inverse_transform(codes, batch="z")
    with pytest.raises(ValueError, match="not seen in fit"):
        fitted.sample(2, batch="z")
    with pytest.raises(ValueError, match=r"fitted with batches \(2: 'a', 'b'\): pass each cell's batch"):
        fitted.inverse_transform(codes)
    with pytest.raises(ValueError, match="fitted with batches"):
        fitted.score(X)
    plain = BetaVAEEmbedder(**SMALL).fit(X)
    with pytest.raises(ValueError, match="fitted without batches"):
        plain.score(X, batch=batch)
    with pytest.raises(ValueError, match="fitted without batches"):
        plain.inverse_transform(codes, batch="a")


def test_cells_of_a_new_batch_embed_without_retraining_unless_the_encoder_reads_batches(data):
    X, _, batch = data
    decoder_only = BetaVAEEmbedder(**SMALL).fit(X, batch=batch)
    np.testing.assert_array_equal(decoder_only.transform(X[:5]), decoder_only.transform(X[:5], batch=["new"] * 5))
    both = BetaVAEEmbedder(**SMALL, encode_batch=True).fit(X, batch=batch)
    with pytest.raises(ValueError, match="pass each cell's batch"):
        both.transform(X[:5])
    with pytest.raises(ValueError, match="not seen in fit: 'new'"):
        both.transform(X[:5], batch=["new"] * 5)
    as_a, as_b = both.transform(X[:5], batch=["a"] * 5), both.transform(X[:5], batch=["b"] * 5)
    assert not np.array_equal(as_a, as_b)
    np.testing.assert_array_equal(both.fit_transform(X, batch=batch)[:5], both.transform(X[:5], batch=batch[:5]))


def test_save_and_load_keep_the_batches(data, tmp_path):
    X, _, batch = data
    fitted = BetaVSCEmbedder(**SMALL, encode_batch=True, batch_adversary=1.0).fit(X, batch=batch)
    fitted.save(tmp_path / "model.pt")
    loaded = BetaVSCEmbedder.load(tmp_path / "model.pt")
    assert loaded.batch_categories_.tolist() == ["a", "b"]
    np.testing.assert_array_equal(loaded.transform(X, batch=batch), fitted.transform(X, batch=batch))
    codes = fitted.transform(X[:4], batch=batch[:4])
    np.testing.assert_array_equal(loaded.inverse_transform(codes, batch="b"), fitted.inverse_transform(codes, batch="b"))
    plain = BetaVAEEmbedder(**SMALL).fit(X)
    plain.save(tmp_path / "plain.pt")
    assert BetaVAEEmbedder.load(tmp_path / "plain.pt").batch_categories_ is None


@pytest.mark.filterwarnings("ignore::skvae.PosteriorCollapseWarning")
def test_a_dispersion_per_gene_and_batch_learns_each_batchs_noise():
    # batch "a" Poisson (theta -> infinity), batch "b" negative binomial with theta 1: same means
    rng = np.random.RandomState(0)
    n, n_genes = 800, 40
    types, batch = rng.randint(2, size=n), rng.randint(2, size=n)
    mean = rng.gamma(2.0, 2.0, size=(2, n_genes))[types]
    X = np.where(batch[:, None] == 0, rng.poisson(mean), rng.poisson(rng.gamma(1.0, mean))).astype(float)
    params = dict(SMALL, max_epochs=40, dispersion="gene-batch")
    fitted = BetaVAEEmbedder(**params).fit(sp.csr_matrix(X), batch=np.array(["a", "b"])[batch])
    log_theta = fitted.module_.likelihood.log_theta.detach().numpy()
    assert log_theta.shape == (2, n_genes)
    assert np.median(log_theta[0] - log_theta[1]) > 0.5  # the Poisson batch is the less dispersed
    per_gene = BetaVAEEmbedder(**{**params, "dispersion": "gene"}).fit(X, batch=np.array(["a", "b"])[batch])
    assert per_gene.module_.likelihood.log_theta.shape == (n_genes,)
    # without batches there is one dispersion per gene either way
    assert BetaVAEEmbedder(**params).fit(X).module_.likelihood.log_theta.shape == (n_genes,)


@pytest.mark.filterwarnings("ignore::skvae.PosteriorCollapseWarning")
def test_an_adversarial_batch_classifier_mixes_the_batches_further():
    # a batch effect that conditioning the decoder mixes in part (the adversary aligns shared neighbourhoods only)
    X, types, batch = _two_batches(n=1500, n_genes=200, effect_sd=0.3)
    params = dict(n_components=8, hidden_layer_sizes=(64,), input_activation=True, likelihood="nb", batch_norm=True,
                  max_epochs=60, random_state=0)
    conditioned = BetaVAEEmbedder(**params).fit_transform(X, batch=batch)
    adversarial = BetaVAEEmbedder(**params, batch_adversary=0.3).fit_transform(X, batch=batch)
    assert _same_label_share(adversarial, batch) < _same_label_share(conditioned, batch) - 0.05
    assert _same_label_share(adversarial, types) > 0.97


def test_the_adversary_trains_only_with_batches_and_leaves_the_score_alone(data):
    X, _, batch = data
    fitted = BetaVSCEmbedder(**SMALL, batch_adversary=1.0).fit(X, batch=batch)
    module = fitted.module_
    assert isinstance(module.adversary, torch.nn.Module)
    x, codes = torch.as_tensor(X[:8], dtype=torch.float32), torch.as_tensor([[0], [1]] * 4)
    # training gives the adversary its weight with each step (the estimator's batch_adversary)
    assert module.loss(x, codes, weights=LossWeights(adversary=1.0)).adversarial.shape == (8,)
    assert module.loss(x, codes).adversarial is None  # score and the validation loss are the ELBO alone
    # the same estimator without batches, or with one, has nothing to tell apart
    assert not hasattr(BetaVSCEmbedder(**SMALL, batch_adversary=1.0).fit(X).module_, "adversary")
    assert not hasattr(BetaVSCEmbedder(**SMALL, batch_adversary=1.0).fit(X, batch=["a"] * len(X)).module_, "adversary")
    with pytest.raises(ValueError, match="batch_adversary"):
        BetaVAEEmbedder(batch_adversary=-1.0).fit(X)


def test_a_dispersion_per_gene_and_batch_is_saved_and_fixed_once_built(data, tmp_path):
    X, _, batch = data
    fitted = BetaVAEEmbedder(**SMALL, dispersion="gene-batch").fit(X, batch=batch)
    fitted.save(tmp_path / "model.pt")
    loaded = BetaVAEEmbedder.load(tmp_path / "model.pt")
    assert loaded.dispersion == "gene-batch"
    assert loaded.score(X, batch=batch) == fitted.score(X, batch=batch)
    with pytest.raises(ValueError, match="dispersion='gene'"):
        fitted.set_params(dispersion="gene").partial_fit(X, batch=batch)
    with pytest.raises(ValueError, match="dispersion"):
        BetaVAEEmbedder(dispersion="gene batch").fit(X)


def test_batch_labels_that_cannot_be_saved_are_refused_at_save_time(data, tmp_path):
    X, _, batch = data
    import datetime

    fitted = BetaVAEEmbedder(**SMALL).fit(X, batch=[datetime.date(2020, 1, 1 + (label == "b")) for label in batch])
    with pytest.raises(ValueError, match="cannot be saved"):
        fitted.save(tmp_path / "model.pt")
    assert not (tmp_path / "model.pt").exists()


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")  # a few epochs on purpose
def test_a_backed_file_with_batches_trains_as_in_memory(data, tmp_path):
    X, _, batch = data
    anndata.AnnData(sp.csr_matrix(X)).write_h5ad(tmp_path / "cells.h5ad")
    backed = anndata.read_h5ad(tmp_path / "cells.h5ad", backed="r").X
    params = {**SMALL, "early_stopping": True, "n_iter_no_change": 1, "shuffle_block_size": 16}
    from_disk = BetaVAEEmbedder(**params).fit(backed, batch=batch)
    in_memory = BetaVAEEmbedder(**params).fit(sp.csr_matrix(X), batch=batch)
    np.testing.assert_array_equal(from_disk.transform(X), in_memory.transform(X))


def test_partial_fit_with_batches_gives_the_model_of_fit(data):
    X, _, batch = data
    streamed = BetaVAEEmbedder(**SMALL)
    for _ in range(3):
        streamed.partial_fit(X, batch=batch)
    np.testing.assert_array_equal(streamed.transform(X), BetaVAEEmbedder(**SMALL).fit(X, batch=batch).transform(X))
    with pytest.raises(ValueError, match="not seen in fit: 'c'"):
        streamed.partial_fit(X[:2], batch=["a", "c"])


def test_a_pipeline_passes_the_batch_to_its_embedder_with_and_without_metadata_routing(data):
    X, _, batch = data
    expected = BetaVAEEmbedder(**SMALL).fit(X, batch=batch).transform(X)
    pipeline = Pipeline([("embedder", BetaVAEEmbedder(**SMALL))]).fit(X, embedder__batch=batch)
    np.testing.assert_array_equal(pipeline.transform(X), expected)
    recipe = skvae.make_count_embedder(n_top_genes=50, max_epochs=2, random_state=0)
    assert recipe.fit(X, embedder__batch=batch)[-1].batch_categories_.tolist() == ["a", "b"]
    with sklearn.config_context(enable_metadata_routing=True):
        embedder = BetaVAEEmbedder(**SMALL).set_fit_request(batch=True).set_score_request(batch=True)
        search = GridSearchCV(embedder, {"beta": [0.5, 2.0]}, cv=2, error_score="raise").fit(X, batch=batch)
        assert search.best_estimator_.batch_categories_.tolist() == ["a", "b"]
        assert np.isfinite(search.best_score_)
        # in a Pipeline, fit and transform route the batch (scikit-learn's Pipeline.score also passes
        # sample_weight, which the embedders' score does not take)
        genes = HighlyVariableGenes(n_top_genes=60).set_fit_request(batch=True)
        pipeline = Pipeline([("genes", genes), ("embedder", BetaVAEEmbedder(**SMALL).set_fit_request(batch=True))])
        assert pipeline.fit(X, batch=batch)[-1].batch_categories_.tolist() == ["a", "b"]
        assert pipeline["genes"].n_batches_selected_ is not None


def test_tl_embed_reads_the_batch_key_and_records_it(data):
    X, _, batch = data
    adata = anndata.AnnData(np.log1p(X), layers={"counts": X})
    adata.obs["sample"] = batch
    estimator = BetaVAEEmbedder(**SMALL)
    skvae.tl.embed(adata, estimator, layer="counts", batch_key="sample")
    assert adata.obsm["X_skvae"].shape == (len(X), 3) and adata.uns["skvae"]["batch_key"] == "sample"
    assert estimator.batch_categories_.tolist() == ["a", "b"]
    np.testing.assert_array_equal(adata.obsm["X_skvae"], estimator.transform(adata.to_df(layer="counts")).astype(np.float32))
    recipe = skvae.make_count_embedder(n_top_genes=50, max_epochs=2, random_state=0)
    skvae.tl.embed(adata, recipe, layer="counts", batch_key="sample", key_added="recipe")
    assert recipe["genes"].n_batches_selected_ is not None and recipe["embedder"].batch_categories_.tolist() == ["a", "b"]
    with pytest.raises(ValueError, match="no column 'donor' for batch_key"):
        skvae.tl.embed(adata, BetaVAEEmbedder(**SMALL), layer="counts", batch_key="donor")


def test_torch_modules_take_the_covariates_as_integer_codes():
    from skvae.nn.models import VariationalAutoencoder

    module = VariationalAutoencoder(10, 2, (8, 4), n_categories=(3, 2))
    x, covariates = torch.rand(5, 10), torch.tensor([[0, 1], [1, 0], [2, 1], [1, 1], [0, 0]])
    assert module.loss(x, covariates, generator=torch.Generator().manual_seed(0)).total(1.0).shape == (5,)
    # the offsets start at 0: a new model decodes every category alike until it learns otherwise
    z = torch.randn(5, 2)
    torch.testing.assert_close(module.decode(z, covariates), module.decode(z, torch.zeros(5, 2, dtype=torch.long)))
