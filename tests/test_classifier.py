"""BetaVAEClassifier: semi-supervised labels, predictions, the unknown-type rule, and the ways it is fitted."""

import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.model_selection import GridSearchCV

from skvae import BetaVAEClassifier, make_count_classifier
from skvae.classifier import split_labels

TYPES = np.array(["B", "Mono", "NK", "T"], dtype=object)


def _cells(n=600, n_genes=40, n_types=4, seed=0):
    """Counts of ``n_types`` cell types in two batches (a per-gene batch effect), and each cell's type and batch."""
    rng = np.random.RandomState(seed)
    types = rng.randint(n_types, size=n)
    batch = rng.randint(2, size=n)
    profiles = rng.gamma(0.4, 3.0, size=(n_types, n_genes))
    effect = np.exp(rng.normal(0.0, 0.4, size=(2, n_genes)))
    counts = rng.poisson(profiles[types] * effect[batch] * 2).astype(np.float32)
    return counts, TYPES[types], np.array(["b1", "b2"], dtype=object)[batch]


def _model(**settings):
    return BetaVAEClassifier(**{"likelihood": "nb", "n_components": 4, "hidden_layer_sizes": (32,), "max_epochs": 40,
                                "random_state": 0, **settings})


@pytest.fixture(scope="module")
def fitted():
    counts, types, batch = _cells()
    given = types.copy()
    given[::3] = None  # a third of the cells unlabelled
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = _model().fit(counts, given, batch=batch)
    return model, counts, types, batch


@settings(max_examples=50, deadline=None)
@given(st.lists(st.sampled_from(["a", "b", "c", None]), min_size=1, max_size=30))
def test_strings_mark_unlabelled_cells_with_none_or_nan(values):
    as_nan = [np.nan if value is None else value for value in values]
    for y in (np.array(values, dtype=object), pd.Series(as_nan, dtype=object), pd.Categorical(values)):
        labels, labelled = split_labels(y)
        assert labelled.tolist() == [value is not None for value in values]
        assert labels[labelled].tolist() == [value for value in values if value is not None]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(-1, 4), min_size=1, max_size=30))
def test_integers_mark_unlabelled_cells_with_minus_one(values):
    for y in (np.array(values), np.array(values, dtype=float), np.array(values, dtype=object), pd.Series(values)):
        labels, labelled = split_labels(y)
        assert labelled.tolist() == [value != -1 for value in values]
        assert labels[labelled].tolist() == [value for value in values if value != -1]


def test_it_learns_types_from_labelled_cells_and_names_the_unlabelled(fitted):
    model, counts, types, batch = fitted
    assert model.classes_.tolist() == TYPES.tolist()
    unlabelled = np.arange(len(types)) % 3 == 0
    predicted = model.predict(counts[unlabelled])
    assert (predicted == types[unlabelled]).mean() > 0.95
    probabilities = model.predict_proba(counts[:10])
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0)
    assert model.transform(counts[:10]).shape == (10, 4)
    # score is the accuracy over the labelled cells of y; unlabelled ones are left out
    y = types.copy()
    y[:300] = None
    assert model.score(counts, y) == pytest.approx((model.predict(counts[300:]) == types[300:]).mean())


def test_the_reference_flags_about_the_threshold_share_of_itself(fitted):
    model, counts, types, batch = fitted
    labelled = np.arange(len(types)) % 3 != 0
    typical = model.typicality(counts[labelled])
    assert ((typical >= 0) & (typical <= 1)).all()
    # a conformal p-value: on the cells it was calibrated on, about the threshold's share falls below it
    assert model.is_unknown(counts[labelled]).mean() < 0.05


def test_a_type_the_reference_lacks_is_flagged_unknown():
    counts, types, batch = _cells(n=800, n_types=4, seed=1)
    reference = types != "NK"  # NK cells are not in the reference's labels
    given = np.where(reference, types, None).astype(object)
    given[np.flatnonzero(reference)[::4]] = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = _model(max_epochs=60).fit(counts, given, batch=batch)
    unknown = model.is_unknown(counts)
    assert "NK" not in model.classes_
    assert unknown[~reference].mean() > 0.8
    assert unknown[reference].mean() < 0.2


@pytest.mark.parametrize("y, error, match", [
    (np.full(600, None, dtype=object), ValueError, "labels no cell"),
    (np.full(600, -1), ValueError, "labels no cell"),
    (np.array(["T"] * 300 + [None] * 300, dtype=object), ValueError, "one class"),
    (np.array(["T", "B", "nan"] * 200), ValueError, "missing value turned into text"),
    (np.array(["T", "B", "None", None] * 150, dtype=object), ValueError, "missing value turned into text"),
    (np.array(["T", "B", 3] * 200, dtype=object), TypeError, "mixes labels"),
    (np.array(["T", "B"] * 200, dtype=object), ValueError, "400 labels for 600 cells"),
    (None, ValueError, "requires y"),
])
def test_bad_labels_get_clear_errors(y, error, match):
    counts, _, _ = _cells()
    with pytest.raises(error, match=match):
        _model(max_epochs=1).fit(counts, y)


def test_a_failed_fit_leaves_the_fitted_classifier_as_it_was(fitted):
    model, counts, types, batch = fitted
    before = model.predict_proba(counts[:20])
    with pytest.raises(ValueError, match="one class"):
        model.fit(counts, np.array(["T"] * len(types), dtype=object), batch=batch)
    assert model.classes_.tolist() == TYPES.tolist()
    np.testing.assert_array_equal(model.predict_proba(counts[:20]), before)


def test_save_and_load_keep_predictions_and_typicality(fitted, tmp_path):
    model, counts, types, batch = fitted
    model.save(tmp_path / "classifier.pt")
    loaded = BetaVAEClassifier.load(tmp_path / "classifier.pt")
    np.testing.assert_array_equal(loaded.predict(counts), model.predict(counts))
    np.testing.assert_array_equal(loaded.predict_proba(counts), model.predict_proba(counts))
    np.testing.assert_array_equal(loaded.typicality(counts), model.typicality(counts))


def test_same_random_state_same_predictions_and_sparse_input_as_dense():
    counts, types, batch = _cells(n=300)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first = _model(max_epochs=5).fit(counts, types, batch=batch)
        second = _model(max_epochs=5).fit(sp.csr_matrix(counts), types, batch=batch)
    np.testing.assert_allclose(first.predict_proba(counts), second.predict_proba(sp.csr_matrix(counts)), atol=1e-5)


def test_partial_fit_needs_classes_first_and_refuses_labels_never_seen():
    counts, types, batch = _cells()
    model = _model()
    with pytest.raises(ValueError, match="classes="):
        model.partial_fit(counts[:300], types[:300], batch=batch[:300])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.partial_fit(counts[:300], types[:300], classes=TYPES, batch=batch[:300])
        # a chunk of unlabelled cells and one type only: the other types keep what the first chunk taught
        chunk = np.where(types[300:] == "T", "T", None).astype(object)
        model.partial_fit(counts[300:], chunk, batch=batch[300:])
    assert model.n_iter_ == 2
    assert not np.isnan(model.class_means_).any()
    with pytest.raises(ValueError, match="never seen"):
        model.partial_fit(counts[:10], np.array(["T", "DC"] * 5, dtype=object), batch=batch[:10])


def test_a_classifier_that_has_seen_no_labelled_cell_says_so():
    counts, types, batch = _cells(n=200)
    model = _model(max_epochs=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.partial_fit(counts, np.full(200, None, dtype=object), classes=TYPES, batch=batch)
    with pytest.raises(ValueError, match="no labelled cell yet"):
        model.predict(counts)
    with pytest.raises(ValueError, match="no labelled cell yet"):
        model.typicality(counts)


def test_the_count_recipe_is_a_pipeline_that_predicts_with_batches():
    counts, types, batch = _cells()
    y = np.where(np.arange(len(types)) % 2 == 0, types, None).astype(object)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = make_count_classifier(n_top_genes=30, max_epochs=40, random_state=0).fit(counts, y, batch=batch)
    assert model["classifier"].batch_categories_.tolist() == ["b1", "b2"]
    assert (model.predict(counts, batch=batch)[1::2] == types[1::2]).mean() > 0.9


def test_grid_search_over_beta_maximises_the_accuracy():
    counts, types, _ = _cells(n=300)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        search = GridSearchCV(_model(max_epochs=10), {"beta": [0.5, 2.0]}, cv=2).fit(counts, types)
    assert 0.0 <= search.best_score_ <= 1.0
    assert search.best_estimator_.score(counts, types) == pytest.approx(
        (search.predict(counts) == types).mean())


def test_a_backed_file_trains_as_the_matrix_in_memory(tmp_path):
    anndata = pytest.importorskip("anndata")
    counts, types, batch = _cells(n=300)
    y = np.where(np.arange(300) % 4 == 0, None, types).astype(object)
    path = tmp_path / "counts.h5ad"
    anndata.AnnData(sp.csr_matrix(counts)).write_h5ad(path)
    options = {"max_epochs": 5, "shuffle_block_size": 1}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        in_memory = _model(**options).fit(sp.csr_matrix(counts), y, batch=batch)
        backed = _model(**options).fit(anndata.read_h5ad(path, backed="r").X, y, batch=batch)
    np.testing.assert_allclose(backed.predict_proba(counts), in_memory.predict_proba(counts), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(backed.typicality(counts), in_memory.typicality(counts), atol=1e-3)
