"""skvae.tl.embed on AnnData, in memory and backed by an h5ad file; training from a CSR matrix on disk."""

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import skvae
from skvae import AutoencoderEmbedder, BetaVAEEmbedder, make_count_embedder

anndata = pytest.importorskip("anndata")

# one shuffling for data in memory and on disk (where "auto" shuffles blocks of rows): the same minibatches
SMALL = dict(n_components=3, hidden_layer_sizes=(16, 8), batch_size=32, max_epochs=4, random_state=0,
             shuffle_block_size=16)


@pytest.fixture(scope="module")
def counts():
    rng = np.random.RandomState(0)
    return sp.csr_matrix(rng.poisson(rng.gamma(0.3, 2.0, size=(3, 60))[rng.randint(3, size=150)]).astype(np.float32))


@pytest.fixture
def adata(counts):
    data = anndata.AnnData(sp.csr_matrix(np.log1p(counts.toarray())), layers={"counts": counts.copy()})
    data.var_names = [f"gene{i}" for i in range(counts.shape[1])]
    return data


@pytest.fixture
def h5ad(adata, tmp_path):
    path = tmp_path / "cells.h5ad"
    anndata.AnnData(adata.layers["counts"], var=adata.var, layers={"counts": adata.layers["counts"]}).write_h5ad(path)
    return path


def test_embed_fits_the_estimator_in_place_writes_obsm_and_uns_and_returns_none(adata, counts, tmp_path):
    estimator = BetaVAEEmbedder(**SMALL, likelihood="nb")
    assert skvae.tl.embed(adata, estimator, layer="counts") is None
    np.testing.assert_allclose(adata.obsm["X_skvae"], BetaVAEEmbedder(**SMALL, likelihood="nb").fit_transform(counts),
                               rtol=1e-6)
    assert list(estimator.feature_names_in_) == list(adata.var_names)
    record = adata.uns["skvae"]
    assert record["estimator"] == "BetaVAEEmbedder" and record["layer"] == "counts"
    assert len(record["history"]["loss"]) == 4 and record["params"]["likelihood"] == "nb"
    # the record survives an h5ad round trip
    adata.write_h5ad(tmp_path / "out.h5ad")
    back = anndata.read_h5ad(tmp_path / "out.h5ad")
    np.testing.assert_array_equal(back.obsm["X_skvae"], adata.obsm["X_skvae"])
    assert back.uns["skvae"]["params"]["n_components"] == 3 and back.uns["skvae"]["params"]["n_jobs"] == "None"


def test_the_codes_are_transforms_columns_and_copy_leaves_the_input_alone(adata):
    estimator = BetaVAEEmbedder(**SMALL, likelihood="nb")
    result = skvae.tl.embed(adata, estimator, layer="counts", copy=True)
    assert not adata.obsm and "skvae" not in adata.uns
    # tl.embed named the model's genes: scikit-learn's check warns that an unnamed matrix cannot be checked
    with pytest.warns(UserWarning, match="X does not have valid feature names, but BetaVAEEmbedder was fitted"):
        codes = estimator.transform(adata.layers["counts"]).astype(np.float32)
    np.testing.assert_array_equal(result.obsm["X_skvae"], codes)
    np.testing.assert_allclose(result.uns["skvae"]["variance"], codes.var(axis=0), rtol=1e-5)


def test_a_fitted_estimator_transforms_and_takes_its_genes_by_name(adata):
    estimator = AutoencoderEmbedder(**SMALL)
    skvae.tl.embed(adata, estimator, key_added="first")
    skvae.tl.embed(adata, estimator, key_added="again")
    np.testing.assert_array_equal(adata.obsm["again"], adata.obsm["first"])
    # the same cells with their genes reversed and two more genes: the model takes its own, by name
    shuffled = anndata.concat([adata[:, ::-1], anndata.AnnData(
        sp.csr_matrix((150, 2), dtype=np.float32), var={"_": ["x", "y"]}, obs=adata.obs)], axis=1)
    shuffled.var_names = list(adata.var_names[::-1]) + ["extra1", "extra2"]
    skvae.tl.embed(shuffled, estimator)
    np.testing.assert_array_equal(shuffled.obsm["X_skvae"], adata.obsm["first"])
    with pytest.raises(ValueError, match=r"adata lacks 10 of the 60 genes .* e.g. \['gene50'"):
        skvae.tl.embed(adata[:, :50].copy(), estimator)


def test_highly_variable_flags_select_the_genes(adata):
    adata.var["highly_variable"] = np.arange(60) < 20
    estimator, every_gene = AutoencoderEmbedder(**SMALL), AutoencoderEmbedder(**SMALL)
    skvae.tl.embed(adata, estimator)
    assert estimator.n_features_in_ == 20 and adata.uns["skvae"]["use_highly_variable"]
    skvae.tl.embed(adata, every_gene, use_highly_variable=False)
    assert every_gene.n_features_in_ == 60


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"layer": "spliced"}, r"no layer 'spliced'; its layers are \['counts'\]"),
        ({"use_highly_variable": True}, "no 'highly_variable' column"),
        ({}, "adata.X does not hold raw counts"),  # log-normalised X for a count likelihood
    ],
)
def test_clear_errors(adata, kwargs, message):
    with pytest.raises(ValueError, match=message):
        skvae.tl.embed(adata, BetaVAEEmbedder(**SMALL, likelihood="nb"), **kwargs)
    assert "X_skvae" not in adata.obsm


def test_not_an_anndata_object(counts):
    with pytest.raises(TypeError, match="anndata.AnnData"):
        skvae.tl.embed(counts, AutoencoderEmbedder(**SMALL))


def test_a_pipeline_from_make_count_embedder(adata, tmp_path):
    pipeline = make_count_embedder(n_top_genes=30, max_epochs=3, random_state=0)
    skvae.tl.embed(adata, pipeline, layer="counts")
    assert adata.obsm["X_skvae"].shape == (150, 10) and list(pipeline.feature_names_in_) == list(adata.var_names)
    assert adata.uns["skvae"]["params"]["embedder"]["likelihood"] == "nb"
    adata.write_h5ad(tmp_path / "out.h5ad")


@pytest.mark.parametrize("layer", [None, "counts"])
def test_backed_training_reads_from_disk_and_equals_training_in_memory(h5ad, counts, layer):
    backed = anndata.read_h5ad(h5ad, backed="r")
    estimator = BetaVAEEmbedder(**SMALL, likelihood="nb")
    skvae.tl.embed(backed, estimator, layer=layer)
    in_memory = BetaVAEEmbedder(**SMALL, likelihood="nb").fit(counts)
    for key, value in in_memory.module_.state_dict().items():
        assert np.array_equal(estimator.module_.state_dict()[key], value), key
    np.testing.assert_allclose(backed.obsm["X_skvae"], in_memory.transform(counts), rtol=1e-6)
    with pytest.raises(ValueError, match="copy=True copies adata in memory, but it is backed"):
        skvae.tl.embed(backed, estimator, layer=layer, copy=True)


@pytest.mark.filterwarnings("ignore:X looks like raw counts")  # count-like data, not what is tested
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")  # a few epochs on purpose
def test_estimators_fit_and_transform_a_csr_matrix_on_disk(h5ad, counts):
    on_disk = anndata.read_h5ad(h5ad, backed="r").X
    for early_stopping in (False, True):
        params = {**SMALL, "likelihood": "nb", "early_stopping": early_stopping}
        streamed, in_memory = BetaVAEEmbedder(**params).fit(on_disk), BetaVAEEmbedder(**params).fit(counts)
        np.testing.assert_allclose(streamed.transform(on_disk), in_memory.transform(counts), rtol=1e-6)
        assert streamed.score(on_disk) == pytest.approx(in_memory.score(counts), rel=1e-6)
    assert AutoencoderEmbedder(**SMALL).partial_fit(on_disk).n_iter_ == 1


@pytest.mark.filterwarnings("ignore:X looks like raw counts")  # count-like data, not what is tested
def test_a_backed_file_with_bad_values_or_layout_is_refused(tmp_path, counts):
    negative = counts.copy()
    negative.data[0] = -1.0
    anndata.AnnData(negative).write_h5ad(tmp_path / "negative.h5ad")
    with pytest.raises(ValueError, match="Negative values in data passed to BetaVAEEmbedder"):
        BetaVAEEmbedder(**SMALL, likelihood="nb").fit(anndata.read_h5ad(tmp_path / "negative.h5ad", backed="r").X)
    not_finite = counts.copy()
    not_finite.data[0] = np.nan
    anndata.AnnData(not_finite).write_h5ad(tmp_path / "nan.h5ad")
    with pytest.raises(ValueError, match="NaN or infinity"):
        AutoencoderEmbedder(**SMALL).fit(anndata.read_h5ad(tmp_path / "nan.h5ad", backed="r").X)
    too_large = counts.astype(np.float64)
    too_large.data[0] = 1e300
    anndata.AnnData(too_large).write_h5ad(tmp_path / "large.h5ad")
    with pytest.raises(ValueError, match="beyond float32's range"):
        AutoencoderEmbedder(**SMALL).fit(anndata.read_h5ad(tmp_path / "large.h5ad", backed="r").X)
    anndata.AnnData(counts.tocsc()).write_h5ad(tmp_path / "csc.h5ad")
    with pytest.raises(TypeError, match="CSC matrix on disk"):
        AutoencoderEmbedder(**SMALL).fit(anndata.read_h5ad(tmp_path / "csc.h5ad", backed="r").X)
    with pytest.raises(ValueError, match="X has 60 features, but .* expecting 59"):
        AutoencoderEmbedder(**SMALL).fit(counts[:, :59]).transform(anndata.read_h5ad(tmp_path / "negative.h5ad",
                                                                                     backed="r").X)


@pytest.mark.filterwarnings("ignore:X looks like raw counts")  # count-like data, not what is tested
def test_backed_flags_that_cannot_be_applied_are_an_error(h5ad):
    backed = anndata.read_h5ad(h5ad, backed="r")
    backed.var["highly_variable"] = np.arange(60) < 20
    with pytest.raises(ValueError, match="genes cannot be selected on the fly"):
        skvae.tl.embed(backed, AutoencoderEmbedder(**SMALL))
    every_gene = AutoencoderEmbedder(**SMALL)
    skvae.tl.embed(backed, every_gene, use_highly_variable=False)
    assert every_gene.n_features_in_ == 60


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"key_added": "a/b"}, ValueError, "cannot be written to an h5ad file"),
        ({"key_added": ""}, ValueError, "cannot be written to an h5ad file"),
        ({"key_added": b"bytes"}, TypeError, "key_added must be a string"),
        ({"key_added": 5}, TypeError, "key_added must be a string"),
        ({"use_highly_variable": "yes"}, TypeError, "use_highly_variable must be True, False or None"),
    ],
)
def test_arguments_are_checked_before_any_training(adata, kwargs, error, message):
    estimator = AutoencoderEmbedder(**SMALL)
    with pytest.raises(error, match=message):
        skvae.tl.embed(adata, estimator, **kwargs)
    assert not hasattr(estimator, "module_") and not adata.obsm


def test_highly_variable_flags_stored_as_strings_are_refused(adata):
    adata.var["highly_variable"] = np.where(np.arange(60) < 20, "True", "False")
    with pytest.raises(ValueError, match="not booleans .*select every gene"):
        skvae.tl.embed(adata, AutoencoderEmbedder(**SMALL))


def test_duplicate_gene_names_are_refused(adata):
    adata.var_names = [f"gene{i % 59}" for i in range(60)]
    with pytest.raises(ValueError, match=r"duplicates \(e.g. \['gene0'\]\).*var_names_make_unique"):
        skvae.tl.embed(adata, AutoencoderEmbedder(**SMALL))


def test_any_scikit_learn_transformer_embeds_for_comparison(adata):
    from sklearn.decomposition import PCA
    from sklearn.pipeline import make_pipeline

    skvae.tl.embed(adata, PCA(5), key_added="X_pca5")
    skvae.tl.embed(adata, make_pipeline(PCA(4)), key_added="X_pipe")
    assert adata.obsm["X_pca5"].shape == (150, 5) and adata.uns["X_pca5"]["estimator"] == "PCA"
    assert (np.diff(adata.uns["X_pca5"]["variance"]) <= 0).all()  # PCA's columns, most variable first
    assert adata.obsm["X_pipe"].shape == (150, 4)
    for estimator in (None, PCA, "pca"):
        with pytest.raises(TypeError, match="estimator must be a scikit-learn transformer instance"):
            skvae.tl.embed(adata, estimator)
    adata.obs["sample"] = np.arange(150) % 2
    with pytest.raises(ValueError, match="batch_key was given, but PCA takes no batch"):
        skvae.tl.embed(adata, PCA(5), batch_key="sample", key_added="X_pca_batch")
    assert "X_pca_batch" not in adata.obsm


def test_a_backed_layer_that_is_not_raw_counts_is_refused_as_in_memory(adata, tmp_path):
    path = tmp_path / "lognorm.h5ad"
    anndata.AnnData(adata.X, var=adata.var).write_h5ad(path)  # log-normalised values in X
    backed = anndata.read_h5ad(path, backed="r")
    with pytest.raises(ValueError, match="adata.X does not hold raw counts"):
        skvae.tl.embed(backed, BetaVAEEmbedder(**SMALL, likelihood="nb"))


def test_an_estimator_that_selects_its_genes_gets_every_gene_despite_scanpys_flags(adata):
    adata.var["highly_variable"] = np.arange(60) < 20
    pipeline = make_count_embedder(n_top_genes=30, max_epochs=2, random_state=0)
    skvae.tl.embed(adata, pipeline, layer="counts")
    assert pipeline.n_features_in_ == 60 and not adata.uns["skvae"]["use_highly_variable"]
    with pytest.warns(UserWarning, match="selects its genes itself"):
        skvae.tl.embed(adata, make_count_embedder(n_top_genes=10, max_epochs=2), layer="counts",
                       use_highly_variable=True)


def test_annotate_fits_names_maps_and_refuses_what_it_cannot_do():
    import anndata

    from skvae import BetaVAEClassifier
    from skvae.tl import annotate

    rng = np.random.RandomState(0)
    types = rng.randint(3, size=400)
    sample = np.where(np.arange(400) < 300, "ref", "new")
    counts = rng.poisson(rng.gamma(0.4, 2.0, size=(3, 60))[types] * np.where(sample == "new", 1.5, 1.0)[:, None])
    obs = pd.DataFrame({"cell_type": pd.Series(np.array(["B", "NK", "T"])[types]).where(sample == "ref").to_numpy(),
                        "sample": sample}, index=[f"c{i}" for i in range(400)])
    adata = anndata.AnnData(counts.astype(np.float32), obs=obs)
    reference, query = adata[:300].copy(), adata[300:].copy()
    model = BetaVAEClassifier(likelihood="nb", n_components=4, hidden_layer_sizes=(16,), max_epochs=40, random_state=0)
    with pytest.raises(ValueError, match="labels_key"):
        annotate(reference, model)
    with pytest.raises(TypeError, match="BetaVAEClassifier"):
        annotate(reference, BetaVAEEmbedder(max_epochs=1))
    with pytest.raises(ValueError, match="map_query=True"):
        annotate(reference, model, labels_key="cell_type", map_query=True)
    annotate(reference, model, labels_key="cell_type", batch_key="sample")
    before = reference.obsm["X_skvae"].copy()
    annotate(reference, model, batch_key="sample", map_query=True)  # nothing new to map: names only
    assert not hasattr(model, "n_reference_categories_")
    annotate(query, model, batch_key="sample", map_query=True, key_added="mapped")
    assert model.batch_categories_.tolist() == ["ref", "new"]
    annotate(reference, model, batch_key="sample")
    np.testing.assert_array_equal(reference.obsm["X_skvae"], before)  # the reference does not move
    columns = ["mapped_prediction", "mapped_probability", "mapped_typicality", "mapped_unknown", "mapped_label"]
    assert set(columns) <= set(query.obs.columns) and "X_mapped" in query.obsm
    assert list(query.obsm["mapped_probabilities"].columns) == ["B", "NK", "T"]
    # what annotate writes is what the classifier's own methods give
    np.testing.assert_array_equal(query.obsm["mapped_probabilities"].to_numpy(),
                                  model.predict_proba(query.X, batch=query.obs["sample"].to_numpy()))
    np.testing.assert_array_equal(query.obs["mapped_typicality"].to_numpy(),
                                  model.typicality(query.X, batch=query.obs["sample"].to_numpy()))
    assert (query.obs["mapped_prediction"].astype(str) == np.array(["B", "NK", "T"])[types[300:]]).mean() > 0.8
    assert set(query.obs["mapped_label"].cat.categories) == {"B", "NK", "T", "unknown"}
