"""The batch surfaces' third adversarial pass: each defect found on 5530e45, now a clear error or the right answer."""

import os

import numpy as np
import pandas as pd
import pytest
import sklearn
import torch

import skvae
from skvae import BetaVAEEmbedder, BetaVSCEmbedder
from skvae.pipeline import EmbeddingPipeline

anndata = pytest.importorskip("anndata")

SMALL = dict(n_components=3, hidden_layer_sizes=(16, 8), batch_size=32, max_epochs=2, random_state=0, likelihood="nb")
pytestmark = pytest.mark.filterwarnings("ignore::skvae.PosteriorCollapseWarning")


@pytest.fixture(scope="module")
def data():
    rng = np.random.RandomState(0)
    profiles = rng.gamma(0.5, 2.0, size=(3, 40))
    types, batch = rng.randint(3, size=120), np.array(["a", "b"])[rng.randint(2, size=120)]
    return rng.poisson(profiles[types] * 3).astype(float), batch


@pytest.fixture(scope="module")
def encoding(data):
    X, batch = data
    return BetaVAEEmbedder(**SMALL, encode_batch=True).fit(X, batch=batch)


# 1, 7, 14: a network changed by set_params after fit is refused by every method, naming set_params
@pytest.mark.parametrize(("fit_params", "change"), [
    ({"encode_batch": True}, {"encode_batch": False}),
    ({}, {"encode_batch": True}),
    ({}, {"n_components": 5}),
])
@pytest.mark.parametrize("method", ["transform", "inverse_transform", "score", "sample", "save"])
def test_a_network_changed_by_set_params_after_fit_is_refused(data, fit_params, change, method, tmp_path):
    X, batch = data
    fitted = BetaVAEEmbedder(**SMALL, **fit_params).fit(X, batch=batch)
    codes = fitted.transform(X, batch=batch)
    name = next(iter(change))
    built = fitted.get_params()[name]
    fitted.set_params(**change)
    call = {"transform": lambda: fitted.transform(X, batch=batch),
            "inverse_transform": lambda: fitted.inverse_transform(codes, batch="a"),
            "score": lambda: fitted.score(X, batch=batch), "sample": lambda: fitted.sample(2, batch="a"),
            "save": lambda: fitted.save(tmp_path / "m.pt")}[method]
    with pytest.raises(ValueError, match=f"set_params changed {name}=.*after the model was built"):
        call()
    fitted.set_params(**{name: built})
    call()  # set back, it works again


def test_spike_probabilities_refuse_a_changed_network_too(data):
    X, batch = data
    fitted = BetaVSCEmbedder(**SMALL).fit(X, batch=batch).set_params(encode_batch=True)
    with pytest.raises(ValueError, match="set_params changed encode_batch"):
        fitted.spike_probabilities(X, batch=batch)


# 2: a batch_key that a fitted model cannot read
def test_tl_embed_refuses_a_batch_key_for_a_model_fitted_without_batches(data):
    X, batch = data
    adata = anndata.AnnData(X, obs={"sample": batch})
    model = BetaVAEEmbedder(**SMALL).fit(X)
    with pytest.raises(ValueError, match="fitted without batches, so it cannot integrate them"):
        skvae.tl.embed(adata, model, batch_key="sample")
    assert "skvae" not in adata.uns


# 3: the memory guard counts the tables of the batch categories
def test_the_memory_guard_counts_a_dispersion_per_gene_and_batch(data, monkeypatch):
    X, _ = data
    cell_ids = np.arange(len(X)).astype(str)  # a batch column that holds cell ids
    monkeypatch.setattr("skvae._validation._physical_memory", lambda: 100 * 1024)
    fitting = BetaVAEEmbedder(**SMALL, dispersion="gene-batch")
    with pytest.raises(ValueError, match="batch 120 categories.*not one label per cell"):
        fitting.fit(X, batch=cell_ids)
    assert not hasattr(fitting, "module_")
    BetaVAEEmbedder(**SMALL, dispersion="gene-batch").fit(X, batch=np.repeat(["a", "b"], 60))  # fits in 100 KiB


# 4, 8: labels that are not single values
@pytest.mark.parametrize("labels", [
    lambda n: np.array([("a", 1)] * (n // 2) + [("b", 2)] * (n - n // 2) + [None], dtype=object)[:-1],
    lambda n: [{"a": 1}] * n,
    lambda n: [np.array("a")] * n,
], ids=["tuples", "dicts", "0-d arrays"])
def test_batch_labels_must_be_single_values(data, labels):
    X, _ = data
    with pytest.raises(TypeError, match="batch labels must be single values"):
        BetaVAEEmbedder(**SMALL).fit(X, batch=labels(len(X)))


def test_a_0d_array_label_decodes_and_samples_as_its_value(data, encoding):
    X, batch = data
    codes = encoding.transform(X[:4], batch=batch[:4])
    np.testing.assert_array_equal(encoding.inverse_transform(codes, batch=np.array("b")),
                                  encoding.inverse_transform(codes, batch="b"))
    assert encoding.sample(3, batch=np.array("a"), random_state=0).shape == (3, 40)
    with pytest.raises(TypeError, match="single values"):
        encoding.inverse_transform(codes, batch=("a", "b"))


# 5, 6: what load restores, and a checksum over all of it
def test_load_restores_every_documented_attribute(encoding, tmp_path):
    encoding.save(tmp_path / "m.pt")
    loaded = BetaVAEEmbedder.load(tmp_path / "m.pt")
    for name in ("shuffle_block_size_", "max_epochs_", "kl_warmup_epochs_", "algorithm_", "n_features_in_"):
        assert getattr(loaded, name) == getattr(encoding, name), name
    assert loaded.batch_categories_.tolist() == encoding.batch_categories_.tolist()


@pytest.mark.parametrize("change", [
    lambda state: state["batch_categories_"].reverse(),
    lambda state: state["params"].update(beta=3.0),
    lambda state: state["history_"]["loss"].append(0.0),
    lambda state: state["attributes"].update(max_epochs_=7),
], ids=["categories reordered", "a parameter", "the history", "an attribute"])
def test_the_checksum_covers_every_field_not_only_the_weights(encoding, change, tmp_path):
    path = tmp_path / "m.pt"
    encoding.save(path)
    state = torch.load(path, weights_only=True)
    change(state)
    torch.save(state, path)
    with pytest.raises(ValueError, match="contents do not match the checksum"):
        BetaVAEEmbedder.load(path)


@pytest.mark.parametrize(("categories", "message"), [(["a", "a"], "repeat a label"), (["a", None], "are not a list")])
def test_crafted_categories_are_refused_at_load(encoding, categories, message, tmp_path):
    path = tmp_path / "m.pt"
    encoding.save(path)
    state = torch.load(path, weights_only=True)
    state["batch_categories_"] = categories
    state["checksum"] = skvae._persistence.content_checksum(state)
    torch.save(state, path)
    with pytest.raises(ValueError, match=f"batch categories {message}"):
        BetaVAEEmbedder.load(path)


# 9: a divergence caused by the adversary says so
def test_a_huge_adversary_weight_is_named_when_training_diverges(data):
    X, batch = data
    with pytest.raises(ValueError, match="diverged.*batch_adversary=1e\\+300 too large"):
        BetaVAEEmbedder(**SMALL, batch_adversary=1e300).fit(X, batch=batch)
    # fitted without batches the model has no adversary: a divergence is not blamed on its weight
    with pytest.raises(ValueError, match="diverged") as caught:
        huge = np.where(np.arange(len(X))[:, None] % 2, 1e25, -1e25) * np.ones(X.shape[1])
        BetaVAEEmbedder(**{**SMALL, "likelihood": "gaussian"}, batch_adversary=0.3).fit(huge)
    assert "batch_adversary" not in str(caught.value)


# 10, 11, 12: tl.embed walks a Pipeline's steps itself, with or without metadata routing
@pytest.mark.parametrize("routing", [False, True])
def test_tl_embed_with_the_recipe_and_batches_under_metadata_routing(data, routing):
    X, batch = data
    adata = anndata.AnnData(X, obs={"sample": batch})
    with sklearn.config_context(enable_metadata_routing=routing):
        recipe = skvae.make_count_embedder(n_top_genes=20, max_epochs=2, random_state=0)
        skvae.tl.embed(adata, recipe, batch_key="sample")
        assert recipe["embedder"].batch_categories_.tolist() == ["a", "b"]
        assert recipe["genes"].n_batches_selected_ is not None
        np.testing.assert_array_equal(adata.obsm["X_skvae"], recipe.transform(adata.to_df()).astype(np.float32))


@pytest.mark.parametrize("first", ["passthrough", None, "nested"])
def test_tl_embed_with_a_pipeline_whose_first_step_is_not_an_estimator(data, first):
    from sklearn.pipeline import Pipeline, make_pipeline

    X, _ = data
    adata = anndata.AnnData(X)
    embedder = BetaVAEEmbedder(**SMALL)
    steps = ([("first", first), ("embedder", embedder)] if first != "nested"
             else [("inner", make_pipeline(skvae.preprocessing.HighlyVariableGenes(n_top_genes=20))),
                   ("embedder", embedder)])
    skvae.tl.embed(adata, Pipeline(steps))
    assert adata.obsm["X_skvae"].shape == (120, 3)


def test_a_fitted_encode_batch_recipe_embeds_new_cells_through_tl_embed(data):
    X, batch = data
    recipe = skvae.make_count_embedder(n_top_genes=20, max_epochs=2, random_state=0, encode_batch=True)
    reference = anndata.AnnData(X[:80], obs={"sample": batch[:80]})
    skvae.tl.embed(reference, recipe, batch_key="sample")
    query = anndata.AnnData(X[80:], obs={"sample": batch[80:]})
    skvae.tl.embed(query, recipe, batch_key="sample")
    np.testing.assert_array_equal(query.obsm["X_skvae"],
                                  recipe.transform(query.to_df(), batch=batch[80:]).astype(np.float32))


# 13: a backed AnnData with a step that needs the matrix in memory
def test_tl_embed_of_a_backed_file_with_a_step_that_needs_memory_is_a_clear_error(data, tmp_path):
    # the recipe's gene selection streams over the file since the fourth reliability pass (test_reliability_classifier)
    X, _ = data
    import scipy.sparse as sp
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import MaxAbsScaler

    anndata.AnnData(sp.csr_matrix(X)).write_h5ad(tmp_path / "cells.h5ad")
    backed = anndata.read_h5ad(tmp_path / "cells.h5ad", backed="r")
    with pytest.raises(ValueError, match="on disk .*MaxAbsScaler needs it in memory"):
        skvae.tl.embed(backed, make_pipeline(MaxAbsScaler(), skvae.BetaVAEEmbedder(max_epochs=2)))


# issue 29: codes that keep their columns, through saves, queries and decoding
def test_reference_save_load_query_codes_share_columns_and_decode_alike(data, tmp_path):
    from sklearn.neighbors import KNeighborsClassifier

    X, batch = data
    names = [f"g{i}" for i in range(X.shape[1])]
    labels = np.array(["t0", "t1", "t2"])[np.argmax(X[:, :3], axis=1)]
    reference = anndata.AnnData(X[:80], obs={"sample": batch[:80], "label": labels[:80]})
    reference.var_names = names
    model = skvae.make_count_embedder(n_top_genes=20, max_epochs=3, random_state=0)
    skvae.tl.embed(reference, model, batch_key="sample")
    model.save(tmp_path / "recipe.pt")
    loaded = EmbeddingPipeline.load(tmp_path / "recipe.pt")
    # the query holds its genes in another order: the loaded model takes its own by name
    query = anndata.AnnData(X[80:, ::-1], obs={"sample": batch[80:]})
    query.var_names = names[::-1]
    skvae.tl.embed(query, loaded)
    # tl.embed named the model's genes: direct calls pass them by name too
    cells = pd.DataFrame(X, columns=names)
    np.testing.assert_array_equal(query.obsm["X_skvae"], model.transform(cells[80:]).astype(np.float32))
    np.testing.assert_array_equal(reference.obsm["X_skvae"], loaded.transform(cells[:80]).astype(np.float32))
    knn = KNeighborsClassifier(15)
    through_obsm = knn.fit(reference.obsm["X_skvae"], labels[:80]).predict(query.obsm["X_skvae"])
    through_transform = knn.fit(model.transform(cells[:80]), labels[:80]).predict(model.transform(cells[80:]))
    np.testing.assert_array_equal(through_obsm, through_transform)
    decoded = skvae.tl.decode(query, loaded, batch="a")
    np.testing.assert_allclose(decoded.X, model["embedder"].inverse_transform(model.transform(cells[80:]), batch="a"),
                               rtol=1e-5)
    assert list(decoded.var_names) == list(np.asarray(names)[model["genes"].get_support()])


def test_the_saved_recipe_loads_as_it_was(data, tmp_path):
    X, batch = data
    recipe = skvae.make_count_embedder(n_top_genes=20, max_epochs=2, random_state=0).fit(X, batch=batch)
    recipe.save(tmp_path / "r.pt")
    loaded = EmbeddingPipeline.load(tmp_path / "r.pt")
    assert [name for name, _ in loaded.steps] == ["genes", "embedder"]
    np.testing.assert_array_equal(loaded["genes"].get_support(), recipe["genes"].get_support())
    np.testing.assert_array_equal(loaded.transform(X), recipe.transform(X))
    np.testing.assert_array_equal(loaded.inverse_transform(recipe.transform(X[:3]), batch="b"),
                                  recipe.inverse_transform(recipe.transform(X[:3]), batch="b"))
    assert loaded.score(X, batch=batch) == pytest.approx(recipe.score(X, batch=batch))
    with pytest.raises(ValueError, match="holds EmbeddingPipeline, not BetaVAEEmbedder: load it with "
                                         "EmbeddingPipeline.load"):
        BetaVAEEmbedder.load(tmp_path / "r.pt")


def test_a_pipeline_with_a_foreign_step_is_refused_at_save(data, tmp_path):
    from sklearn.preprocessing import FunctionTransformer

    X, _ = data
    pipe = EmbeddingPipeline([("log", FunctionTransformer()), ("embedder", BetaVAEEmbedder(**SMALL))]).fit(X)
    with pytest.raises(TypeError, match="step 'log' is a FunctionTransformer: save the pipeline with joblib"):
        pipe.save(tmp_path / "p.pt")
    assert not os.path.exists(tmp_path / "p.pt")


def test_embedding_pipeline_takes_step_parameters_and_refuses_unknown_ones(data):
    X, batch = data
    recipe = skvae.make_count_embedder(n_top_genes=20, max_epochs=2, random_state=0)
    recipe.fit(X, embedder__batch=batch)
    assert recipe["embedder"].batch_categories_.tolist() == ["a", "b"] and recipe["genes"].n_batches_selected_ is None
    with pytest.raises(TypeError, match="got sample_weight=: pass batch="):
        recipe.fit(X, sample_weight=np.ones(len(X)))
    assert isinstance(sklearn.base.clone(recipe), EmbeddingPipeline)
