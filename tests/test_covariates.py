"""Several categorical covariates at once (sample and technology): objects that encode and save themselves, end to end."""

import anndata
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import skvae
from skvae import BetaVAEEmbedder, BetaVSCEmbedder
from skvae._covariates import CategoricalCovariate, Covariates, combined_labels
from skvae.preprocessing import HighlyVariableGenes

SMALL = dict(n_components=3, hidden_layer_sizes=(16, 8), batch_size=32, max_epochs=3, random_state=0, likelihood="nb")


def _two_levels(n=300, n_genes=60, seed=0):
    """Counts of 3 types; 4 samples nested in 2 technologies, each with a multiplicative effect per gene."""
    rng = np.random.RandomState(seed)
    profiles = rng.gamma(0.5, 2.0, size=(3, n_genes))
    types, sample = rng.randint(3, size=n), rng.randint(4, size=n)
    technology = sample // 2
    effect = np.exp(rng.normal(0, 0.7, size=(2, n_genes)))[technology] * np.exp(rng.normal(0, 0.2, size=(4, n_genes)))[sample]
    counts = rng.poisson(profiles[types] * effect * 3).astype(float)
    obs = pd.DataFrame({"sample": np.array(["s1", "s2", "s3", "s4"])[sample],
                        "technology": np.array(["10x", "smart-seq"])[technology]})
    return counts, obs


@pytest.fixture(scope="module")
def data():
    return _two_levels()


@pytest.fixture(scope="module")
def fitted(data):
    X, obs = data
    return BetaVAEEmbedder(**SMALL, batch_adversary=0.3).fit(X, batch=obs)


labels = st.sampled_from(["a", "b", "c", 1, 2.5])


@settings(max_examples=50, deadline=None)
@given(columns=st.lists(st.lists(labels, min_size=6, max_size=6), min_size=1, max_size=3))
def test_codes_decode_to_the_labels_and_a_save_restores_the_covariates(columns):
    batch = {f"c{index}": column for index, column in enumerate(columns)}
    covariates = Covariates.from_batch(batch, 6)
    codes = covariates.encode(batch, 6)
    assert codes.shape == (6, len(columns)) and codes.dtype == np.int64
    for column, covariate, values in zip(codes.T, covariates.columns, columns, strict=True):
        assert covariate.categories[column].tolist() == values  # each code is its label's category
    restored = Covariates.from_saved(covariates.to_saved(), "file")
    np.testing.assert_array_equal(restored.encode(batch, 6), codes)
    assert restored.n_categories == covariates.n_categories == tuple(len(set(map(repr, v))) for v in columns)


def test_a_covariate_sorts_its_categories_and_names_unseen_ones():
    donor = CategoricalCovariate.from_labels("donor", ["d2", "d1", "d2"])
    assert donor.categories.tolist() == ["d1", "d2"] and len(donor) == 2
    with pytest.raises(ValueError, match=r"batch\['donor'\] has categories not seen in fit: 'd3'"):
        donor.encode(["d3"])


def test_one_named_column_gives_the_codes_of_the_same_labels_unnamed(data):
    X, obs = data
    unnamed = BetaVAEEmbedder(**SMALL).fit(X, batch=obs["sample"].to_numpy())
    named = BetaVAEEmbedder(**SMALL).fit(X, batch=obs[["sample"]])
    np.testing.assert_array_equal(named.transform(X), unnamed.transform(X))
    np.testing.assert_array_equal(named.inverse_transform(named.transform(X[:5]), batch="s2"),
                                  unnamed.inverse_transform(unnamed.transform(X[:5]), batch="s2"))


def test_two_covariates_fit_transform_decode_score_and_sample(fitted, data):
    X, obs = data
    assert list(fitted.batch_categories_) == ["sample", "technology"]
    assert fitted.batch_categories_["technology"].tolist() == ["10x", "smart-seq"]
    assert fitted.module_.decoder.covariate_offsets[0].weight.shape[0] == 6  # 4 samples + 2 technologies
    assert fitted.module_.adversary[-1].out_features == 4  # the adversary tells the first column, the sample
    codes = fitted.transform(X)
    assert codes.shape == (len(X), 3)
    # columns are read by name: their order in the DataFrame, and others beside them, do not matter
    shuffled = obs[["technology", "sample"]].assign(other=1)
    np.testing.assert_array_equal(fitted.inverse_transform(codes, batch=shuffled), fitted.inverse_transform(codes, batch=obs))
    np.testing.assert_array_equal(fitted.score(X, batch=shuffled), fitted.score(X, batch=obs))
    # one value per column for every cell: corrected expression
    corrected = fitted.inverse_transform(codes, batch={"sample": "s1", "technology": "10x"})
    per_cell = fitted.inverse_transform(codes, batch=pd.DataFrame({"sample": ["s1"] * len(X), "technology": "10x"}))
    np.testing.assert_array_equal(corrected, per_cell)
    assert fitted.sample(4, batch={"sample": "s3", "technology": "smart-seq"}, random_state=0).shape == (4, X.shape[1])


def test_the_second_covariate_is_learned(data):
    X, obs = data
    model = BetaVAEEmbedder(**{**SMALL, "max_epochs": 40}).fit(X, batch=obs)
    codes = model.transform(X[:50])
    as_10x = model.inverse_transform(codes, batch={"sample": "s1", "technology": "10x"})
    as_smart = model.inverse_transform(codes, batch={"sample": "s1", "technology": "smart-seq"})
    assert np.abs(np.log(as_10x + 1e-3) - np.log(as_smart + 1e-3)).mean() > 0.05


@pytest.mark.parametrize(("batch", "error", "message"), [
    (lambda obs: obs["sample"].to_numpy(), ValueError, r"fitted with 2 batch columns \(sample, technology\)"),
    (lambda obs: obs[["sample"]], ValueError, r"lacks the column\(s\) \['technology'\]"),
    (lambda obs: obs.assign(technology="drop-seq"), ValueError, r"batch\['technology'\] has categories not seen"),
    (lambda obs: obs.assign(sample=[None] + ["s1"] * (len(obs) - 1)), ValueError, "column 'sample': batch has 1 missing"),
    (lambda obs: obs.assign(sample=[("s", 1)] * len(obs)), TypeError, "column 'sample': batch labels must be single"),
])
def test_bad_columns_are_clear_errors(fitted, data, batch, error, message):
    X, obs = data
    with pytest.raises(error, match=message):
        fitted.score(X, batch=batch(obs))


def test_bad_columns_for_fit_are_clear_errors_and_change_nothing(data):
    X, obs = data
    estimator = BetaVAEEmbedder(**SMALL)
    repeated = pd.concat([obs["sample"], obs["sample"]], axis=1)
    with pytest.raises(ValueError, match="repeated column names"):
        estimator.fit(X, batch=repeated)
    with pytest.raises(ValueError, match="empty DataFrame or dict"):
        estimator.fit(X, batch={})
    with pytest.raises(ValueError, match="column 'technology': batch has 299 labels for 300 cells"):
        estimator.fit(X, batch={"sample": obs["sample"], "technology": obs["technology"][:-1]})
    assert not hasattr(estimator, "module_")


def test_a_model_of_two_covariates_saves_and_loads(fitted, data, tmp_path):
    X, obs = data
    fitted.save(tmp_path / "m.pt")
    loaded = BetaVAEEmbedder.load(tmp_path / "m.pt")
    assert {name: values.tolist() for name, values in loaded.batch_categories_.items()} == {
        name: values.tolist() for name, values in fitted.batch_categories_.items()}
    np.testing.assert_array_equal(loaded.transform(X), fitted.transform(X))
    np.testing.assert_array_equal(loaded.score(X, batch=obs), fitted.score(X, batch=obs))


def test_backed_and_partial_fit_read_two_covariates(data, tmp_path):
    X, obs = data
    path = tmp_path / "counts.h5ad"
    anndata.AnnData(sp.csr_matrix(X)).write_h5ad(path)
    options = dict(SMALL, shuffle_block_size=1, algorithm="sparse")
    in_memory = BetaVSCEmbedder(**options).fit(sp.csr_matrix(X), batch=obs)
    backed = BetaVSCEmbedder(**options).fit(anndata.read_h5ad(path, backed="r").X, batch=obs)
    np.testing.assert_allclose(backed.transform(X), in_memory.transform(X), rtol=1e-4, atol=1e-5)
    chunks = BetaVSCEmbedder(**SMALL)
    chunks.partial_fit(X[:150], batch=obs.iloc[:150]).partial_fit(X[150:], batch=obs.iloc[150:])
    assert chunks.n_iter_ == 2 and list(chunks.batch_categories_) == ["sample", "technology"]
    with pytest.raises(ValueError, match=r"batch\['sample'\] has categories not seen in fit: 's9'"):
        chunks.partial_fit(X[:10], batch=obs.iloc[:10].assign(sample="s9"))


def test_tl_embed_takes_a_list_of_batch_keys(data):
    X, obs = data
    adata = anndata.AnnData(X, obs=obs.set_axis(obs.index.astype(str)))
    model = BetaVAEEmbedder(**SMALL)
    skvae.tl.embed(adata, model, batch_key=["sample", "technology"])
    assert list(adata.uns["skvae"]["batch_key"]) == ["sample", "technology"]
    np.testing.assert_array_equal(adata.obsm["X_skvae"], BetaVAEEmbedder(**SMALL).fit(X, batch=obs).transform(X).astype(np.float32))
    corrected = skvae.tl.decode(adata, model, batch={"sample": "s1", "technology": "10x"})
    assert corrected.shape == X.shape
    with pytest.raises(ValueError, match="no column 'donor' for batch_key"):
        skvae.tl.embed(adata, BetaVAEEmbedder(**SMALL), batch_key=["sample", "donor"])
    for bad in ([], ["sample", "sample"], ["sample", 3]):
        with pytest.raises(ValueError, match="a list of distinct column names"):
            skvae.tl.embed(adata, BetaVAEEmbedder(**SMALL), batch_key=bad)


def test_gene_selection_ranks_within_each_combination(data):
    X, obs = data
    by_columns = HighlyVariableGenes(n_top_genes=20).fit(X, batch=obs)
    by_combination = HighlyVariableGenes(n_top_genes=20).fit(X, batch=combined_labels(obs, len(obs)))
    np.testing.assert_array_equal(by_columns.get_support(), by_combination.get_support())
    assert combined_labels(obs, len(obs))[0] == f"{obs['sample'][0]} | {obs['technology'][0]}"


def test_a_model_of_unnamed_labels_takes_a_single_column_of_any_name(data):
    X, obs = data
    model = BetaVAEEmbedder(**SMALL).fit(X, batch=obs["sample"].to_numpy())
    assert not isinstance(obs["sample"], dict)  # a Series is one column of labels, not named columns
    np.testing.assert_array_equal(model.score(X, batch=obs[["sample"]].rename(columns={"sample": "donor"})),
                                  model.score(X, batch=obs["sample"]))
    with pytest.raises(ValueError, match="fitted with one batch column of labels, but batch has 2 columns"):
        model.score(X, batch=obs)


def test_a_save_from_before_covariates_were_generic_still_loads(data, tmp_path):
    import torch

    X, obs = data
    model = BetaVAEEmbedder(**SMALL, encode_batch=True).fit(X, batch=obs["sample"].to_numpy())
    model.save(tmp_path / "m.pt")
    state = torch.load(tmp_path / "m.pt", weights_only=True)
    # the weight names of earlier versions: batch_offsets, and one table per layer
    state["state_dict"] = {key.replace("covariate_offsets", "batch_offsets"): value
                           for key, value in state["state_dict"].items()}
    assert any("encoder.batch_offsets" in key for key in state["state_dict"])
    state["checksum"] = skvae._persistence.content_checksum(state)
    torch.save(state, tmp_path / "old.pt")
    loaded = BetaVAEEmbedder.load(tmp_path / "old.pt")
    np.testing.assert_array_equal(loaded.transform(X, batch=obs["sample"]), model.transform(X, batch=obs["sample"]))


def test_the_recipe_pipeline_with_two_covariates_saves_and_loads(data, tmp_path):
    X, obs = data
    recipe = skvae.make_count_embedder(n_top_genes=40, max_epochs=2, random_state=0)
    codes = recipe.fit_transform(X, batch=obs)
    recipe.save(tmp_path / "recipe.pt")
    loaded = type(recipe).load(tmp_path / "recipe.pt")
    np.testing.assert_array_equal(loaded.transform(X), codes)
    corrected = {"sample": "s2", "technology": "10x"}
    np.testing.assert_array_equal(loaded.inverse_transform(codes[:5], batch=corrected),
                                  recipe.inverse_transform(codes[:5], batch=corrected))
