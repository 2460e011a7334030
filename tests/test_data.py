"""The row-data object: one per input, every source, splits, shards, covariates carried into every minibatch."""

import anndata
import numpy as np
import pytest
import scipy.sparse as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from skvae.train.data import BackedRows, InMemoryRows, RowData, iter_minibatches
from skvae.train.distributed import RankGroup


def _matrix():
    rng = np.random.RandomState(0)
    X = np.where(rng.uniform(size=(23, 7)) < 0.3, rng.poisson(3.0, size=(23, 7)), 0).astype(np.float32)
    X[:, 0] = np.arange(1, 24)  # every row differs: a row tells which it is
    return X


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """The same rows as a dense array, a CSR matrix and a CSR matrix on disk, each with a batch covariate."""
    X = _matrix()
    path = tmp_path_factory.mktemp("data") / "rows.h5ad"
    anndata.AnnData(sp.csr_matrix(X)).write_h5ad(path)
    batch = np.arange(len(X)) % 3
    return X, batch, {
        "dense": RowData.from_input(X, covariates=batch[:, None], labels=batch - 1),
        "sparse": RowData.from_input(sp.csr_matrix(X), covariates=batch[:, None], labels=batch - 1),
        "backed": RowData.from_input(anndata.read_h5ad(path, backed="r").X, covariates=batch[:, None], labels=batch - 1),
    }


def _dense(minibatch):
    x = minibatch.x
    return x.numpy() if isinstance(x, torch.Tensor) else (x.values.to_dense() + x.shift).numpy()


def test_from_input_decides_once_what_the_input_is(sources):
    _, _, data = sources
    assert isinstance(data["dense"], InMemoryRows) and not data["dense"].stored_sparse
    assert isinstance(data["sparse"], InMemoryRows) and data["sparse"].stored_sparse
    assert isinstance(data["backed"], BackedRows) and data["backed"].on_disk and data["backed"].stored_sparse
    assert {d.shape for d in data.values()} == {(23, 7)}


@pytest.mark.parametrize("kind", ["dense", "sparse", "backed"])
@pytest.mark.parametrize("algorithm", ["dense", "sparse"])
def test_every_source_gives_the_rows_and_their_covariates_and_labels(sources, kind, algorithm):
    X, batch, data = sources
    source = data[kind].source(algorithm=algorithm, center=False)
    minibatch = source.minibatch(np.array([5, 0, 17]))
    np.testing.assert_array_equal(_dense(minibatch), X[[5, 0, 17]])
    np.testing.assert_array_equal(minibatch.covariates[:, 0].numpy(), batch[[5, 0, 17]])
    np.testing.assert_array_equal(minibatch.labels.numpy(), batch[[5, 0, 17]] - 1)  # in a slot of their own
    seen = list(iter_minibatches(source, 10))
    assert [len(m) for m in seen] == [10, 10, 3]
    np.testing.assert_array_equal(np.concatenate([m.covariates[:, 0].numpy() for m in seen]), batch)
    np.testing.assert_array_equal(np.concatenate([m.labels.numpy() for m in seen]), batch - 1)


@settings(max_examples=25, deadline=None)
@given(fraction=st.floats(0.1, 0.9), seed=st.integers(0, 2**31 - 1))
def test_splits_partition_the_rows_with_their_covariates_the_same_way_in_memory_and_on_disk(sources, fraction, seed):
    X, batch, data = sources
    splits = {kind: d.split(fraction, np.random.RandomState(seed)) for kind, d in data.items()}
    for train, validation in splits.values():
        assert train.n_rows + validation.n_rows == len(X)
    for part in (0, 1):
        rows = [splits[kind][part].in_memory().X for kind in ("dense", "sparse", "backed")]
        rows = [r.toarray() if sp.issparse(r) else r for r in rows]
        np.testing.assert_array_equal(rows[0], rows[1])
        np.testing.assert_array_equal(rows[0], rows[2])
        batches = {tuple(splits[kind][part].covariates[:, 0]) for kind in splits}
        assert len(batches) == 1
    # each row keeps its own covariate
    train = splits["dense"][0]
    np.testing.assert_array_equal(train.covariates[:, 0], batch[train.X[:, 0].astype(int) - 1])


class _Rank(RankGroup):
    """A rank of a 3-process group, without processes (shard_of needs only the rank and size)."""

    def __init__(self, rank):  # noqa: PLW0231
        self.rank, self.world_size = rank, 3


def test_a_file_on_disk_is_sharded_into_contiguous_blocks_and_memory_is_each_ranks_own(sources):
    X, batch, data = sources
    shards = [data["backed"].shard(_Rank(rank)) for rank in range(3)]
    np.testing.assert_array_equal(np.concatenate([s.rows for s in shards]), np.arange(len(X)))
    np.testing.assert_array_equal(np.concatenate([s.covariates[:, 0] for s in shards]), batch)
    assert data["dense"].shard(_Rank(1)) is data["dense"] and data["backed"].shard(None) is data["backed"]


@pytest.mark.parametrize("kind", ["dense", "sparse", "backed"])
def test_sample_takes_evenly_spaced_rows_into_memory(sources, kind):
    X, batch, data = sources
    sample = data[kind].sample(5)
    assert isinstance(sample, InMemoryRows)
    expected = np.unique(np.linspace(0, len(X) - 1, 5).astype(int))
    values = sample.X.toarray() if sp.issparse(sample.X) else sample.X
    np.testing.assert_array_equal(values, X[expected])
    np.testing.assert_array_equal(sample.covariates[:, 0], batch[expected])
    assert data["dense"].sample(100) is data["dense"]


@pytest.mark.parametrize("kind", ["dense", "sparse", "backed"])
def test_value_blocks_hold_every_stored_value(sources, kind):
    X, _, data = sources
    values = np.concatenate([np.ravel(b.data if sp.issparse(b) else b) for b in data[kind].value_blocks()])
    np.testing.assert_array_equal(np.sort(values[values != 0]), np.sort(X[X != 0]))


def test_a_covariate_of_the_wrong_length_is_refused():
    with pytest.raises(ValueError, match="covariates has 2 values for 3 rows of X"):
        RowData.from_input(np.zeros((3, 2)), covariates=[[0], [1]])
    with pytest.raises(ValueError, match="labels has 2 values for 3 rows of X"):
        RowData.from_input(np.zeros((3, 2))).with_labels([0, 1])
