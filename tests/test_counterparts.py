"""batch_counterparts: clusters of each batch matched across batches without labels, and the adversary they gate."""

import anndata
import numpy as np
import pytest
import scipy.sparse as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from skvae import BetaVAEClassifier, BetaVAEEmbedder, BetaVSCEmbedder, _counterparts
from skvae._counterparts import counterparts, cross_distances
from skvae.nn.likelihoods import make_likelihood
from skvae.nn.models import LossWeights, VariationalAutoencoder
from skvae.train.data import RowData

SMALL = dict(n_components=3, hidden_layer_sizes=(16,), likelihood="nb", batch_adversary=0.5, max_epochs=3,
             random_state=0)


def _pooled_clusters(rng, profiles, n_cells=80, depth=1500):
    """Each profile's pooled counts over ``n_cells`` Poisson cells, and the pooled counts of two halves of them."""
    cells = [rng.poisson(profile * depth, size=(n_cells, len(profile))).astype(float) for profile in profiles]
    return (np.array([c.sum(axis=0) for c in cells]),
            (np.array([c[::2].sum(axis=0) for c in cells]), np.array([c[1::2].sum(axis=0) for c in cells])))


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.0, 0.8), st.integers(2, 4))
def test_a_per_gene_factor_between_batches_is_removed_and_other_populations_stay_apart(seed, effect_sd, n_types):
    rng = np.random.RandomState(seed)
    profiles = rng.dirichlet(np.full(80, 0.5), size=n_types)
    factor = np.exp(rng.normal(0.0, effect_sd, size=80))  # a technology: each gene moved by its own factor
    shifted = profiles * factor
    pooled, halves = _pooled_clusters(rng, np.vstack([profiles, shifted / shifted.sum(axis=1, keepdims=True)]))
    d = cross_distances(pooled, halves, np.arange(n_types), np.arange(n_types, 2 * n_types))
    assert d.shape == (n_types, n_types) and np.all(d >= 0)
    # each population within the default threshold of its own counterpart, whatever the factor (the factor's estimate
    # from a few pairs carries their noise: 0.1-0.25 here)
    assert np.diag(d).max() < 0.3
    assert (d + np.eye(n_types) * 10).min() > 0.5  # and far from the others


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000))
def test_distances_are_symmetric_between_the_two_batches(seed):
    rng = np.random.RandomState(seed)
    pooled, halves = _pooled_clusters(rng, rng.dirichlet(np.full(40, 0.5), size=4))
    first, second = np.array([0, 1]), np.array([2, 3])
    forward = cross_distances(pooled, halves, first, second)
    np.testing.assert_allclose(cross_distances(pooled, halves, second, first), forward.T, rtol=1e-10, atol=1e-12)


def _two_batches(seed=0, n=240, n_genes=60, effect_sd=0.5, depth=(1500, 6000)):
    """Counts of 3 populations; batch 1 lacks population 2 and is measured 4x deeper, with a per-gene effect."""
    rng = np.random.RandomState(seed)
    profiles = rng.dirichlet(np.full(n_genes, 0.4), size=3)
    effect = np.exp(rng.normal(0.0, effect_sd, size=n_genes))
    rows, batch, types = [], [], []
    for b in (0, 1):
        for t in (0, 1, 2) if b == 0 else (0, 1):
            p = profiles[t] * (effect if b else 1.0)
            rows.append(rng.poisson(p / p.sum() * depth[b], size=(n, n_genes)))
            batch += [b] * n
            types += [t] * n
    return sp.csr_matrix(np.vstack(rows).astype(np.float32)), np.array(batch), np.array(types)


def test_a_population_of_one_batch_has_no_counterpart_and_the_shared_ones_do():
    X, batch, types = _two_batches()
    clusters, held, distances, cluster_batches = counterparts(RowData.from_input(X), batch, 2, 0.4, random_state=0)
    assert clusters.shape == (X.shape[0],) and held.shape == distances.shape == (len(cluster_batches), 2)
    assert np.array_equal(cluster_batches[clusters], batch)  # a cluster holds one batch's cells
    assert held[np.arange(len(held)), cluster_batches].all()  # its own batch holds it
    cell_held = held[clusters, 1 - batch]  # whether the other batch holds a counterpart of the cell's cluster
    assert not cell_held[types == 2].any()
    assert cell_held[types != 2].mean() > 0.95


def test_a_batch_holds_a_group_where_one_of_its_clusterings_finds_a_counterpart(monkeypatch):
    """Three draws of clusters (the second cuts cell 0 from cell 1): a group is the cells that share their cluster in
    every draw, its distance to a batch the least of its clusters' (a cluster too small to compare tells nothing),
    and the other batch holds it where that is within the threshold."""
    nan = np.nan
    draws = iter([  # each row's cluster, each cluster's distances to batches 0 and 1, whether it was compared
        (np.array([0, 0, 1, 1, 2, 2]), np.array([[0, 0.9], [0, 0.9], [0.9, 0]]), np.array([True, True, True])),
        (np.array([0, 1, 1, 2, 3, 3]), np.array([[0, 0.2], [0, 0.9], [0, 0.9], [0.2, 0]]), np.ones(4, bool)),
        (np.array([0, 0, 1, 1, 2, 2]), np.array([[0, 0.9], [0, nan], [0.9, 0]]), np.array([True, False, True])),
    ])
    monkeypatch.setattr(_counterparts, "N_CLUSTERINGS", 3)
    monkeypatch.setattr(_counterparts, "_cluster_distances", lambda *args: next(draws))
    batch = np.array([0, 0, 0, 0, 1, 1])
    groups, held, distances, group_batches = counterparts(RowData.from_input(np.ones((6, 3))), batch, 2, 0.4)
    assert len(held) == 5 and np.array_equal(group_batches[groups], batch)
    assert groups[4] == groups[5] and len(set(groups[:4])) == 4
    np.testing.assert_array_equal(distances[groups], [[0, 0.2], [0, 0.9], [0, 0.9], [0, 0.9], [0.2, 0], [0.2, 0]])
    np.testing.assert_array_equal(held[groups, 1 - batch], [True, False, False, False, True, True])


def test_counterparts_read_a_file_on_disk_and_dense_rows_as_they_read_sparse_memory(tmp_path):
    X, batch, _ = _two_batches(n=120)
    anndata.AnnData(X).write_h5ad(tmp_path / "counts.h5ad")
    backed = anndata.read_h5ad(tmp_path / "counts.h5ad", backed="r")
    in_memory = counterparts(RowData.from_input(X), batch, 2, 0.4, random_state=0)
    for other in (backed.X, X.toarray()):
        for a, b in zip(counterparts(RowData.from_input(other), batch, 2, 0.4, random_state=0), in_memory, strict=True):
            np.testing.assert_allclose(a, b)


def test_an_embedder_records_the_clusters_and_is_reproducible():
    X, batch, _ = _two_batches()
    first = BetaVAEEmbedder(**SMALL, batch_counterparts=0.4).fit(X, batch=batch)
    second = BetaVAEEmbedder(**SMALL, batch_counterparts=0.4).fit(X, batch=batch)
    assert first.counterpart_distances_.shape == (len(first.counterpart_batches_), 2)
    np.testing.assert_array_equal(first.counterpart_distances_, second.counterpart_distances_)
    np.testing.assert_array_equal(first.transform(X), second.transform(X))
    # the gate changes training: not the codes of the adversary on every cell
    ungated = BetaVAEEmbedder(**SMALL).fit(X, batch=batch)
    assert not np.array_equal(first.transform(X), ungated.transform(X))
    assert not hasattr(ungated, "counterpart_distances_")


def test_without_an_adversary_or_batches_the_gate_changes_nothing():
    X, batch, _ = _two_batches(n=100)
    for settings_, given_batch in (({"batch_adversary": 0.0}, batch), ({}, None)):
        options = {**SMALL, **settings_}
        gated = BetaVSCEmbedder(**options, batch_counterparts=0.4).fit(X, batch=given_batch)
        plain = BetaVSCEmbedder(**options).fit(X, batch=given_batch)
        assert not hasattr(gated, "counterpart_distances_")
        np.testing.assert_array_equal(gated.transform(X, batch=given_batch), plain.transform(X, batch=given_batch))


def test_a_refit_without_the_gate_forgets_the_clusters():
    X, batch, _ = _two_batches(n=100)
    embedder = BetaVAEEmbedder(**SMALL, batch_counterparts=0.4).fit(X, batch=batch)
    embedder.set_params(batch_counterparts=None).fit(X, batch=batch)
    assert not hasattr(embedder, "counterpart_distances_")


def test_the_gate_survives_a_save(tmp_path):
    X, batch, _ = _two_batches(n=100)
    embedder = BetaVAEEmbedder(**SMALL, batch_counterparts=0.4).fit(X, batch=batch)
    embedder.save(tmp_path / "gated.pt")
    loaded = BetaVAEEmbedder.load(tmp_path / "gated.pt")
    np.testing.assert_array_equal(loaded.counterpart_distances_, embedder.counterpart_distances_)
    np.testing.assert_array_equal(loaded.counterpart_batches_, embedder.counterpart_batches_)
    np.testing.assert_array_equal(loaded.transform(X), embedder.transform(X))


def test_a_cluster_no_other_batch_holds_costs_the_adversary_nothing():
    torch.manual_seed(0)
    model = VariationalAutoencoder(10, 2, (8,), likelihood=make_likelihood("nb", 10), n_categories=(2,),
                                   adversary=True).eval()
    x = torch.poisson(torch.full((6, 10), 3.0))
    batch = torch.tensor([[0], [0], [0], [1], [1], [1]])
    groups = torch.tensor([0, 0, 1, 2, 2, 2])  # cluster 1: batch 0 alone; clusters 0 and 2 counterparts
    held = torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    weights = LossWeights(adversary=1.0, held_types=held)
    gated = model.loss(x, batch, groups, deterministic=True, weights=weights).adversarial
    plain = model.loss(x, batch, None, deterministic=True, weights=LossWeights(adversary=1.0)).adversarial
    assert gated[2] == 0.0  # asked among its own batch only: one answer
    # the shared clusters' cells are asked as without the gate (their neighbourhood weights alike)
    torch.testing.assert_close(gated[[0, 1, 3, 4, 5]], plain[[0, 1, 3, 4, 5]])


@pytest.mark.filterwarnings("ignore:X looks like raw counts")  # the Gaussian case is refused, as tested
@pytest.mark.parametrize(
    ("estimator", "call", "message"),
    [
        (BetaVAEEmbedder(**SMALL, batch_counterparts=0.4), "partial_fit", "partial_fit sees one chunk"),
        (BetaVAEEmbedder(**{**SMALL, "likelihood": "gaussian"}, batch_counterparts=0.4), "fit",
         "needs a count likelihood"),
        (BetaVAEClassifier(**SMALL, batch_counterparts=0.4), "fit", "batch_adversary_types"),
    ],
)
def test_where_the_gate_cannot_act_it_says_so_and_leaves_the_estimator_unfitted(estimator, call, message):
    X, batch, types = _two_batches(n=60)
    y = (types,) if isinstance(estimator, BetaVAEClassifier) else ()
    with pytest.raises(ValueError, match=message):
        getattr(estimator, call)(X, *y, batch=batch)
    assert not hasattr(estimator, "module_")


@pytest.mark.parametrize("value", [0.0, -1.0])
def test_a_threshold_must_be_positive(value):
    X, batch, _ = _two_batches(n=30)
    with pytest.raises(ValueError, match="batch_counterparts"):
        BetaVAEEmbedder(**SMALL, batch_counterparts=value).fit(X, batch=batch)
