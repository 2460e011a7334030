"""Continuous covariates (percent mitochondrial counts, cell-cycle scores): columns of batch= named in
continuous_covariates condition the decoder (and, with encode_batch, the encoder), are checked, saved and mapped."""

import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.linear_model import LinearRegression

from skvae import BetaVAEClassifier, BetaVAEEmbedder, make_count_embedder
from skvae.nn.layers import ContinuousInputs
from skvae.preprocessing import HighlyVariableGenes

SMALL = dict(n_components=3, hidden_layer_sizes=(32,), likelihood="nb", batch_size=64, learning_rate=3e-3)


def _cells(n=400, seed=0, n_genes=80):
    """Counts of 3 types over 2 samples, where percent_mito multiplies a third of the genes by up to e^2 per cell."""
    rng = np.random.RandomState(seed)
    types = rng.randint(3, size=n)
    mito = rng.uniform(0.0, 10.0, size=n)
    profiles = rng.gamma(0.6, 3.0, size=(3, n_genes))
    effect = np.where(np.arange(n_genes) < n_genes // 3, 0.2, 0.0)  # log-fold per unit of mito
    counts = rng.poisson(profiles[types] * np.exp(np.outer(mito, effect))).astype(np.float64)
    obs = pd.DataFrame({"sample": np.where(np.arange(n) % 2, "s1", "s2"), "percent_mito": mito})
    return counts, types, obs


def _quietly(function, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return function(*args, **kwargs)


def _r2(codes, values):
    return LinearRegression().fit(codes, values).score(codes, values)


@pytest.mark.parametrize("seed", [0, 1])
def test_a_continuous_covariate_in_the_decoder_leaves_the_codes_and_is_decoded_as_given(seed):
    counts, _, obs = _cells(seed=seed)
    options = dict(SMALL, max_epochs=60, random_state=seed)
    without = _quietly(BetaVAEEmbedder(**options).fit, counts, batch=obs[["sample"]])
    with_mito = _quietly(BetaVAEEmbedder(**options, continuous_covariates=["percent_mito"]).fit, counts, batch=obs)
    # the decoder explains the mitochondrial effect, so the code carries less of it
    carried, left = _r2(without.transform(counts), obs["percent_mito"]), _r2(with_mito.transform(counts),
                                                                             obs["percent_mito"])
    assert left < carried - 0.2, (carried, left)
    # decoding the same codes at a higher percent_mito raises the affected genes against the others (decoded
    # expression is proportions: the others' share falls): simulated, 0.2 x 8 = 1.6 in log
    codes = with_mito.transform(counts[:50])
    low, high = (with_mito.inverse_transform(codes, batch={"sample": "s1", "percent_mito": value}) for value in (1.0, 9.0))
    ratio = np.log(high / low).mean(axis=0)
    affected = np.arange(counts.shape[1]) < counts.shape[1] // 3
    assert 1.1 < ratio[affected].mean() - ratio[~affected].mean() < 2.1


def test_the_model_standardises_the_covariates_by_the_cells_it_trained_on():
    counts, _, obs = _cells()
    obs["total"] = counts.sum(axis=1) * 100.0  # a large scale trains as well as a small one
    model = _quietly(BetaVAEEmbedder(**SMALL, max_epochs=5, random_state=0,
                                     continuous_covariates=["percent_mito", "total"]).fit, counts, batch=obs)
    inputs = model.module_.continuous_inputs
    np.testing.assert_allclose(inputs.mean.numpy(), obs[["percent_mito", "total"]].mean().to_numpy(), rtol=1e-4)
    np.testing.assert_allclose(inputs.var.numpy(), obs[["percent_mito", "total"]].var(ddof=0).to_numpy(), rtol=1e-3)
    assert np.isfinite(model.history_["loss"]).all()


def test_running_estimates_pool_minibatches_as_all_rows_at_once():
    values = torch.randn(90, 2, dtype=torch.float64) * torch.tensor([1.0, 30.0], dtype=torch.float64) + 5.0
    inputs = ContinuousInputs(2).double()
    for start in range(0, 90, 32):  # minibatches of 32, 32 and 26 rows
        inputs(values[start:start + 32])
    torch.testing.assert_close(inputs.mean, values.mean(dim=0))
    torch.testing.assert_close(inputs.var, values.var(dim=0, unbiased=False))
    assert float(inputs.count) == 90
    out = inputs.eval()(values)
    torch.testing.assert_close(out.mean(dim=0), torch.zeros(2, dtype=torch.float64), atol=1e-10, rtol=0)


@pytest.mark.parametrize(("change", "message"), [
    (lambda obs: obs.assign(percent_mito=np.nan), "missing or infinite"),
    (lambda obs: obs.assign(percent_mito=np.where(np.arange(len(obs)) == 3, np.inf, obs["percent_mito"])),
     "missing or infinite values .* at cell 3"),
    (lambda obs: obs.assign(percent_mito=2.0), "same value"),
    (lambda obs: obs.assign(percent_mito="high"), "not numbers"),
    (lambda obs: obs.drop(columns="percent_mito"), "lacks the continuous covariate"),
])
def test_a_bad_continuous_column_is_refused_at_fit_naming_it(change, message):
    counts, _, obs = _cells(n=60)
    model = BetaVAEEmbedder(**SMALL, max_epochs=1, continuous_covariates=["percent_mito"])
    with pytest.raises(ValueError, match=message):
        model.fit(counts, batch=change(obs))
    assert not hasattr(model, "module_")


def test_a_continuous_column_missing_or_bad_at_transform_is_refused():
    counts, _, obs = _cells(n=80)
    model = _quietly(BetaVAEEmbedder(**SMALL, max_epochs=2, random_state=0, encode_batch=True,
                                     continuous_covariates="percent_mito").fit, counts, batch=obs)
    with pytest.raises(ValueError, match="lacks the continuous covariate"):
        model.transform(counts, batch=obs[["sample"]])
    with pytest.raises(ValueError, match="missing or infinite"):
        model.transform(counts, batch=obs.assign(percent_mito=np.nan))
    with pytest.raises(ValueError, match="pass each cell's batch"):
        model.transform(counts)
    # a value outside the fitted range is a value like any other (not a category)
    assert np.isfinite(model.transform(counts, batch=obs.assign(percent_mito=50.0))).all()


def test_continuous_covariates_need_named_columns_of_batch():
    counts, _, obs = _cells(n=60)
    model = BetaVAEEmbedder(**SMALL, max_epochs=1, continuous_covariates=["percent_mito"])
    with pytest.raises(ValueError, match="batch is None"):
        model.fit(counts)
    with pytest.raises(ValueError, match="DataFrame or dict of named columns"):
        model.fit(counts, batch=obs["sample"].to_numpy())
    with pytest.raises(TypeError, match="distinct columns"):
        BetaVAEEmbedder(**SMALL, max_epochs=1, continuous_covariates=["a", "a"]).fit(counts, batch=obs)


def test_saved_loaded_continued_and_refused_as_a_shaping_parameter(tmp_path):
    counts, _, obs = _cells(n=120)
    model = _quietly(BetaVAEEmbedder(**SMALL, max_epochs=2, random_state=0,
                                     continuous_covariates=["percent_mito"]).fit, counts, batch=obs)
    model.save(tmp_path / "model.pt")
    loaded = BetaVAEEmbedder.load(tmp_path / "model.pt")
    np.testing.assert_array_equal(loaded.transform(counts), model.transform(counts))
    assert loaded.score(counts, batch=obs) == model.score(counts, batch=obs)
    assert loaded.continuous_covariates == ["percent_mito"]
    _quietly(loaded.partial_fit, counts, batch=obs)  # continues, with the covariate
    assert loaded.n_iter_ == 3
    with pytest.raises(ValueError, match="continuous_covariates"):
        loaded.set_params(continuous_covariates=None).partial_fit(counts, batch=obs)


def test_several_categorical_and_continuous_covariates_at_once_and_a_query_mapped():
    counts, _, obs = _cells(n=300)
    obs["technology"] = np.where(np.arange(300) % 3 == 0, "10x", "smart")
    obs["S_score"] = np.random.RandomState(1).normal(size=300)
    columns = ["sample", "technology", "percent_mito", "S_score"]
    reference = obs["sample"] == "s1"
    model = _quietly(BetaVAEEmbedder(**SMALL, max_epochs=3, random_state=0, batch_adversary=0.3,
                                     continuous_covariates=["percent_mito", "S_score"]).fit,
                     counts[reference], batch=obs.loc[reference, columns])
    assert list(model.batch_categories_) == ["sample", "technology"]
    before = model.transform(counts[reference])
    decoded = model.inverse_transform(before, batch=obs.loc[reference, columns])
    query = obs.loc[~reference, columns].assign(sample="s9")
    _quietly(model.map_query, counts[~reference], batch=query, max_epochs=2)
    assert model.batch_categories_["sample"].tolist() == ["s1", "s9"]
    np.testing.assert_array_equal(model.transform(counts[reference], batch=obs.loc[reference, columns]), before)
    # the reference's decoding too: the continuous covariates' standardisation stays the reference's
    np.testing.assert_array_equal(model.inverse_transform(before, batch=obs.loc[reference, columns]), decoded)
    assert np.isfinite(model.transform(counts[~reference], batch=query)).all()


def test_the_gene_selection_and_the_classifier_leave_continuous_columns_out_of_the_batches():
    counts, types, obs = _cells(n=300)
    # ranked within the samples, as if the continuous column were not there
    plain = HighlyVariableGenes(n_top_genes=20).fit(counts, batch=obs[["sample"]])
    mixed = HighlyVariableGenes(n_top_genes=20, continuous_covariates="percent_mito").fit(counts, batch=obs)
    np.testing.assert_array_equal(mixed.get_support(), plain.get_support())
    with pytest.raises(ValueError, match="continuous_covariates"):
        HighlyVariableGenes(n_top_genes=20).fit(counts, batch=obs)
    # the recipe hands its continuous covariates to both steps
    recipe = make_count_embedder(continuous_covariates=["percent_mito"], n_top_genes=20, max_epochs=2)
    assert recipe["genes"].continuous_covariates == ["percent_mito"]
    # the typicality is calibrated within the samples: each cell's percent_mito does not make a group of its own
    classifier = _quietly(BetaVAEClassifier(**SMALL, max_epochs=5, random_state=0,
                                            continuous_covariates=["percent_mito"]).fit, counts, types, batch=obs)
    typical = classifier.typicality(counts, batch=obs)
    by_sample = np.empty(len(counts))
    for sample in ("s1", "s2"):
        rows = (obs["sample"] == sample).to_numpy()
        by_sample[rows] = classifier.typicality(counts[rows], batch=obs[rows])
    np.testing.assert_allclose(typical, by_sample)


def test_tl_embed_takes_continuous_covariates_from_obs_columns():
    anndata = pytest.importorskip("anndata")
    import skvae

    counts, _, obs = _cells(n=120)
    adata = anndata.AnnData(counts, obs=obs.set_index(obs.index.astype(str)))
    model = BetaVAEEmbedder(**SMALL, max_epochs=2, random_state=0, continuous_covariates=["percent_mito"])
    _quietly(skvae.tl.embed, adata, model, batch_key=["sample", "percent_mito"])
    assert adata.obsm["X_skvae"].shape == (120, 3)
    np.testing.assert_allclose(adata.obsm["X_skvae"], _quietly(model.transform, counts), rtol=1e-4, atol=1e-5)
