"""The base estimator: saving and loading, input and parameter checks, recorded choices, seeding."""

import os

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from sklearn.model_selection import GridSearchCV

import skvae._persistence
from skvae import AutoencoderEmbedder, BetaVAEEmbedder, BetaVSCEmbedder

SMALL = dict(n_components=3, hidden_layer_sizes=(16, 8), batch_size=32, max_epochs=3, random_state=0)


@pytest.fixture(scope="module")
def data():
    rng = np.random.RandomState(0)
    return np.log1p(rng.poisson(rng.gamma(0.5, 2.0, size=(3, 30))[rng.randint(3, size=90)])).astype(np.float64)


@pytest.fixture(scope="module")
def fitted(data):
    return BetaVAEEmbedder(**SMALL).fit(data)


# --- saving and loading ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "params",
    [{"beta": np.float64(2.0)}, {"n_components": np.int64(3)}, {"hidden_layer_sizes": np.array([16, 8])},
     {"hidden_layer_sizes": (np.int32(16), np.int64(8)), "learning_rate": np.float32(1e-3)}],
    ids=["float64-beta", "int64-n_components", "array-hidden", "numpy-ints-in-tuple"],
)
@pytest.mark.filterwarnings("ignore::skvae.PosteriorCollapseWarning")  # tiny fits: nothing to encode
def test_numpy_typed_parameters_save_and_load(params, data, tmp_path):
    embedder = BetaVAEEmbedder(**{**SMALL, **params}).fit(data)
    embedder.save(tmp_path / "model.pt")
    loaded = BetaVAEEmbedder.load(tmp_path / "model.pt")
    np.testing.assert_array_equal(loaded.transform(data), embedder.transform(data))
    for name, value in params.items():
        np.testing.assert_array_equal(np.asarray(loaded.get_params()[name]), np.asarray(value))


@pytest.mark.filterwarnings("ignore::skvae.PosteriorCollapseWarning")  # tiny fits: nothing to encode
def test_grid_search_best_estimator_with_a_logspace_grid_saves(data, tmp_path):
    search = GridSearchCV(BetaVAEEmbedder(**SMALL), {"beta": np.logspace(-1, 1, 3)}, cv=2).fit(data)
    search.best_estimator_.save(tmp_path / "best.pt")
    assert BetaVAEEmbedder.load(tmp_path / "best.pt").beta == search.best_params_["beta"]


@pytest.mark.filterwarnings("ignore::skvae.PosteriorCollapseWarning")  # tiny fits: nothing to encode
def test_a_parameter_that_cannot_be_saved_is_refused_at_save_time(data, tmp_path):
    embedder = BetaVAEEmbedder(**SMALL).fit(data)
    embedder.beta = object()
    with pytest.raises(TypeError, match="Cannot save parameter beta="):
        embedder.save(tmp_path / "model.pt")
    assert not list(tmp_path.iterdir())


@pytest.mark.filterwarnings("ignore::skvae.PosteriorCollapseWarning")  # tiny fits: nothing to encode
def test_a_failed_save_keeps_the_previous_file(fitted, data, tmp_path, monkeypatch):
    path = tmp_path / "model.pt"
    fitted.save(path)
    good = path.read_bytes()

    def write_half_then_fail(obj, stream):
        stream.write(b"PK\x03\x04 half a file")
        raise OSError("No space left on device")

    monkeypatch.setattr(skvae._persistence.torch, "save", write_half_then_fail)
    with pytest.raises(OSError, match="No space left"):
        fitted.save(path)
    assert path.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # no temporary file left


@pytest.mark.parametrize(
    ("content", "writer"),
    [(b"", "bytes"), (b"just some text\n", "bytes"), (None, "truncated"), ({"format": "skvae-estimator-v1"}, "torch"),
     ([1, 2, 3], "torch")],
    ids=["empty", "text", "truncated", "missing-fields", "not-a-dict"],
)
def test_load_says_not_a_skvae_save_and_names_the_path(content, writer, fitted, tmp_path):
    path = tmp_path / "bad.pt"
    if writer == "bytes":
        path.write_bytes(content)
    elif writer == "torch":
        torch.save(content, path)
    else:
        fitted.save(path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match=f"{path}.*(not a skvae save|damaged)"):
        BetaVAEEmbedder.load(path)


def test_load_of_a_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        BetaVAEEmbedder.load(tmp_path / "nothing.pt")


def _rewrite(path, change):
    """A crafted save: ``change`` applied, and the checksum written anew to match (so the other checks are reached)."""
    state = torch.load(path, weights_only=True)
    change(state)
    state["checksum"] = skvae._persistence.content_checksum(state)
    torch.save(state, path)


def test_a_flipped_bit_in_the_weights_is_found_by_the_checksum(fitted, tmp_path):
    path = tmp_path / "model.pt"
    fitted.save(path)
    state = torch.load(path, weights_only=True)
    weight = next(value for value in state["state_dict"].values() if value.is_floating_point() and value.numel())
    weight.view(torch.int32).view(-1)[0] ^= 1 << 3  # one bit of one float, still a finite number
    torch.save(state, path)
    with pytest.raises(ValueError, match="contents do not match the checksum"):
        BetaVAEEmbedder.load(path)


def test_crafted_dispersions_beyond_any_trained_value_are_refused(tmp_path):
    counts = np.random.RandomState(0).poisson(2.0, size=(40, 6)).astype(float)
    path = tmp_path / "nb.pt"
    BetaVAEEmbedder(**SMALL, likelihood="nb").fit(counts).save(path)
    _rewrite(path, lambda state: state["state_dict"]["likelihood.log_theta"].fill_(1e30))
    with pytest.raises(ValueError, match="log dispersions reach 1e\\+30"):
        BetaVAEEmbedder.load(path)


@pytest.mark.filterwarnings("ignore::skvae.PosteriorCollapseWarning")  # tiny fits: nothing to encode
def test_saving_through_a_symbolic_link_replaces_its_target_and_keeps_the_link(fitted, data, tmp_path):
    target, link = tmp_path / "target.pt", tmp_path / "link.pt"
    fitted.save(target)
    before = target.read_bytes()
    link.symlink_to(target)
    BetaVAEEmbedder(**SMALL, beta=3.0).fit(data).save(link)
    assert link.is_symlink() and target.read_bytes() != before
    assert BetaVAEEmbedder.load(link).beta == 3.0 == BetaVAEEmbedder.load(target).beta


def test_load_checks_the_stated_sizes_before_building_anything(fitted, tmp_path):
    path = tmp_path / "crafted.pt"
    fitted.save(path)
    # a network of 10^9 inputs would need 500 GB: refused before any is allocated, not a MemoryError
    _rewrite(path, lambda state: state.update(n_features_in_=10**9))
    with pytest.raises(ValueError, match="weights do not match its parameters"):
        BetaVAEEmbedder.load(path)


@pytest.mark.parametrize(
    ("change", "message"),
    [(lambda s: s["params"].update(beta=-1.0), "parameters are invalid"),
     (lambda s: s["params"].update(hidden_layer_sizes=[16, 9]), "weights do not match"),
     (lambda s: s["params"].update(unknown=1), "parameters are invalid"),
     (lambda s: s["state_dict"].__setitem__(next(iter(s["state_dict"])), torch.tensor(float("nan"))), "do not match"),
     (lambda s: s["state_dict"].update({k: torch.full_like(v, float("nan")) for k, v in s["state_dict"].items()}),
      "not all finite"),
     (lambda s: s.update(feature_names_in_=["a", "b"]), "feature names")],
    ids=["invalid-beta", "other-sizes", "unknown-parameter", "wrong-shape", "nan-weights", "names-count"],
)
def test_load_refuses_damaged_or_tampered_contents(change, message, fitted, tmp_path):
    path = tmp_path / "model.pt"
    fitted.save(path)
    _rewrite(path, change)
    with pytest.raises(ValueError, match=message):
        BetaVAEEmbedder.load(path)


# --- input and parameters ------------------------------------------------------------------------------


@pytest.mark.parametrize("device", ["mps", "meta"])
def test_devices_other_than_cpu_and_cuda_are_a_value_error(device, data):
    with pytest.raises(ValueError, match=f"device='{device}'.*'cpu' or 'cuda'"):
        AutoencoderEmbedder(**{**SMALL, "device": device}).fit(data)


@pytest.mark.parametrize("sizes", [(True,), (16, False), [[16, 8]], np.array([[16], [8]]), (), (16, 0)])
def test_hidden_layer_sizes_must_be_a_flat_sequence_of_positive_integers(sizes, data):
    with pytest.raises(ValueError, match="hidden_layer_sizes must be a non-empty 1-D sequence"):
        AutoencoderEmbedder(**{**SMALL, "hidden_layer_sizes": sizes}).fit(data)


def test_dates_are_refused(data):
    dates = np.arange("2020-01-01", "2020-03-31", dtype="datetime64[D]")[:80].reshape(40, 2)
    with pytest.raises(TypeError, match="dates or durations"):
        AutoencoderEmbedder(**SMALL).fit(dates)
    with pytest.raises(TypeError, match="dates or durations"):
        AutoencoderEmbedder(**SMALL).fit(pd.DataFrame({"a": dates[:, 0], "b": dates[:, 1]}))


def test_values_beyond_float32_are_refused_by_fit_and_score(fitted, data):
    huge = data.copy()
    huge[0, 0] = 1e39
    with pytest.raises(ValueError, match="beyond float32's range"):
        AutoencoderEmbedder(**SMALL).fit(huge)
    with pytest.raises(ValueError, match="beyond float32's range"):
        fitted.score(sp.csr_matrix(huge))


def test_random_state_none_leaves_numpy_global_state_untouched(data):
    before = np.random.get_state()[1].copy(), np.random.get_state()[2]
    AutoencoderEmbedder(**{**SMALL, "random_state": None}).fit(data)
    after = np.random.get_state()
    assert np.array_equal(before[0], after[1]) and before[1] == after[2]


def _mostly_zero(X):
    return np.where(np.random.RandomState(1).uniform(size=X.shape) < 0.9, 0.0, X + 1.0)


@pytest.mark.parametrize(("make", "expected"), [(_mostly_zero, "sparse"), (lambda X: X + np.random.RandomState(0).normal(size=X.shape), "dense"),
                                               (sp.csr_matrix, "sparse")], ids=["dense-mostly-zero", "dense", "csr"])
@pytest.mark.filterwarnings("ignore::skvae.PosteriorCollapseWarning")  # tiny fits: nothing to encode
def test_algorithm_auto_is_resolved_recorded_saved_and_used_by_score(make, expected, tmp_path, monkeypatch, data):
    X = make(data)
    embedder = BetaVSCEmbedder(**SMALL).fit(X)
    assert embedder.algorithm == "auto" and embedder.algorithm_ == expected
    embedder.save(tmp_path / "model.pt")
    assert BetaVSCEmbedder.load(tmp_path / "model.pt").algorithm_ == expected
    seen = []
    import skvae.base
    import skvae.train.data

    original = skvae.train.data.make_row_source
    monkeypatch.setattr(skvae.train.data, "make_row_source", lambda *a, **k: seen.append(k["algorithm"]) or original(*a, **k))
    embedder.score(X)
    assert seen == [expected]


def test_save_path_may_be_a_string_in_the_current_folder(fitted, data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fitted.save("model.pt")
    assert os.listdir(tmp_path) == ["model.pt"]
    np.testing.assert_array_equal(BetaVAEEmbedder.load("model.pt").transform(data), fitted.transform(data))


def test_n_components_wider_than_the_last_hidden_layer_warns(data):
    with pytest.warns(UserWarning, match=r"n_components=12 is larger than the last hidden layer \(8\).*\(16, 12\)"):
        AutoencoderEmbedder(**{**SMALL, "n_components": 12}).fit(data)


def test_raw_counts_given_to_a_gaussian_model_warn(data):
    counts = np.random.RandomState(0).poisson(2.0, size=(40, 10)).astype(float)
    with pytest.warns(UserWarning, match="looks like raw counts.*likelihood='nb'"):
        BetaVAEEmbedder(**SMALL).fit(counts)


def test_an_anndata_object_gets_a_clear_type_error():
    class AnnData:  # stands in for anndata.AnnData, an optional dependency
        X = np.eye(3)

    with pytest.raises(TypeError, match=r"X is an AnnData object: pass its matrix, e\.g\. adata\.X"):
        AutoencoderEmbedder(**SMALL).fit(AnnData())


@pytest.mark.parametrize("params", [{"beta": True}, {"n_components": True}, {"learning_rate": True}])
def test_booleans_given_for_numbers_are_refused(params, data):
    with pytest.raises(TypeError, match="a boolean is not a number here"):
        BetaVAEEmbedder(**{**SMALL, **params}).fit(data)


def test_ragged_hidden_layer_sizes_get_the_estimators_message(data):
    with pytest.raises(ValueError, match="hidden_layer_sizes must be a non-empty 1-D sequence"):
        BetaVAEEmbedder(**{**SMALL, "hidden_layer_sizes": [[8, 4], 2]}).fit(data)


@pytest.mark.parametrize("X", [np.array([["1.0", "2.0"], ["3.0", "4.0"]], dtype=object),
                               [["1.0", "2.0"], ["3.0", "4.0"]],
                               pd.DataFrame({"a": ["1.0", "2"], "b": [1.0, 2.0]})])
def test_text_is_refused_even_when_it_reads_as_numbers(X):
    with pytest.raises(ValueError, match="X holds text, such as '1.0'"):
        AutoencoderEmbedder(**SMALL).fit(X)


def test_a_pandas_sparse_frame_that_leaves_out_nan_is_a_clear_error():
    frame = pd.DataFrame({"a": [0.0, 1.0, np.nan], "b": [np.nan, 2.0, 3.0]}).astype(pd.SparseDtype(float, np.nan))
    with pytest.raises(ValueError, match="fill value NaN"):
        AutoencoderEmbedder(**SMALL).fit(frame)


@pytest.mark.filterwarnings("ignore:X looks like raw counts")  # count-like data, not what is tested
def test_a_matrix_wider_than_memory_allows_is_refused_before_allocating():
    X = sp.csr_matrix(([1.0, 2.0], ([0, 1], [3, 2**40 - 1])), shape=(2, 2**40))
    with pytest.raises(ValueError, match=r"1099511627776 features: the network's layers over them would take"):
        AutoencoderEmbedder(**SMALL).fit(X)
