"""Quality control, LogNormalizer, ClippedStandardScaler, HighlyVariableGenes and LOESS."""

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from sklearn.pipeline import make_pipeline
from sklearn.utils.estimator_checks import parametrize_with_checks

from skvae import BetaVSCEmbedder
from skvae.loess import loess
from skvae.preprocessing import (
    ClippedStandardScaler,
    HighlyVariableGenes,
    LogNormalizer,
    filter_cells_genes,
    qc_metrics,
)

count_matrices = st.tuples(st.integers(2, 12), st.integers(1, 10)).flatmap(
    lambda shape: arrays(np.float64, shape, elements=st.integers(0, 500).map(float))
)


def poisson_counts(n_cells=200, n_genes=60, seed=0):
    rng = np.random.RandomState(seed)
    counts = rng.poisson(rng.gamma(0.6, 2.0, size=n_genes), size=(n_cells, n_genes)).astype(np.float64)
    counts[:, 0] += 1  # no empty cells
    return counts


def expected_failed_checks(estimator):
    if isinstance(estimator, LogNormalizer):
        return {
            "check_estimators_dtypes": "its data (X - X.min() of random numbers) has a cell without "
            "counts, whose normalisation is undefined; LogNormalizer refuses it with a ValueError by design"
        }
    return {}


@parametrize_with_checks(
    [LogNormalizer(), ClippedStandardScaler(), HighlyVariableGenes(n_top_genes=3)],
    expected_failed_checks=expected_failed_checks,
)
@pytest.mark.filterwarnings("ignore:HighlyVariableGenes ranks genes")  # the checks' data are not counts
def test_sklearn_compatible_transformer(estimator, check):
    check(estimator)


@given(count_matrices.filter(lambda X: (X.sum(axis=1) > 0).all()), st.floats(1.0, 1e6))
def test_log_normalizer_matches_the_formula(X, target_sum):
    expected = np.log1p(X / X.sum(axis=1, keepdims=True) * target_sum)
    np.testing.assert_allclose(LogNormalizer(target_sum=target_sum).fit_transform(X), expected, rtol=1e-6, atol=1e-6)
    sparse = LogNormalizer(target_sum=target_sum).fit_transform(sp.csr_matrix(X))
    assert sp.issparse(sparse)
    np.testing.assert_allclose(sparse.toarray(), expected, rtol=1e-6, atol=1e-6)


def test_log_normalizer_keeps_float32_and_sparsity():
    X = sp.csr_matrix(poisson_counts().astype(np.float32))
    out = LogNormalizer().fit_transform(X)
    assert sp.issparse(out) and out.dtype == np.float32 and out.nnz == X.nnz


def test_log_normalizer_rejects_cells_without_counts_and_negative_counts():
    X = poisson_counts()
    X[3] = 0
    with pytest.raises(ValueError, match="1 cell\\(s\\) have no counts"):
        LogNormalizer().fit(X).transform(X)
    with pytest.raises(ValueError, match="Negative values"):
        LogNormalizer().fit(-poisson_counts())


@given(count_matrices, st.one_of(st.none(), st.floats(0.1, 10)))
def test_clipped_standard_scaler_is_seurat_scaledata(X, max_value):
    std = X.std(axis=0, ddof=1)
    expected = (X - X.mean(axis=0)) / np.where(std > 0, std, 1)
    if max_value is not None:
        expected = np.minimum(expected, max_value)
    np.testing.assert_allclose(ClippedStandardScaler(max_value=max_value).fit_transform(X), expected, atol=1e-9)
    np.testing.assert_allclose(
        ClippedStandardScaler(max_value=max_value).fit_transform(sp.csr_matrix(X)), expected, atol=1e-9
    )


def test_qc_metrics_counts_genes_totals_and_mitochondria():
    X = sp.csr_matrix(np.array([[1, 0, 3, 0], [0, 2, 2, 4]]))
    metrics = qc_metrics(X, ["MT-CO1", "MT-ND1", "LYZ", "CD3E"])
    assert metrics["n_genes"].tolist() == [2, 3]
    assert metrics["total_counts"].tolist() == [4, 8]
    np.testing.assert_allclose(metrics["pct_mito"], [25.0, 25.0])


def test_filter_cells_genes_uses_strict_bounds_on_the_kept_genes():
    X = np.zeros((4, 6))
    X[:, :3] = 1  # three genes in every cell
    X[0, 3] = X[1, 4] = 1  # two genes in one cell each: removed by min_cells=2
    X[2, 5] = X[3, 5] = 5  # a mitochondrial gene in cells 2 and 3
    kept = filter_cells_genes(X, ["A", "B", "C", "D", "E", "MT-X"], min_cells=2, min_genes=2, max_genes=4,
                              max_pct_mito=50)
    assert kept.gene_mask.tolist() == [True, True, True, False, False, True]
    # cells 0 and 1 have 3 kept genes (2 < 3 < 4); cells 2 and 3 have 4 (not < 4) and 62.5 % MT
    assert kept.cell_mask.tolist() == [True, True, False, False]


def test_qc_rejects_negative_counts_and_mismatched_names():
    with pytest.raises(ValueError, match="Negative values"):
        qc_metrics(np.array([[1, -1]]), ["A", "B"])
    with pytest.raises(ValueError, match="gene_names has 1 names but X has 2 genes"):
        filter_cells_genes(np.array([[1, 1]]), ["A"])


def reference_vst(X, span):
    """Seurat's vst written out densely, directly from its definition."""
    n = X.shape[0]
    mean, variance = X.mean(axis=0), X.var(axis=0, ddof=1)
    varies = variance > 0
    std = np.sqrt(10 ** loess(np.log10(mean[varies]), np.log10(variance[varies]), span=span))
    z = np.minimum((X[:, varies] - mean[varies]) / std, np.sqrt(n))
    result = np.zeros(X.shape[1])
    result[varies] = (z**2).sum(axis=0) / (n - 1)
    return result


@pytest.mark.parametrize("to_matrix", [np.asarray, sp.csr_matrix, sp.csc_matrix])
def test_highly_variable_genes_follows_vst(to_matrix):
    X = poisson_counts()
    X[:, 7] = 0  # a gene never seen
    X[:2, 5] += 300  # a gene that needs clipping
    selector = HighlyVariableGenes(n_top_genes=10, span=0.5).fit(to_matrix(X))
    np.testing.assert_allclose(selector.variances_norm_, reference_vst(X, 0.5), rtol=1e-9)
    assert selector.get_support().sum() == 10
    assert np.argmax(selector.variances_norm_) in np.flatnonzero(selector.get_support())
    assert selector.transform(to_matrix(X)).shape == (200, 10)


def test_highly_variable_genes_keeps_everything_when_asked_for_more():
    assert HighlyVariableGenes(n_top_genes=500).fit(poisson_counts()).get_support().all()


@given(arrays(np.float64, 3, elements=st.floats(-3, 3)), st.integers(10, 60), st.floats(0.2, 1.0))
def test_loess_reproduces_quadratics(coefficients, n, span):
    x = np.sort(np.random.RandomState(n).uniform(-2, 2, size=n))
    y = np.polyval(coefficients, x)
    np.testing.assert_allclose(loess(x, y, span=span), y, atol=1e-7)


def test_loess_matches_a_pointwise_weighted_polyfit():
    rng = np.random.RandomState(0)
    x, y = rng.uniform(0, 5, 80), rng.normal(size=80)
    k = int(0.4 * 80)
    expected = []
    for xi in x:
        distance = np.abs(x - xi)
        near = np.argsort(distance, kind="stable")[:k]
        weights = (1 - (distance[near] / distance[near].max()) ** 3) ** 3
        expected.append(np.polyval(np.polyfit(x[near], y[near], 2, w=np.sqrt(weights)), xi))
    np.testing.assert_allclose(loess(x, y, span=0.4), expected, atol=1e-8)


@pytest.mark.filterwarnings("ignore::skvae.PosteriorCollapseWarning")  # tiny fits: nothing to encode
def test_pipeline_from_counts_to_embedding():
    X = sp.csr_matrix(poisson_counts())
    pipeline = make_pipeline(LogNormalizer(), ClippedStandardScaler(), BetaVSCEmbedder(max_epochs=3, random_state=0))
    assert pipeline.fit_transform(X).shape == (200, 6)


@pytest.mark.parametrize("fmt", ["dense", "csr"])
def test_constant_float32_gene_scales_to_zero(fmt):
    X = np.column_stack([np.full(50, 0.1), np.arange(50.0)]).astype(np.float32)
    X = sp.csr_matrix(X) if fmt == "csr" else X
    scaled = ClippedStandardScaler().fit_transform(X)
    scaled = scaled.toarray() if sp.issparse(scaled) else scaled
    np.testing.assert_allclose(scaled[:, 0], 0.0, atol=1e-6)
    assert ClippedStandardScaler().fit(X).scale_[0] == 1.0


@pytest.mark.parametrize("fmt", ["dense", "csr"])
def test_log_normalizer_handles_a_row_whose_float32_sum_overflows(fmt):
    X = np.array([[3e38, 3e38, 1.0], [1.0, 2.0, 3.0]], dtype=np.float32)
    out = LogNormalizer().fit_transform(sp.csr_matrix(X) if fmt == "csr" else X)
    out = out.toarray() if sp.issparse(out) else out
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0, :2], np.log1p(5e3), rtol=1e-6)  # half of 1e4 each, not zeros
    np.testing.assert_allclose(out[1], np.log1p(np.array([1.0, 2.0, 3.0]) / 6 * 1e4), rtol=1e-6)


def test_highly_variable_genes_warns_when_given_log_normalised_data():
    counts = np.random.RandomState(0).poisson(1.0, size=(60, 30)).astype(float)
    with pytest.warns(UserWarning, match="before LogNormalizer"):
        HighlyVariableGenes(n_top_genes=10).fit(LogNormalizer().fit_transform(counts))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        HighlyVariableGenes(n_top_genes=10).fit(counts)


def test_batch_aware_gene_selection_keeps_markers_and_drops_genes_that_only_differ_between_batches():
    rng = np.random.RandomState(0)
    counts = rng.poisson(rng.gamma(1.0, 1.0, size=300), size=(200, 300)).astype(float)
    batch = np.repeat(["a", "b"], 100)
    counts[:20, 7] += rng.poisson(10, size=20)  # a marker of a group of cells in both batches
    counts[100:120, 7] += rng.poisson(10, size=20)
    counts[100:, 9] += rng.poisson(8, size=100)  # higher in every cell of batch b: a batch effect
    pooled = HighlyVariableGenes(n_top_genes=3).fit(counts)
    by_batch = HighlyVariableGenes(n_top_genes=3).fit(counts, batch=batch)
    assert pooled.get_support()[[7, 9]].all() and pooled.n_batches_selected_ is None
    assert by_batch.get_support()[7] and not by_batch.get_support()[9]
    assert by_batch.n_batches_selected_[7] == 2 and by_batch.n_batches_selected_[9] == 0


def test_one_batch_selects_the_genes_of_no_batch():
    rng = np.random.RandomState(1)
    counts = rng.poisson(rng.gamma(1.0, 1.0, size=100), size=(80, 100))
    np.testing.assert_array_equal(HighlyVariableGenes(n_top_genes=10).fit(counts, batch=["x"] * 80).get_support(),
                                  HighlyVariableGenes(n_top_genes=10).fit(counts).get_support())


@pytest.mark.parametrize(("batch", "message"), [(["a"] * 79 + ["b"], "'b' has fewer than 2 cells"),
                                                (["a"] * 79, "80 labels"), ([None] + ["a"] * 79, "missing")])
def test_bad_batches_for_gene_selection_are_clear_errors(batch, message):
    counts = np.random.RandomState(1).poisson(1.0, size=(80, 20))
    with pytest.raises(ValueError, match=message):
        HighlyVariableGenes(n_top_genes=5).fit(counts, batch=batch)


def test_a_boolean_number_of_genes_is_refused():
    with pytest.raises(TypeError, match="a boolean is not a number here"):
        HighlyVariableGenes(n_top_genes=True).fit(np.ones((5, 3)))
