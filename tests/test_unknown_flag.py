"""The unknown flag where the query differs from the reference: a strong per-gene batch effect, a type the
reference lacks, in the three ways a classifier is used (issue 39); and the flag's edge cases."""

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from skvae import BetaVAEClassifier
from skvae.classifier import _neighbourhood_medians

SETTINGS = dict(likelihood="nb", n_components=6, hidden_layer_sizes=(64,), input_activation=True, batch_norm=True,
                max_epochs=60)


def _shifted(seed, n=1600, n_genes=120, rare=None):
    """Counts of 4 types in a reference and a query batch, each with a per-gene effect exp(N(0, 0.7)) and the query
    5x deeper; the fourth type is in the query only. ``rare``: the query holds that many cells of type 2 only."""
    rng = np.random.RandomState(seed)
    profiles = rng.gamma(0.5, 2.0, size=(4, n_genes))
    effects = np.exp(rng.normal(0.0, 0.7, size=(2, n_genes)))
    batch = np.repeat([0, 1], n // 2)
    types = np.where(batch == 0, rng.randint(3, size=n), rng.randint(4, size=n))
    if rare is not None:
        of_two = np.flatnonzero((batch == 1) & (types == 2))
        types[of_two[rare:]] = rng.choice([0, 1, 3], size=len(of_two) - rare)
    depth = np.where(batch == 0, 1.0, 5.0)[:, None]
    counts = rng.poisson(profiles[types] * effects[batch] * depth).astype(np.float32)
    return counts, types, np.array(["ref", "query"], dtype=object)[batch]


def _flag_rates(model, counts, types, batch, query):
    unknown = model.is_unknown(counts[query], batch=batch[query])
    known = types[query] != 3
    return unknown[known].mean(), unknown[~known].mean()


def _quietly(call, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return call(*args, **kwargs)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("use", ["reference", "joint", "mapped"])
def test_the_flag_holds_under_a_strong_batch_effect(use, seed):
    counts, types, batch = _shifted(seed)
    reference, query = batch == "ref", batch == "query"
    model = BetaVAEClassifier(**SETTINGS, random_state=seed)
    if use == "joint":
        y = np.where(reference, types, -1)
        _quietly(model.fit, counts, y, batch=batch)
    else:
        _quietly(model.fit, counts[reference], types[reference], batch=batch[reference])
        if use == "mapped":
            _quietly(model.map_query, counts[query], batch=batch[query])
    known, absent = _flag_rates(model, counts, types, batch, query)
    assert known <= 0.05 and absent >= 0.8, (known, absent)


def test_a_rare_known_type_in_a_new_technology_is_not_flagged():
    # 30 cells of type 2 in the shifted query: too few for the profile test to tell the technology's shift of the
    # type from a population of its own there (each type's is centred on its own median from 50 cells), so it does
    # not judge them; judged on the batch's centre, seed 0 had flagged all 30
    counts, types, batch = _shifted(0, rare=30)
    reference, query = batch == "ref", batch == "query"
    model = _quietly(BetaVAEClassifier(**SETTINGS, random_state=0).fit, counts[reference], types[reference],
                     batch=batch[reference])
    unknown = model.is_unknown(counts[query], batch=batch[query])
    rare, absent = types[query] == 2, types[query] == 3
    assert rare.sum() == 30 and unknown[rare].mean() <= 0.05 and unknown[absent].mean() >= 0.8


def _three_types(seed=0, n=600, n_genes=40):
    rng = np.random.RandomState(seed)
    types = rng.randint(3, size=n)
    profiles = rng.gamma(0.4, 3.0, size=(3, n_genes))
    return rng.poisson(profiles[types] * 2).astype(np.float32), np.array(["B", "NK", "T"], dtype=object)[types]


def _small(**settings):
    return BetaVAEClassifier(**{"likelihood": "nb", "n_components": 4, "hidden_layer_sizes": (32,), "max_epochs": 30,
                                "random_state": 0, **settings})


def test_a_type_whose_cells_share_one_code_is_predicted_with_a_warning():
    counts, types = _three_types()
    same = np.tile(counts[:1] + 5, (30, 1))  # 30 identical cells: one code
    X, y = np.vstack([counts, same]), np.concatenate([types, np.full(30, "Z", dtype=object)])
    with pytest.warns(UserWarning, match=r"type\(s\) \['Z'\] share one code"):
        model = _small().fit(X, y)
    assert np.isfinite(model.class_precisions_).all() and np.abs(model.class_precisions_[-1]).sum() > 0
    assert (model.predict(same) == "Z").all()  # it was never predicted, its own cells named otherwise
    assert not model.is_unknown(same).any()


def test_partial_fit_without_a_types_labels_warns_that_its_gaussian_is_stale():
    counts, types = _three_types()
    model = _small(max_epochs=1)
    model.partial_fit(counts, types, classes=["B", "NK", "T"])
    with pytest.warns(UserWarning, match=r"without a label of type\(s\) \['B', 'NK', 'T'\]"):
        model.partial_fit(counts, np.full(len(types), None, dtype=object))
    labelled_b = np.where(types == "B", "B", None).astype(object)
    with pytest.warns(UserWarning, match=r"type\(s\) \['NK', 'T'\]"):
        model.partial_fit(counts, labelled_b)


@pytest.mark.parametrize("n_labelled", [1, 2, 5])
def test_a_type_of_few_labelled_cells_flags_none_of_them_and_still_flags_a_far_cell(n_labelled):
    counts, types = _three_types(n=900)
    y = types.copy()
    rare = np.flatnonzero(types == "NK")
    y[rare[n_labelled:]] = None  # NK labelled on a few cells only
    model = _quietly(_small(max_epochs=40).fit, counts, y)
    # a conformal p-value among n labelled cells is at least 1 / (n + 1) for cells as close as the farthest of them
    assert not model.is_unknown(counts[rare[:n_labelled]]).any()
    assert model.class_counts_.tolist()[1] == n_labelled
    # far beyond every labelled cell, the Gaussian's tail still tells (the code of a cell unlike any type)
    codes = model.transform(counts[rare[:1]]) + 100.0
    assert model._scores(codes)[1][0] < model.unknown_threshold


def test_a_classifier_saved_before_class_counts_loads_predicts_and_continues(tmp_path):
    from skvae._persistence import atomic_torch_save

    counts, types = _three_types()
    model = _quietly(_small().fit, counts, types)
    state = model.saved_state()
    # the earlier format: no counts, arrays as bare lists
    state["attributes"] = {name: value["values"] if isinstance(value, dict) else value
                           for name, value in state["attributes"].items() if name != "class_counts_"}
    atomic_torch_save(state, tmp_path / "old.pt")
    loaded = BetaVAEClassifier.load(tmp_path / "old.pt")
    assert not hasattr(loaded, "class_counts_")
    np.testing.assert_array_equal(loaded.predict(counts), model.predict(counts))
    assert ((loaded.typicality(counts) >= 0) & (loaded.typicality(counts) <= 1)).all()
    _quietly(loaded.partial_fit, counts, np.where(types == "B", "B", None).astype(object))
    assert loaded.class_counts_.tolist() == [int((types == "B").sum()), 20_000, 20_000]


def test_the_flag_judges_neighbourhoods_a_lone_unlike_cell_only_with_unknown_neighbors_0():
    counts, types = _three_types(n=900)
    model = _quietly(_small(max_epochs=40).fit, counts, types)
    codes = model.transform(counts)
    far = codes[:1] + 100.0  # the code of one cell unlike any type, among 900 of known types
    with_it = np.vstack([codes, far])
    alone = model.set_params(unknown_neighbors=0)._scores(with_it)[1]
    assert alone[-1] < model.unknown_threshold
    assert model.set_params(unknown_neighbors=10)._scores(with_it)[1][-1] >= model.unknown_threshold
    # a population of them is flagged as one; the known cells' scattered flags are not
    population = codes[:30] + 100.0
    typicality = model._scores(np.vstack([codes, population]))[1]
    assert (typicality[-30:] < model.unknown_threshold).all()
    assert (typicality[:-30] < model.unknown_threshold).mean() <= (alone[:-1] < model.unknown_threshold).mean()


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 40).flatmap(lambda n: st.tuples(
    arrays(np.float64, (n, 2), elements=st.floats(-10, 10)), arrays(np.float64, n, elements=st.floats(0, 1)),
    arrays(np.int64, n, elements=st.integers(0, 2)))), st.integers(0, 12))
def test_neighbourhood_medians_stay_within_each_group_and_are_the_values_alone_for_0(case, n_neighbors):
    codes, values, groups = case
    medians = _neighbourhood_medians(codes, values, groups, n_neighbors)
    for group in np.unique(groups):
        rows = groups == group
        assert values[rows].min() <= medians[rows].min() and medians[rows].max() <= values[rows].max()
        # another group's values do not change this group's medians
        changed = np.where(rows, values, 1.0 - values)
        np.testing.assert_array_equal(_neighbourhood_medians(codes, changed, groups, n_neighbors)[rows], medians[rows])
        if rows.sum() == 1 or n_neighbors == 0:  # a lone cell keeps its own value, as every cell with 0
            np.testing.assert_array_equal(medians[rows], values[rows])
    np.testing.assert_array_equal(_neighbourhood_medians(codes, values, groups, 0), values)
    # with every neighbour, a group's median of all its values
    everyone = _neighbourhood_medians(codes, values, None, len(values))
    np.testing.assert_allclose(everyone, np.median(values))


@pytest.mark.parametrize("value", [-1, 2.5, "10", None])
def test_a_bad_unknown_neighbors_is_refused_by_name_before_anything_is_fitted(value):
    counts, types = _three_types(n=120)
    model = _small(unknown_neighbors=value, max_epochs=1)
    with pytest.raises(ValueError, match="unknown_neighbors"):
        model.fit(counts, types)
    assert not hasattr(model, "classes_")
