"""The classifier's marker test: a cell named a type must hold the counts of the type's marker genes (issue 39: the
PBMC pair's dendritic cells named CD34+ progenitors, expressing no CD34)."""

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from skvae import BetaVAEClassifier, _markers
from skvae._persistence import SAVE_FORMAT, content_checksum

PROFILE = ("class_profile_centres_", "class_profile_spreads_", "class_profile_quantiles_")
SETTINGS = dict(likelihood="nb", n_components=6, hidden_layer_sizes=(64,), input_activation=True, batch_norm=True,
                max_epochs=60)


def _lacking(seed, n=1600, n_genes=200):
    """A reference of 3 types and a query that also holds a fourth population: type 0 without the genes that mark
    it (each gene of type 0 above twice every other type's, lowered to the others' highest)."""
    rng = np.random.RandomState(seed)
    profiles = rng.gamma(0.5, 2.0, size=(3, n_genes))
    lacking = profiles[0].copy()
    marks = profiles[0] > 2 * profiles[1:].max(axis=0)
    lacking[marks] = profiles[1:, marks].max(axis=0)
    profiles = np.vstack([profiles, lacking])
    batch = np.repeat([0, 1], n // 2)
    types = np.where(batch == 0, rng.randint(3, size=n), rng.randint(4, size=n))
    return rng.poisson(profiles[types]).astype(np.float32), types, batch == 0


def _count_pvalues(model, X, batch=None):
    """The marker and profile tests' p-values alone, from the fitted model's attributes, and the types called."""
    called = model.predict(X)
    indices = np.searchsorted(model.classes_, called)
    return (*model._count_pvalues(model._input(X, None, required=False), indices, model._groups(batch, len(X))),
            called)


def _marker_pvalues(model, X, batch=None):
    """The marker test's p-values alone, and the types called."""
    markers, _, called = _count_pvalues(model, X, batch)
    return markers, called


def _extra(seed, n=1600, n_genes=200, n_extra=20):
    """A reference of 3 types and a query that also holds a fourth population: type 0 with a program of its own on
    top (``n_extra`` genes no type expresses, at type 0's mean level), so that it holds every marker of type 0."""
    rng = np.random.RandomState(seed)
    profiles = rng.gamma(0.5, 2.0, size=(3, n_genes))
    silent = rng.choice(n_genes, size=n_extra, replace=False)
    profiles[:, silent] = 0.01
    extra = profiles[0].copy()
    extra[silent] = profiles[0].mean() * 3
    profiles = np.vstack([profiles, extra])
    batch = np.repeat([0, 1], n // 2)
    types = np.where(batch == 0, rng.randint(3, size=n), rng.randint(4, size=n))
    return rng.poisson(profiles[types]).astype(np.float32), types, batch == 0


@pytest.mark.parametrize("seed", [0, 1])
def test_cells_named_a_type_without_its_markers_are_flagged_and_the_types_own_are_not(seed):
    counts, types, reference = _lacking(seed)
    query = ~reference
    model = BetaVAEClassifier(**SETTINGS, random_state=seed).fit(counts[reference], types[reference])
    assert (model.class_markers_ >= 0).sum(axis=1).min() >= 5
    p, called = _marker_pvalues(model, counts[query])
    lacking, known = types[query] == 3, types[query] != 3
    assert (called[lacking] == 0).mean() > 0.9  # named as the type whose markers they lack
    # the marker test alone flags them, and few of the known types' cells
    assert (p[lacking] < 0.01).mean() >= 0.9 and (p[known] < 0.01).mean() <= 0.02
    alone = model.set_params(unknown_neighbors=0).typicality(counts[query])
    assert np.all(alone <= p + 1e-12)  # each cell alone: the smaller of the two tests' p-values
    unknown = model.set_params(unknown_neighbors=10).is_unknown(counts[query])
    assert unknown[lacking].mean() >= 0.9 and unknown[known].mean() <= 0.05


@pytest.mark.parametrize("seed", [0, 1])
def test_cells_named_a_type_with_a_program_of_their_own_are_flagged_by_the_profile_test(seed):
    counts, types, reference = _extra(seed)
    query = ~reference
    model = BetaVAEClassifier(**SETTINGS, random_state=seed).fit(counts[reference], types[reference])
    markers, profile, called = _count_pvalues(model, counts[query])
    extra, known = types[query] == 3, types[query] != 3
    named = extra & (called == 0)
    assert (called[extra] == 0).mean() > 0.5  # most of them named type 0, whose markers they hold
    assert (markers[named] < 0.01).mean() <= 0.5  # the marker test misses most of them
    assert (profile[named] < 0.01).mean() >= 0.9 and (profile[known] < 0.01).mean() <= 0.02
    unknown = model.is_unknown(counts[query])
    assert unknown[extra].mean() >= 0.9 and unknown[known].mean() <= 0.05


def test_a_deeper_query_batch_is_not_flagged_for_its_depth():
    counts, types, reference = _lacking(0)
    deep = counts.copy()
    rng = np.random.RandomState(1)
    deep[~reference] = rng.poisson(deep[~reference] * 10).astype(np.float32)  # 10x the counts (and more noise)
    batch = np.where(reference, "ref", "deep")
    model = BetaVAEClassifier(**SETTINGS, random_state=0).fit(deep[reference], types[reference])
    p, profile, _ = _count_pvalues(model, deep[~reference], batch[~reference])
    assert (p[types[~reference] != 3] < 0.01).mean() <= 0.02
    assert (p[types[~reference] == 3] < 0.01).mean() >= 0.9
    assert (profile[types[~reference] != 3] < 0.01).mean() <= 0.02


def test_a_model_of_scaled_data_has_no_markers_and_its_codes_alone_tell():
    rng = np.random.RandomState(0)
    X, y = rng.normal(size=(120, 8)), np.arange(120) % 2
    model = BetaVAEClassifier(2, hidden_layer_sizes=(8,), max_epochs=3, random_state=0).fit(X, y)
    assert model.class_markers_.shape == (2, 0)
    _, typicality = model.classify_codes(model.transform(X))  # no X needed
    np.testing.assert_allclose(typicality, model.typicality(X))


def test_classify_codes_of_a_model_of_counts_needs_the_same_cells_counts():
    counts, types, _ = _lacking(0, n=400, n_genes=40)
    model = BetaVAEClassifier(**{**SETTINGS, "max_epochs": 3}, random_state=0).fit(counts, types)
    codes = model.transform(counts)
    with pytest.raises(ValueError, match="pass X=, the cells' counts"):
        model.classify_codes(codes)
    with pytest.raises(ValueError, match="X has 10 cells but codes 400"):
        model.classify_codes(codes, X=counts[:10])
    _, typicality = model.classify_codes(codes, X=sp.csr_matrix(counts))
    np.testing.assert_allclose(typicality, model.typicality(counts))


def _edited_save(path, target, edit):
    """A copy of the save at ``path`` written to ``target`` with ``edit(state)`` applied and its checksum renewed."""
    import torch

    state = torch.load(path, weights_only=True)
    edit(state)
    state["checksum"] = content_checksum(state)
    torch.save(state, target)
    return target


def _first_row_only(name):
    """An edit of a save: its attribute ``name`` cut to its first row (damaged)."""
    def edit(state):
        state["attributes"][name]["values"] = state["attributes"][name]["values"][:1]
    return edit


def test_markers_are_saved_checked_and_a_save_without_them_loads_with_the_codes_test(tmp_path):
    import torch

    counts, types, _ = _lacking(0, n=600, n_genes=60)
    model = BetaVAEClassifier(**{**SETTINGS, "max_epochs": 5}, random_state=0).fit(counts, types)
    path = tmp_path / "model.pt"
    model.save(path)
    loaded = BetaVAEClassifier.load(path)
    np.testing.assert_array_equal(loaded.class_markers_, model.class_markers_)
    np.testing.assert_array_equal(loaded.typicality(counts), model.typicality(counts))
    assert torch.load(path, weights_only=True)["format"] == SAVE_FORMAT

    def without_markers(state):  # a save from before the markers: the codes' typicality, as it was
        for name in ("class_expression_", "class_markers_", "class_marker_shares_", "class_marker_centres_",
                     "class_marker_spreads_", "class_shares_", *PROFILE):
            del state["attributes"][name]

    old = BetaVAEClassifier.load(_edited_save(path, tmp_path / "old.pt", without_markers))
    model.class_markers_ = model.class_markers_[:, :0]
    np.testing.assert_array_equal(old.typicality(counts), model.typicality(counts))
    # a damaged one is refused by name
    with pytest.raises(ValueError, match="damaged.*marker"):
        BetaVAEClassifier.load(_edited_save(path, tmp_path / "damaged.pt", _first_row_only("class_markers_")))


def test_saves_without_genes_shares_or_the_profile_test_load_and_test_as_they_did(tmp_path):
    counts, types, reference = _lacking(0, n=600, n_genes=60)
    batch = np.where(reference, "ref", "query")
    model = BetaVAEClassifier(**{**SETTINGS, "max_epochs": 5}, random_state=0).fit(counts[reference],
                                                                                   types[reference])
    assert model.class_shares_.shape == model.class_expression_.shape
    np.testing.assert_allclose(model.class_shares_.sum(axis=1), 1.0, rtol=1e-5)  # each type's mean shares
    path = tmp_path / "model.pt"
    model.save(path)
    np.testing.assert_array_equal(BetaVAEClassifier.load(path).class_shares_, model.class_shares_)
    # a save from round 12: genes' shares but no profile test; one from round 11: neither
    for removed in (PROFILE, ("class_shares_", *PROFILE)):
        def without(state, removed=removed):
            for name in removed:
                del state["attributes"][name]

        old = BetaVAEClassifier.load(_edited_save(path, tmp_path / "old.pt", without))
        assert not any(hasattr(old, name) for name in removed)
        expected = BetaVAEClassifier.load(path)
        for name in removed:
            delattr(expected, name)
        np.testing.assert_array_equal(old.typicality(counts, batch=batch), expected.typicality(counts, batch=batch))
    assert not np.array_equal(expected.typicality(counts, batch=batch), model.typicality(counts, batch=batch))
    with pytest.raises(ValueError, match="damaged.*class_shares_"):
        BetaVAEClassifier.load(_edited_save(path, tmp_path / "damaged.pt", _first_row_only("class_shares_")))
    with pytest.raises(ValueError, match="damaged.*profile"):
        BetaVAEClassifier.load(_edited_save(path, tmp_path / "damaged.pt",
                                            _first_row_only("class_profile_quantiles_")))
    with pytest.raises(ValueError, match="damaged.*profile"):  # the profile test needs the genes' shares
        BetaVAEClassifier.load(_edited_save(path, tmp_path / "damaged.pt",
                                            lambda state: state["attributes"].pop("class_shares_")))


def test_partial_fit_keeps_the_markers_of_a_type_a_chunk_does_not_label():
    counts, types, _ = _lacking(0, n=900, n_genes=60)
    types = np.minimum(types, 2)
    model = BetaVAEClassifier(**{**SETTINGS, "max_epochs": 3}, random_state=0)
    model.partial_fit(counts, types, classes=[0, 1, 2])
    names = ("class_markers_", "class_marker_shares_", "class_marker_centres_", "class_expression_", "class_shares_",
             *PROFILE)
    before = [getattr(model, name).copy() for name in names]
    unlabelled_two = np.where(types == 2, -1, types)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the stale-Gaussian warning, tested elsewhere
        model.partial_fit(counts, unlabelled_two)
    for name, old in zip(names, before, strict=True):
        np.testing.assert_array_equal(old[2], getattr(model, name)[2])


@settings(max_examples=40, deadline=None)
@given(arrays(np.int64, (12, 7), elements=st.integers(0, 30)), st.integers(1, 11), st.integers(0, 2**31 - 1))
def test_sums_and_shortfalls_are_the_same_over_any_blocks_and_agree_with_their_definition(counts, cut, seed):
    rng = np.random.RandomState(seed)
    labels = rng.randint(-1, 3, size=len(counts))
    X = counts.astype(np.float64)
    whole = _markers.expression_sums([(slice(0, 12), X)], labels, 3, 7)
    blocks = _markers.expression_sums([(slice(0, cut), X[:cut]), (slice(cut, 12), sp.csr_matrix(X[cut:]))],
                                      labels, 3, 7)
    for a, b in zip(whole, blocks, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-9)
    totals = np.maximum(X.sum(axis=1), 1.0)
    for c in range(3):
        own = labels == c
        np.testing.assert_allclose(whole[2][c], (X[own] / totals[own, None]).sum(axis=0), atol=1e-9)
        np.testing.assert_allclose(whole[1][c], np.log1p(1e4 * X[own] / totals[own, None]).sum(axis=0), atol=1e-9)
    markers = np.array([[0, 1, -1], [2, -1, -1], [3, 4, 5]])
    shares = np.array([0.2, 0.1, 0.3])
    called = rng.randint(-1, 3, size=len(counts))
    indicator = _markers.marker_indicator(markers, 7)
    profile_shares = rng.dirichlet(np.ones(7), size=3)
    profiles = _markers.log_profiles(profile_shares)
    shortfall, expected, likelihood, totals = _markers.shortfalls(
        [(slice(0, cut), X[:cut]), (slice(cut, 12), X[cut:])], called, indicator, shares, profile_shares=profile_shares)
    # each row without itself: a profile of n cells less its own shares
    n = np.array([5, 1, 3])
    left_out = _markers.shortfalls([(slice(0, 12), sp.csr_matrix(X))], called, indicator, shares,
                                   profile_shares=profile_shares, leave_out=n).likelihood
    for i, c in enumerate(called):
        if c < 0:
            assert np.isnan([shortfall[i], expected[i], likelihood[i], totals[i]]).all()
            continue
        genes = markers[c][markers[c] >= 0]
        assert totals[i] == X[i].sum() and expected[i] == pytest.approx(X[i].sum() * shares[c])
        assert shortfall[i] == pytest.approx(np.log((X[i, genes].sum() + 0.5) / (X[i].sum() * shares[c] + 0.5)))
        assert likelihood[i] == pytest.approx(X[i] @ profiles[c] / max(X[i].sum(), 1.0))
        own = X[i] / max(X[i].sum(), 1.0)
        without = np.maximum(n[c] * profile_shares[c] - own, 0.0) / max(n[c] - 1, 1) + _markers._PROFILE_FLOOR
        expected_without = own @ np.log(without / ((1.0 if n[c] > 1 else 0.0) + 7 * _markers._PROFILE_FLOOR))
        assert left_out[i] == pytest.approx(expected_without)


@settings(max_examples=40, deadline=None)
@given(arrays(np.float64, 60, elements=st.floats(-4, 2)), arrays(np.float64, 60, elements=st.floats(0, 500)))
def test_marker_pvalues_are_probabilities_that_fall_with_the_shortfall(shortfall, expected):
    called = np.arange(60) % 2
    centres, spreads = np.array([0.0, np.nan]), np.array([0.3, np.nan])
    p = _markers.marker_pvalues(shortfall, expected, called, centres, spreads)
    assert ((p >= 0) & (p <= 1)).all()
    assert (p[called == 1] == 1).all()  # a type without a centre is not tested
    same = (called == 0) & (expected == expected[0])
    order = np.argsort(shortfall[same])
    assert (np.diff(p[same][order]) >= -1e-12).all()


@settings(max_examples=40, deadline=None)
@given(arrays(np.float64, (4, 9), elements=st.floats(0, 8)))
def test_every_marker_is_expressed_above_every_other_labelled_type(expression):
    expression[3] = np.nan  # a type not labelled yet
    markers = _markers.choose_markers(expression, [0, 1, 2], n_markers=4)
    for c, genes in markers.items():
        assert len(genes) <= 4
        others = np.delete(expression[:3], c, axis=0)
        assert all((expression[c, g] > others[:, g]).all() for g in genes)


@settings(max_examples=40, deadline=None)
@given(st.integers(30, 100), st.integers(0, 2**31 - 1), st.floats(0.8, 1.25))
def test_technology_variances_measure_the_spread_of_the_genes_factors_alone(n_genes, seed, common):
    rng = np.random.RandomState(seed)
    reference = 5e-3 + rng.dirichlet(np.ones(n_genes), size=3) * (1 - n_genes * 5e-3)  # every gene tracked
    factors = np.exp(np.clip(rng.normal(0.0, 0.3, size=n_genes), -0.69, 0.69))  # a technology's, within 1/2 and 2
    assert len(_markers.tracked_genes(reference)) == n_genes
    groups = [reference, reference * factors * common, reference * factors ** 2, reference * factors, reference]
    counts = np.full((len(groups), 3), 60)
    counts[4] = _markers.MIN_CELLS - 1  # too few cells of every type to measure
    sums = np.stack([means * 60 for means in groups])
    variances = _markers.technology_variances(sums, counts, reference, _markers.tracked_genes(reference))
    assert variances.shape == (5,) and (variances >= 0).all()
    assert (variances[[0, 4]] == 0).all() and variances[3] > 0  # the reference's own cells, and too few cells
    np.testing.assert_allclose(variances[1], variances[3], rtol=1e-9)  # a factor common to every gene is not one
    np.testing.assert_allclose(variances[2], 4 * variances[3], rtol=1e-9)  # twice the log factors: 4x the variance


def test_marker_sensitivities_to_a_technology_follow_their_definition():
    shares = np.array([[0.5, 0.2, 0.2, 0.1], [0.25, 0.25, 0.25, 0.25], [np.nan] * 4])
    # a type of few strong markers moves more than one of many even ones; a type not labelled not at all
    sensitivities = _markers.marker_sensitivities(shares, np.array([[0, 3], [0, 1], [0, 1]]))
    np.testing.assert_allclose(sensitivities, [(0.25 + 0.01) / 0.36, 0.5, 0.0])


@settings(max_examples=40, deadline=None)
@given(arrays(np.float64, 120, elements=st.floats(-6, 0)), arrays(np.float64, 120, elements=st.floats(1, 5000)),
       st.integers(0, 2**31 - 1), st.floats(-3, 3))
def test_profile_pvalues_are_probabilities_that_fall_with_the_likelihood(likelihood, totals, seed, shift):
    rng = np.random.RandomState(seed)
    profiles = _markers.log_profiles(np.vstack([rng.dirichlet(np.ones(10)), np.full(10, np.nan)]))
    labels = np.zeros(120, int)
    calibration = _markers.profile_calibration(likelihood, totals, labels, profiles, 101)
    called = (np.arange(120) % 6 == 5).astype(int)  # 100 cells called the labelled type, 20 one not labelled
    p = _markers.profile_pvalues(likelihood, totals, called, profiles, calibration, np.array([120, 0]))
    assert ((p > 0) & (p <= 1)).all()
    assert (p[called == 1] == 1).all()  # a type not labelled is not tested
    same = (called == 0) & (totals == totals[0])
    order = np.argsort(likelihood[same])
    assert (np.diff(p[same][order]) >= -1e-12).all()
    # a batch whose technology moves each type's likelihoods by its own amount (cells of one depth, so their
    # z-scores too): each type centred on its own median, judged as it would be unmoved (values without ties, which
    # a rounding would split)
    two = _markers.log_profiles(rng.dirichlet(np.ones(10), size=2))
    types, depth, values = np.repeat([0, 1, 0, 1], 60), np.full(240, totals[0]), rng.normal(-4.0, 0.3, size=240)
    groups = np.repeat(["a", "b"], 120)
    of_values = _markers.profile_calibration(values, depth, types, two, 101)
    moved = values + np.where(groups == "b", np.where(types == 0, shift, -2 * shift), 0.0)
    in_batches = _markers.profile_pvalues(moved, depth, types, two, of_values, np.array([120, 120]), groups)
    alone = [_markers.profile_pvalues(values[rows], depth[rows], types[rows], two, of_values, np.array([120, 120]))
             for rows in (groups == "a", groups == "b")]
    np.testing.assert_allclose(in_batches, np.concatenate(alone), atol=1e-6)
    # the labelled cells' own p-values: the share of them scoring lower, about uniform
    if len(np.unique(likelihood)) == len(likelihood):
        own = _markers.profile_pvalues(likelihood, totals, labels, profiles, calibration, np.array([120, 0]))
        assert abs(np.mean(own < 0.25) - 0.25) <= 0.05 + 2 / 120
