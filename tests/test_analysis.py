"""Analyses over a fitted model (skvae.analysis): they read it through its public methods and return values."""

import warnings

import numpy as np
import pytest

from skvae import BetaVAEClassifier, BetaVAEEmbedder, make_count_embedder
from skvae.analysis import corrected_expression, type_statistics


def _fitted(cls=BetaVAEEmbedder, y=None, **options):
    rng = np.random.RandomState(0)
    types = np.arange(120) % 3
    counts = rng.poisson(rng.gamma(0.6, 3.0, size=(3, 50))[types]).astype(np.float64)
    batch = np.where(np.arange(120) < 60, "a", "b")
    counts[batch == "b", :10] *= 3  # a batch effect on 10 genes
    model = cls(n_components=2, hidden_layer_sizes=(16,), likelihood="nb", max_epochs=20, random_state=0, **options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(counts, *(() if y is None else (types,)), batch=batch)
    return model, counts, batch, types


def test_corrected_expression_decodes_every_cell_in_the_batch_asked_for():
    model, counts, batch, _ = _fitted()
    in_a = corrected_expression(model, counts, to_batch="a")
    np.testing.assert_array_equal(in_a, model.inverse_transform(model.transform(counts), batch="a"))
    both = corrected_expression(model, counts, to_batch=["a", "b"])
    np.testing.assert_allclose(both, (in_a + corrected_expression(model, counts, to_batch="b")) / 2, rtol=1e-6)
    assert in_a.shape == counts.shape and (in_a >= 0).all()


def test_corrected_expression_says_what_a_model_needs():
    model, counts, _, _ = _fitted()
    with pytest.raises(ValueError, match="give to_batch"):
        corrected_expression(model, counts)
    with pytest.raises(ValueError, match="empty list"):
        corrected_expression(model, counts, to_batch=[])
    with pytest.raises(ValueError, match="categories not seen in fit"):
        corrected_expression(model, counts, to_batch="z")
    plain = BetaVAEEmbedder(n_components=2, hidden_layer_sizes=(16,), likelihood="nb", max_epochs=2,
                            random_state=0).fit(counts)
    with pytest.raises(ValueError, match="fitted without batches"):
        corrected_expression(plain, counts, to_batch="a")
    assert corrected_expression(plain, counts).shape == counts.shape


def test_corrected_expression_of_a_pipeline_is_of_its_selected_genes():
    _, counts, batch, _ = _fitted()
    recipe = make_count_embedder(n_top_genes=20, max_epochs=2, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        recipe.fit(counts, batch=batch)
    assert corrected_expression(recipe, counts, to_batch="a").shape == (120, 20)


def test_type_statistics_read_the_classifier_as_it_learned_the_types():
    model, _, _, types = _fitted(BetaVAEClassifier, y=True)
    table = type_statistics(model)
    assert table.index.tolist() == [0, 1, 2] and table["n_labelled"].tolist() == [40, 40, 40]
    assert (table["spread"] > 0).all() and np.isfinite(table["median_distance"]).all()
