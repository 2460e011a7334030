"""The classifier's counterpart test (``unknown_counterparts``): a query population with no counterpart among the
reference's clusters, a per-gene technology factor removed, is flagged (issue 39)."""

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from skvae import BetaVAEClassifier, BetaVAEEmbedder, _counterparts
from skvae._counterparts import REFERENCE_ATTRIBUTES, query_distances, reference_clusters
from skvae.train.data import RowData

SETTINGS = dict(likelihood="nb", n_components=4, hidden_layer_sizes=(32,), max_epochs=20)


def _shifted(seed, n=1600, n_genes=150):
    """Counts of 4 types in a reference and a query batch, each batch with a per-gene effect exp(N(0, 0.7)), the
    query 5x deeper; the fourth type is in the query only (``test_unknown_flag``'s data, more genes)."""
    rng = np.random.RandomState(seed)
    profiles = rng.gamma(0.5, 2.0, size=(4, n_genes))
    effects = np.exp(rng.normal(0.0, 0.7, size=(2, n_genes)))
    batch = np.repeat([0, 1], n // 2)
    types = np.where(batch == 0, rng.randint(3, size=n), rng.randint(4, size=n))
    counts = rng.poisson(profiles[types] * effects[batch] * np.where(batch == 0, 1.0, 5.0)[:, None])
    return counts.astype(np.float32), types, np.array(["ref", "query"], dtype=object)[batch]


def _fitted(counts, types, batch, **settings):
    reference = batch == "ref"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return BetaVAEClassifier(**{**SETTINGS, "random_state": 0, **settings}).fit(
            counts[reference], types[reference], batch=batch[reference])


@pytest.mark.parametrize("seed", [0, 1])
def test_a_population_the_reference_lacks_has_no_counterpart_in_a_new_technology_and_known_ones_do(seed):
    counts, types, batch = _shifted(seed)
    model = _fitted(counts, types, batch)
    query = batch == "query"
    distances = model._counterpart_distances(RowData.from_input(counts[query]), batch[query])
    beyond = distances > model.unknown_counterparts  # NaN (not compared) is never beyond
    absent = types[query] == 3
    assert beyond[absent].mean() >= 0.9 and beyond[~absent].mean() <= 0.05, (beyond[absent].mean(),
                                                                              beyond[~absent].mean())
    # their typicality is 0: flagged whatever the threshold; the others' is the three p-values' as without the test
    typicality = model.typicality(counts[query], batch=batch[query])
    without = model.set_params(unknown_counterparts=None).typicality(counts[query], batch=batch[query])
    assert (typicality[beyond] == 0).all()
    np.testing.assert_array_equal(typicality[~beyond], without[~beyond])


def test_without_removing_the_technologys_factor_the_known_types_would_be_flagged(monkeypatch):
    # what the per-gene factor is for: the same query compared with no factor estimated (no rounds) flags known types
    counts, types, batch = _shifted(0)
    model = _fitted(counts, types, batch)
    query = batch == "query"
    data = RowData.from_input(counts[query])
    args = (model.reference_cluster_genes_, model.reference_cluster_halves_, model.reference_cluster_batches_)
    known = types[query] != 3
    assert (query_distances(data, batch[query], *args)[known] > 0.6).mean() <= 0.05
    monkeypatch.setattr(_counterparts, "_ROUNDS", 0)
    assert (query_distances(data, batch[query], *args)[known] > 0.6).mean() >= 0.5


def test_a_small_query_is_clustered_finely_enough_to_show_its_absent_population():
    # 220 cells (160 of three known types, 60 of the absent one) in one batch: one cluster of them all, whose pooled
    # profile a per-gene factor fits to the nearest reference cluster, would hide the absent cells; at least 8
    # clusters (40 cells each, here 5) keep them apart
    counts, types, batch = _shifted(0)
    model = _fitted(counts, types, batch)
    query = batch == "query"
    rows = np.concatenate([np.flatnonzero(query & (types != 3))[:160], np.flatnonzero(query & (types == 3))[:60]])
    beyond = model._counterpart_distances(RowData.from_input(counts[rows]), batch[rows]) > model.unknown_counterparts
    absent = types[rows] == 3
    assert beyond[absent].mean() >= 0.8 and beyond[~absent].mean() <= 0.05, (beyond[absent].mean(),
                                                                              beyond[~absent].mean())


def test_fewer_than_20_cells_of_a_batch_are_not_judged_by_it():
    counts, types, batch = _shifted(0)
    model = _fitted(counts, types, batch)
    rows = np.flatnonzero((batch == "query") & (types == 3))[:19]
    assert np.isnan(model._counterpart_distances(RowData.from_input(counts[rows]), batch[rows])).all()
    np.testing.assert_array_equal(model.typicality(counts[rows], batch=batch[rows]),
                                  model.set_params(unknown_counterparts=None).typicality(counts[rows],
                                                                                        batch=batch[rows]))


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 10_000), st.integers(2, 5))
def test_the_references_own_labelled_cells_have_counterparts(seed, n_types):
    # 300 genes (150-1,500 counts a cell): on 80 genes, a population with no structure but counting noise was split by
    # one gene's zeros in 5 of 1,600 draws, and the per-gene factor fitted to those pairs moved every other cluster
    # (the user guide says so); on 300 genes no cluster of 1,600 draws lay beyond 0.24
    rng = np.random.RandomState(seed)
    profiles = rng.gamma(0.5, 2.0, size=(n_types, 300)) * rng.uniform(0.5, 5.0)
    labels = rng.randint(n_types, size=900)
    counts = rng.poisson(profiles[labels]).astype(float)
    data = RowData.from_input(counts)
    batch = np.zeros(len(labels), dtype=np.int64)
    fitted = reference_clusters(data, labels, batch, random_state=seed)
    distances = query_distances(data, None, *(fitted[name] for name in REFERENCE_ATTRIBUTES))
    assert (distances > 0.6).mean() <= 0.05


def test_the_reference_clusters_are_one_batch_and_type_each_and_survive_a_save(tmp_path):
    counts, types, batch = _shifted(0)
    model = _fitted(counts, types, batch)
    assert model.reference_cluster_halves_.shape == (2, len(model.reference_cluster_batches_),
                                                     len(model.reference_cluster_genes_))
    # 800 reference cells of 3 types: 1-2 clusters of at least 20 cells each
    assert 3 <= len(model.reference_cluster_batches_) <= 6 and (model.reference_cluster_batches_ == 0).all()
    assert (model.reference_cluster_halves_.sum(axis=(0, 2)) > 0).all()
    model.save(tmp_path / "model.pt")
    loaded = BetaVAEClassifier.load(tmp_path / "model.pt")
    for name in REFERENCE_ATTRIBUTES:
        np.testing.assert_array_equal(getattr(loaded, name), getattr(model, name))
    query = batch == "query"
    np.testing.assert_array_equal(loaded.typicality(counts[query], batch=batch[query]),
                                  model.typicality(counts[query], batch=batch[query]))


def test_a_damaged_save_of_the_reference_clusters_is_refused(tmp_path):
    from skvae._persistence import atomic_torch_save

    counts, types, batch = _shifted(0, n=600)
    state = _fitted(counts, types, batch).saved_state()
    state["attributes"].pop("reference_cluster_batches_")
    atomic_torch_save(state, tmp_path / "damaged.pt")
    with pytest.raises(ValueError, match="reference clusters are missing"):
        BetaVAEClassifier.load(tmp_path / "damaged.pt")


def test_partial_fit_keeps_a_fits_clusters_and_learns_none_from_chunks():
    counts, types, batch = _shifted(0, n=800)
    model = _fitted(counts, types, batch)
    before = model.reference_cluster_halves_.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.partial_fit(counts[:100], types[:100], batch=batch[:100])
        np.testing.assert_array_equal(model.reference_cluster_halves_, before)
        chunked = BetaVAEClassifier(**SETTINGS, random_state=0).partial_fit(counts, types, classes=[0, 1, 2, 3])
    assert not any(hasattr(chunked, name) for name in REFERENCE_ATTRIBUTES)
    assert ((chunked.typicality(counts) >= 0) & (chunked.typicality(counts) <= 1)).all()


def test_a_model_of_scaled_data_and_an_embedder_have_no_reference_clusters():
    counts, types, _ = _shifted(0, n=600)
    scaled = np.log1p(counts)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = BetaVAEClassifier(n_components=4, hidden_layer_sizes=(32,), max_epochs=5, random_state=0).fit(
            scaled, types)
        embedder = BetaVAEEmbedder(**SETTINGS, random_state=0).fit(counts)
    assert not any(hasattr(model, name) or hasattr(embedder, name) for name in REFERENCE_ATTRIBUTES)
    assert model.unknown_counterparts == 0.6  # ignored: a model of scaled data has no counts to compare


@pytest.mark.parametrize("value", [0.0, -0.5, "0.6"])
def test_a_bad_unknown_counterparts_is_refused_by_name(value):
    counts, types, _ = _shifted(0, n=400)
    with pytest.raises((ValueError, TypeError), match="unknown_counterparts"):
        BetaVAEClassifier(**SETTINGS, unknown_counterparts=value).fit(counts, types)


def test_a_query_on_disk_is_judged_as_in_memory(tmp_path):
    anndata = pytest.importorskip("anndata")
    import scipy.sparse as sp

    counts, types, batch = _shifted(0)
    model = _fitted(counts, types, batch)
    query = batch == "query"
    path = tmp_path / "query.h5ad"
    anndata.AnnData(sp.csr_matrix(counts[query])).write_h5ad(path)
    on_disk = model.typicality(anndata.read_h5ad(path, backed="r").X, batch=batch[query])
    in_memory = model.typicality(counts[query], batch=batch[query])
    assert (in_memory[types[query] == 3] == 0).mean() >= 0.9  # the counterpart test acted
    np.testing.assert_allclose(on_disk, in_memory, atol=1e-6)
