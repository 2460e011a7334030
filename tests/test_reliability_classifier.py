"""Reliability, fourth pass: the classifier, the recipe pipeline, saved files and backed data give no silent or
unclear answer. One test (or more) per finding of the adversarial pass; each failed before the fix."""

import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import sklearn
import torch
from sklearn.model_selection import GridSearchCV, cross_val_score

import skvae
from skvae import BetaVAEClassifier, BetaVAEEmbedder, EmbeddingPipeline, make_count_classifier, make_count_embedder
from skvae._persistence import atomic_torch_save
from skvae.classifier import split_labels
from skvae.preprocessing import HighlyVariableGenes

anndata = pytest.importorskip("anndata")

TYPES = np.array(["B", "Mono", "NK", "T"], dtype=object)


def _cells(n=400, n_genes=40, seed=0):
    rng = np.random.RandomState(seed)
    types = rng.randint(4, size=n)
    batch = rng.randint(2, size=n)
    profiles = rng.gamma(0.4, 3.0, size=(4, n_genes))
    effect = np.exp(rng.normal(0.0, 0.4, size=(2, n_genes)))
    counts = rng.poisson(profiles[types] * effect[batch] * 2).astype(np.float32)
    return counts, TYPES[types], np.array(["b1", "b2"], dtype=object)[batch]


def _model(**settings):
    return BetaVAEClassifier(**{"likelihood": "nb", "n_components": 4, "hidden_layer_sizes": (32,), "max_epochs": 15,
                                "random_state": 0, **settings})


def _quietly(call, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return call(*args, **kwargs)


@pytest.fixture(scope="module")
def fitted():
    counts, types, batch = _cells()
    return _quietly(_model().fit, counts, types, batch=batch), counts, types, batch


@pytest.fixture(scope="module")
def recipe():
    counts, types, batch = _cells()
    model = _quietly(make_count_classifier(n_top_genes=30, max_epochs=10, random_state=0).fit, counts, types,
                     batch=batch)
    return model, counts, types, batch


# 1. the recommended classifier scores as scikit-learn's Pipeline does: its accuracy
def test_the_recipe_classifier_scores_its_accuracy_and_a_grid_search_over_it_is_finite(recipe):
    model, counts, types, batch = recipe
    assert model.score(counts, types) == pytest.approx((model.predict(counts) == types).mean())
    assert model.score(counts, types, batch=batch) == model.score(counts, types)
    weights = np.where(types == "B", 1.0, 0.0)
    assert model.score(counts, types, sample_weight=weights) == pytest.approx(
        (model.predict(counts)[types == "B"] == "B").mean())
    search = _quietly(GridSearchCV(make_count_classifier(n_top_genes=30, max_epochs=3, random_state=0),
                                   {"classifier__beta": [0.5, 2.0]}, cv=2, error_score="raise").fit, counts, types)
    assert np.isfinite(search.cv_results_["mean_test_score"]).all()
    scores = _quietly(cross_val_score, make_count_classifier(n_top_genes=30, max_epochs=3, random_state=0), counts,
                      types, cv=2, error_score="raise")
    assert np.isfinite(scores).all() and (scores > 0.25).all()
    # an embedder's pipeline still scores the evidence lower bound, whatever y
    embedder = _quietly(make_count_embedder(n_top_genes=30, max_epochs=2, random_state=0).fit, counts)
    assert embedder.score(counts, types) == embedder.score(counts)


# 2. a reference type named "unknown" is refused before anything is written
def test_annotate_refuses_a_type_named_unknown_and_leaves_adata_as_it_was(fitted):
    _, counts, types, _ = fitted
    labels = np.where(types == "NK", "unknown", types).astype(object)
    adata = anndata.AnnData(counts, obs=pd.DataFrame({"cell_type": labels}, index=[f"c{i}" for i in range(len(labels))]))
    before = (list(adata.obs.columns), list(adata.obsm.keys()), list(adata.uns.keys()))
    model = _model(max_epochs=2)
    with pytest.raises(ValueError, match="type named 'unknown'.*Rename that type first"):
        skvae.tl.annotate(adata, model, labels_key="cell_type")
    assert (list(adata.obs.columns), list(adata.obsm.keys()), list(adata.uns.keys())) == before
    assert not hasattr(model, "classes_")  # refused before fitting
    # a fitted classifier that knows such a type: refused too, before its cells are embedded
    known = _quietly(_model(max_epochs=2).fit, counts, labels)
    with pytest.raises(ValueError, match="classes_ holds a cell type named 'unknown'"):
        skvae.tl.annotate(adata, known)
    assert (list(adata.obs.columns), list(adata.obsm.keys()), list(adata.uns.keys())) == before


def test_a_failed_write_leaves_adata_as_it_was(fitted, monkeypatch):
    model, counts, _, _ = fitted
    adata = anndata.AnnData(counts, obs=pd.DataFrame(index=[f"c{i}" for i in range(len(counts))]))
    adata.obs["skvae_prediction"] = "earlier"
    original = pd.DataFrame.__setitem__

    def fail_at_the_label(frame, key, value):
        if key == "skvae_label":
            raise RuntimeError("disk full")
        return original(frame, key, value)

    monkeypatch.setattr(pd.DataFrame, "__setitem__", fail_at_the_label)
    with pytest.raises(RuntimeError, match="disk full"):
        skvae.tl.annotate(adata, model)
    monkeypatch.undo()
    assert list(adata.obs.columns) == ["skvae_prediction"] and (adata.obs["skvae_prediction"] == "earlier").all()
    assert not adata.obsm and "skvae" not in adata.uns


# 3. booleans: the same labels in any container give the same classes and predictions
@pytest.mark.parametrize("make", [
    lambda flags: pd.Series(flags),
    lambda flags: pd.Series(flags, dtype="boolean"),
    lambda flags: pd.Series(flags, dtype=object),
    lambda flags: flags.astype(object),
])
def test_boolean_labels_give_the_same_answer_in_any_container(make):
    counts, types, _ = _cells(n=200)
    flags = types == "B"
    reference = _quietly(_model(max_epochs=3).fit, counts, flags)
    model = _quietly(_model(max_epochs=3).fit, counts, make(flags))
    assert model.classes_.dtype == bool and model.classes_.tolist() == [False, True]
    np.testing.assert_array_equal(model.predict(counts), reference.predict(counts))
    # with missing values (pandas' NA or None) the others are unlabelled
    with_missing = pd.Series(flags, dtype="boolean")
    with_missing[:50] = pd.NA
    labels, labelled = split_labels(with_missing)
    assert labels.dtype == bool and labelled.tolist() == [False] * 50 + [True] * 150
    labels, labelled = split_labels(pd.Series([True, None, False], dtype=object))
    assert labels[labelled].tolist() == [True, False] and labelled.tolist() == [True, False, True]


# 4. a classification_weight set after fit applies from the next call (as beta), and the save agrees
def test_a_classification_weight_set_after_fit_applies_from_the_next_partial_fit(tmp_path):
    counts, types, batch = _cells(n=200)
    kept, changed = (_quietly(_model(max_epochs=2).fit, counts, types, batch=batch) for _ in range(2))
    changed.set_params(classification_weight=20.0)
    for model in (kept, changed):
        _quietly(model.partial_fit, counts, types, batch=batch)
    assert not np.allclose(changed.transform(counts), kept.transform(counts))
    # the module holds no copy of the weight that a save could record stale: the parameter is the one value
    assert not hasattr(changed.module_, "classification_weight")
    changed.save(tmp_path / "model.pt")
    assert BetaVAEClassifier.load(tmp_path / "model.pt").classification_weight == 20.0


# 5. map_query's max_epochs is checked as the estimators' own parameters, before anything changes
@pytest.mark.parametrize("max_epochs", [0, -3, 2.5, "10", None, True])
def test_map_query_refuses_a_bad_max_epochs_before_changing_the_model(fitted, max_epochs):
    model, counts, _, _ = fitted
    before = model.transform(counts)
    with pytest.raises(ValueError, match="max_epochs must be an int >= 1 or 'auto'"):
        model.map_query(counts[:50], batch=np.full(50, "b3"), max_epochs=max_epochs)
    assert model.batch_categories_.tolist() == ["b1", "b2"]
    np.testing.assert_array_equal(model.transform(counts), before)


# 6. score's y and sample_weight: wrong lengths, or no labelled cell
def test_score_names_a_wrong_length_or_a_y_without_labels(fitted):
    model, counts, types, _ = fitted
    with pytest.raises(ValueError, match="y has 10 labels for 400 cells of X"):
        model.score(counts, types[:10])
    with pytest.raises(ValueError, match="sample_weight has 3 weights for 400 cells of X"):
        model.score(counts, types, sample_weight=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="y labels no cell"):
        model.score(counts, np.full(len(types), None, dtype=object))


# 7. partial_fit's classes
@pytest.mark.parametrize("classes, match", [
    (np.array(["B", None], dtype=object), "classes holds 1 missing values"),
    ([], "classes is empty"),
    (["B", "nan"], "classes holds 1 labels that read \\['nan'\\]"),
    ([0, -1, 1], "classes holds 1 missing values"),
])
def test_partial_fit_refuses_classes_with_missing_or_no_values(classes, match):
    counts, types, _ = _cells(n=100)
    model = _model(max_epochs=1)
    with pytest.raises(ValueError, match=match):
        model.partial_fit(counts, types, classes=classes)
    assert not hasattr(model, "classes_")


def test_labels_of_another_kind_than_the_classes_say_so():
    counts, types, _ = _cells(n=100)
    codes = np.searchsorted(TYPES, types)
    model = _model(max_epochs=1)
    with pytest.raises(ValueError, match="y's labels are number .*classifier's classes are text"):
        model.partial_fit(counts, codes, classes=np.array(["0", "1", "2", "3"]))


# 8. labels coded -1/+1
def test_labels_coded_minus_one_and_one_say_that_minus_one_marks_unlabelled():
    counts, types, _ = _cells(n=100)
    with pytest.raises(ValueError, match="one class \\(1\\).*-1 marks an unlabelled cell"):
        _model(max_epochs=1).fit(counts, np.where(types == "B", 1, -1))


# 10. string labels keep their dtype through a save
def test_save_and_load_keep_the_classes_and_predictions_dtypes(fitted, tmp_path):
    model = fitted[0]
    counts = fitted[1]
    model.save(tmp_path / "model.pt")
    loaded = BetaVAEClassifier.load(tmp_path / "model.pt")
    assert loaded.classes_.dtype == model.classes_.dtype == object
    assert loaded.predict(counts).dtype == model.predict(counts).dtype
    np.testing.assert_array_equal(loaded.predict(counts), model.predict(counts))


# 11. the wrong loader names the right one
def test_loading_with_the_wrong_loader_names_the_one_that_reads_the_file(fitted, recipe, tmp_path):
    fitted[0].save(tmp_path / "estimator.pt")
    recipe[0].save(tmp_path / "pipeline.pt")
    with pytest.raises(ValueError, match="holds EmbeddingPipeline, not BetaVAEClassifier: load it with "
                                         "EmbeddingPipeline.load"):
        BetaVAEClassifier.load(tmp_path / "pipeline.pt")
    with pytest.raises(ValueError, match="holds BetaVAEClassifier, not EmbeddingPipeline: load it with "
                                         "BetaVAEClassifier.load"):
        EmbeddingPipeline.load(tmp_path / "estimator.pt")
    with pytest.raises(ValueError, match="load it with BetaVAEClassifier.load"):
        BetaVAEEmbedder.load(tmp_path / "estimator.pt")


# 12. a classifier's fields are checked at load, as its parameters and weights are
def _damaged(model, **changes):
    state = model.saved_state()
    attributes = state["attributes"]
    for name, change in changes.items():
        if change is None:
            del attributes[name]
        else:
            value = attributes[name]
            attributes[name] = {**value, "values": change(np.asarray(value["values"], dtype=object
                                                                     if value["dtype"] == "object" else value["dtype"])
                                                          ).tolist()}
    return state


def _negated_first(values):
    values = values.copy()
    values[0] = -np.abs(values[0]) - np.eye(values.shape[1])
    return values


@pytest.mark.parametrize("changes, match", [
    ({"classes_": lambda c: np.array(["B", "B", "NK", "T"], dtype=object)}, "classes are not two or more distinct"),
    ({"classes_": lambda c: c[::-1]}, "classes are not two or more distinct"),
    ({"class_precisions_": lambda p: p[:, :2, :2]}, "not of the shapes"),
    ({"class_precisions_": _negated_first}, "not a symmetric, positive semi-definite"),
    ({"class_means_": lambda m: np.where(np.arange(m.shape[0])[:, None] == 1, np.inf, m)}, "not all finite"),
    ({"class_distance_quantiles_": lambda q: q[:, ::-1]}, "negative or decreasing"),
    ({"class_means_": None}, "fields \\['class_means_'\\] are missing"),
    ({"classes_": None}, "fields \\['classes_'\\] are missing"),
])
def test_a_save_with_malformed_type_statistics_is_refused_at_load(fitted, tmp_path, changes, match):
    path = tmp_path / "damaged.pt"
    atomic_torch_save(_damaged(fitted[0], **changes), path)  # a valid checksum over the malformed fields
    with pytest.raises(ValueError, match=f"damaged: its classifier's .*{match}"):
        BetaVAEClassifier.load(path)


def test_a_classifier_file_with_a_v1_header_is_refused(fitted, tmp_path):
    state = {**fitted[0].saved_state(), "format": "skvae-estimator-v1"}
    torch.save(state, tmp_path / "v1.pt")
    with pytest.raises(ValueError, match="header 'skvae-estimator-v1', older than any BetaVAEClassifier"):
        BetaVAEClassifier.load(tmp_path / "v1.pt")


# 13. the recipe routes batch= to predict and the classifier's methods, with metadata routing on as off
def test_the_recipe_takes_batch_in_every_method_under_metadata_routing(recipe):
    model, counts, _, batch = recipe
    expected = {name: getattr(model, name)(counts, batch=batch) for name in
                ("predict", "predict_proba", "predict_log_proba", "typicality", "is_unknown")}
    with sklearn.config_context(enable_metadata_routing=True):
        for name, value in expected.items():
            np.testing.assert_array_equal(getattr(model, name)(counts, batch=batch), value)
    selected = model["genes"].transform(counts)
    np.testing.assert_array_equal(expected["typicality"], model["classifier"].typicality(selected, batch=batch))
    assert not hasattr(make_count_embedder(), "predict")  # an embedder's pipeline has no classifier's methods


def test_after_mapping_tl_names_batch_key_when_it_is_missing(fitted):
    model, counts, _, batch = fitted
    model = _quietly(_model(max_epochs=3).fit, counts, _cells()[1], batch=batch)
    query = anndata.AnnData(counts[:60], obs=pd.DataFrame({"sample": ["new"] * 60}, index=[f"q{i}" for i in range(60)]))
    _quietly(skvae.tl.annotate, query, model, batch_key="sample", map_query=True)
    with pytest.raises(ValueError, match="pass batch_key="):
        skvae.tl.annotate(query, model)
    with pytest.raises(ValueError, match="pass batch_key="):
        skvae.tl.embed(query, model)


# 14. the recipe trains from a backed file: the gene selection streams over it
def test_gene_selection_streams_over_a_backed_file_and_selects_the_genes_of_memory(tmp_path, monkeypatch):
    import skvae.train.data

    counts, _, batch = _cells(n=300, n_genes=80)
    path = tmp_path / "cells.h5ad"
    anndata.AnnData(sp.csr_matrix(counts)).write_h5ad(path)
    for given in (None, batch):
        whole = HighlyVariableGenes(n_top_genes=20).fit(sp.csr_matrix(counts), batch=given)  # one block
        with monkeypatch.context() as patch:
            patch.setattr(skvae.train.data, "_VALUE_BLOCK", 500)  # many blocks of a few rows each
            backed = HighlyVariableGenes(n_top_genes=20).fit(anndata.read_h5ad(path, backed="r").X, batch=given)
            in_blocks = HighlyVariableGenes(n_top_genes=20).fit(counts, batch=given)  # dense, in memory
        for selection in (backed, in_blocks):
            np.testing.assert_array_equal(selection.get_support(), whole.get_support())
            for name in ("means_", "variances_", "variances_norm_"):
                np.testing.assert_allclose(getattr(selection, name), getattr(whole, name), rtol=1e-9)


def test_the_recipe_embeds_a_backed_file_as_the_matrix_in_memory(tmp_path):
    counts, _, batch = _cells(n=300, n_genes=80)
    path = tmp_path / "cells.h5ad"
    anndata.AnnData(sp.csr_matrix(counts), obs=pd.DataFrame({"sample": batch}, index=[f"c{i}" for i in range(300)]),
                    var=pd.DataFrame(index=[f"g{i}" for i in range(80)])).write_h5ad(path)
    options = dict(n_top_genes=30, max_epochs=3, random_state=0, shuffle_block_size=1)
    backed = anndata.read_h5ad(path, backed="r")
    in_memory = backed.to_memory()
    on_disk, held = make_count_embedder(**options), make_count_embedder(**options)
    skvae.tl.embed(backed, on_disk, batch_key="sample")
    skvae.tl.embed(in_memory, held, batch_key="sample")
    np.testing.assert_array_equal(on_disk["genes"].get_support(), held["genes"].get_support())
    np.testing.assert_allclose(backed.obsm["X_skvae"], in_memory.obsm["X_skvae"], rtol=1e-4, atol=1e-5)
    # and the fitted recipe embeds the file again, a minibatch at a time
    skvae.tl.embed(backed, on_disk, batch_key="sample", key_added="again")
    np.testing.assert_allclose(backed.obsm["again"], backed.obsm["X_skvae"], rtol=1e-5, atol=1e-6)


# 15. tl shows a fit's progress (skvae.settings.verbosity), the estimators stay silent
def test_tl_shows_progress_as_settings_say_and_leaves_the_estimators_verbose_alone(capsys, monkeypatch):
    counts, _, _ = _cells(n=100)
    adata = anndata.AnnData(counts)
    monkeypatch.setattr(skvae.settings, "_verbosity", 2)
    model = BetaVAEEmbedder(likelihood="nb", n_components=2, max_epochs=2, random_state=0)
    skvae.tl.embed(adata, model)
    assert "Epoch 2/2" in capsys.readouterr().out
    assert model.verbose == 0  # set back
    skvae.settings.verbosity = 0
    skvae.tl.embed(adata, BetaVAEEmbedder(likelihood="nb", n_components=2, max_epochs=2, random_state=0))
    assert capsys.readouterr().out == ""
    BetaVAEEmbedder(likelihood="nb", n_components=2, max_epochs=2, random_state=0).fit(counts)  # silent by default
    assert capsys.readouterr().out == ""
    for bad in (3, -1, True, "1"):
        with pytest.raises(ValueError, match="verbosity must be 0"):
            skvae.settings.verbosity = bad


@pytest.mark.parametrize("columns", [[3, 5, 7, 29], [29, 0, 4], list(range(30)), []])
def test_backed_columns_serve_the_columns_of_the_file_in_their_order(tmp_path, columns):
    from skvae.train.data import BackedColumns, RowData

    X = sp.random(50, 30, density=0.3, format="csr", random_state=0, dtype=np.float32)
    anndata.AnnData(X).write_h5ad(tmp_path / "cells.h5ad")
    selected = BackedColumns(anndata.read_h5ad(tmp_path / "cells.h5ad", backed="r").X, columns)
    assert selected.shape == (50, len(columns))
    rows = RowData.from_input(selected).take(np.array([4, 1, 30, 4])).in_memory().X
    np.testing.assert_array_equal(rows.toarray(), X[[4, 1, 30, 4]][:, columns].toarray())
    assert rows.has_sorted_indices
    twice = BackedColumns(selected, [0] if columns else [])  # a selection of a selection: of the file itself
    np.testing.assert_array_equal(twice.columns, np.asarray(columns[:1], dtype=np.int64))
    with pytest.raises(ValueError, match="positions among the matrix's 30 columns"):
        BackedColumns(selected.dataset, [30])
