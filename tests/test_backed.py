"""Training from a CSR matrix on disk: damaged layouts refused up front, any stored number type, a file that changes."""

import os

import anndata
import h5py
import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import skvae.base
import skvae.train.session
from skvae import AutoencoderEmbedder, BetaVAEEmbedder

# one shuffling for data in memory and on disk (where "auto" shuffles blocks of rows): the same minibatches
SMALL = dict(n_components=2, hidden_layer_sizes=(8,), batch_size=16, max_epochs=2, random_state=0, shuffle_block_size=16)


@pytest.fixture(scope="module")
def counts():
    rng = np.random.RandomState(0)
    return sp.csr_matrix(rng.poisson(rng.gamma(0.3, 2.0, size=(3, 12))[rng.randint(3, size=40)]).astype(np.float32))


def _write(path, counts, **changes):
    """Write ``counts`` as anndata does, then overwrite some of its arrays or attributes with h5py."""
    anndata.AnnData(counts).write_h5ad(path)
    with h5py.File(path, "r+") as file:
        group = file["X"]
        for name, value in changes.items():
            if name == "shape":
                group.attrs["shape"] = value
            else:
                del group[name]
                group[name] = value
    return anndata.read_h5ad(path, backed="r").X


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: {"indices": np.where(np.arange(c.nnz) == 3, 10**6, c.indices)}, "column indices run from .* beyond"),
        (lambda c: {"indices": np.where(np.arange(c.nnz) == 3, 12, c.indices)}, "beyond the stated 12 genes"),
        (lambda c: {"indices": np.where(np.arange(c.nnz) == 3, -1, c.indices)}, "column indices run from -1"),
        (lambda c: {"shape": np.array([40, 5])}, "beyond the stated 5 genes"),
        (lambda c: {"shape": np.array([41, 12])}, "indptr has 41 entries for a stated 41 rows"),
        (lambda c: {"indptr": c.indptr[::-1].copy()}, "indptr does not run from 0"),
        (lambda c: {"indptr": c.indptr[:-1]}, "indptr has 40 entries"),
    ],
)
@pytest.mark.filterwarnings("ignore:X looks like raw counts")  # count-like data, not what is tested
def test_a_damaged_csr_layout_is_a_value_error_naming_the_file(change, message, counts, tmp_path):
    X = _write(tmp_path / "damaged.h5ad", counts, **change(counts))
    with pytest.raises(ValueError, match=message) as error:
        BetaVAEEmbedder(**SMALL, likelihood="nb").fit(X)
    assert "damaged.h5ad" in str(error.value)
    fitted = AutoencoderEmbedder(**SMALL).fit(counts)
    with pytest.raises(ValueError, match=message):
        fitted.transform(X)


def test_a_matrix_of_no_genes_is_refused(tmp_path):
    X = _write(tmp_path / "empty.h5ad", sp.csr_matrix((5, 0), dtype=np.float32))
    with pytest.raises(ValueError, match="0 genes"):
        AutoencoderEmbedder(**SMALL).fit(X)


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.float16])
def test_integer_and_half_precision_files_train_as_their_values_do_in_memory(dtype, counts, tmp_path):
    X = _write(tmp_path / "typed.h5ad", counts, data=counts.data.astype(dtype))
    for cls in (AutoencoderEmbedder, BetaVAEEmbedder):
        from_disk = cls(**SMALL, likelihood="nb").fit(X)
        in_memory = cls(**SMALL, likelihood="nb").fit(counts)
        np.testing.assert_array_equal(from_disk.transform(X), in_memory.transform(counts.astype(np.float64)))


def test_duplicate_entries_mean_their_sum_in_memory_and_on_disk(counts, tmp_path):
    # every stored value split in two entries of the same gene: the same matrix, written twice as long
    data, indices, indptr = [], [], [0]
    for row in range(counts.shape[0]):
        values, genes = counts[row].data, counts[row].indices
        halves = np.floor(values / 2)
        data += [halves, values - halves]
        indices += [genes, genes]
        indptr.append(indptr[-1] + 2 * len(genes))
    duplicated = sp.csr_matrix((np.concatenate(data), np.concatenate(indices), indptr), shape=counts.shape)
    assert (duplicated != counts).nnz == 0 and not duplicated.has_canonical_format
    expected = BetaVAEEmbedder(**SMALL, likelihood="nb").fit(counts).transform(counts)
    np.testing.assert_array_equal(BetaVAEEmbedder(**SMALL, likelihood="nb").fit(duplicated).transform(duplicated), expected)
    X = _write(tmp_path / "duplicated.h5ad", counts, data=duplicated.data, indices=duplicated.indices,
               indptr=duplicated.indptr)
    np.testing.assert_array_equal(BetaVAEEmbedder(**SMALL, likelihood="nb").fit(X).transform(X), expected)


@pytest.mark.filterwarnings("ignore:X looks like raw counts")  # count-like data, not what is tested
def test_a_file_written_to_during_training_is_an_error_and_the_model_is_not_kept(counts, tmp_path, monkeypatch):
    path = tmp_path / "changing.h5ad"
    X = _write(path, counts)
    original = skvae.train.session.train

    def train_while_the_file_changes(*args, **kwargs):
        history = original(*args, **kwargs)
        status = os.stat(path)
        os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns + 10**9))  # as a write would
        return history

    monkeypatch.setattr(skvae.train.session, "train", train_while_the_file_changes)
    estimator = AutoencoderEmbedder(**SMALL)
    with pytest.raises(ValueError, match="changing.h5ad was modified while skvae trained on it"):
        estimator.fit(X)
    assert not hasattr(estimator, "module_")


def test_a_gaussian_model_given_raw_counts_on_disk_warns_as_in_memory(counts, tmp_path):
    X = _write(tmp_path / "raw.h5ad", counts)
    with pytest.warns(UserWarning, match="looks like raw counts"):
        AutoencoderEmbedder(**SMALL).fit(X)


@pytest.fixture(scope="module")
def stored_file(tmp_path_factory):
    rng = np.random.RandomState(3)
    X = sp.random(300, 25, density=0.15, format="csr", random_state=rng, dtype=np.float64)
    X.data = np.round(X.data * 10)
    path = tmp_path_factory.mktemp("stored") / "rows.h5ad"
    anndata.AnnData(X).write_h5ad(path)
    return X, anndata.read_h5ad(path, backed="r").X


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), size=st.integers(0, 300), block=st.sampled_from([1, 3, 16]))
def test_rows_read_from_disk_equal_the_rows_in_memory_in_any_order(stored_file, seed, size, block):
    from skvae.train.loop import epoch_order
    from skvae.train.rows import BackedSparseRowSource

    X, on_disk = stored_file
    wanted = epoch_order(np.random.RandomState(seed), 300, block)[:size]
    source = BackedSparseRowSource(on_disk, dtype=np.float64, device="cpu", with_transpose=False)
    read = source.csr(wanted)
    assert (read != X[wanted]).nnz == 0 and read.shape == (size, 25)


def test_a_file_truncated_after_it_was_opened_is_a_value_error_naming_it(counts, tmp_path):
    path = tmp_path / "truncated.h5ad"
    X = _write(path, sp.csr_matrix(np.tile(counts.toarray(), (50, 1))))  # large enough to lose its arrays
    os.truncate(path, path.stat().st_size // 3)
    # HDF5 fails to read, or reads zeros where the arrays were cut: either way a ValueError naming the file
    with pytest.raises(ValueError, match=r"truncated.h5ad.*(damaged|truncated)"):
        BetaVAEEmbedder(**SMALL, likelihood="nb").fit(X)
