"""Behaviour of the estimators: pipelines, model selection, reproducibility, persistence, bad input."""

import pickle

import joblib
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from sklearn.manifold import TSNE
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline

from skvae import AutoencoderEmbedder, BetaVAEEmbedder, BetaVSCEmbedder, PosteriorCollapseWarning

ESTIMATORS = [AutoencoderEmbedder, BetaVAEEmbedder, BetaVSCEmbedder]
SMALL = dict(n_components=3, hidden_layer_sizes=(32, 16, 8), batch_size=32, max_epochs=15, random_state=0)


def make_counts_like(n_samples=120, n_features=40, seed=0):
    """Sparse, non-negative, log-normalised-looking data with three groups."""
    rng = np.random.RandomState(seed)
    groups = rng.randint(3, size=n_samples)
    rates = rng.gamma(0.5, 2.0, size=(3, n_features))
    return np.log1p(rng.poisson(rates[groups])).astype(np.float64), groups


@pytest.fixture(scope="module")
def data():
    return make_counts_like()[0]


@pytest.fixture(scope="module", params=ESTIMATORS, ids=lambda c: c.__name__)
def fitted(request, data):
    return request.param(**SMALL).fit(data)


@pytest.mark.filterwarnings("ignore::skvae.PosteriorCollapseWarning")  # tiny fits: nothing to encode
def test_fitted_attributes(fitted, data):
    assert fitted.n_features_in_ == data.shape[1]
    assert fitted.n_iter_ == SMALL["max_epochs"] == len(fitted.history_["loss"])
    assert set(fitted.history_) == {"loss", "reconstruction", "kl", "kl_weight"}
    assert next(fitted.module_.parameters()).device.type == "cpu"
    assert not fitted.module_.training


def test_training_reduces_the_loss(fitted):
    assert fitted.history_["loss"][-1] < fitted.history_["loss"][0]


def test_transform_shape_dtype_and_determinism(fitted, data):
    codes = fitted.transform(data)
    assert codes.shape == (data.shape[0], SMALL["n_components"]) and codes.dtype == np.float64
    np.testing.assert_array_equal(codes, fitted.transform(data))
    codes32 = fitted.transform(data.astype(np.float32))
    assert codes32.dtype == np.float32
    np.testing.assert_allclose(codes32, codes, rtol=1e-4, atol=1e-5)


def test_inverse_transform_decodes_codes(fitted, data):
    reconstruction = fitted.inverse_transform(fitted.transform(data))
    assert reconstruction.shape == data.shape
    # a trained decoder beats predicting zeros
    assert ((reconstruction - data) ** 2).sum() < (data**2).sum()


def test_score_is_negative_mean_loss(fitted, data):
    score = fitted.score(data)
    assert np.isfinite(score) and score < 0
    if isinstance(fitted, AutoencoderEmbedder):
        reconstruction = fitted.inverse_transform(fitted.transform(data))
        np.testing.assert_allclose(score, -((reconstruction - data) ** 2).sum(axis=1).mean(), rtol=1e-4)


@pytest.mark.filterwarnings("ignore::skvae.PosteriorCollapseWarning")  # tiny fits: nothing to encode
@pytest.mark.parametrize("cls", [BetaVAEEmbedder, BetaVSCEmbedder])
def test_score_is_reconstruction_plus_unit_weighted_kl_whatever_beta(cls, data):
    fitted = cls(**{**SMALL, "beta": 3.0, "max_epochs": 3}).fit(data)
    codes = fitted.transform(data)
    squared_error = ((fitted.inverse_transform(codes) - data) ** 2).sum(axis=1)
    with torch.no_grad():
        kl = fitted.module_.loss(torch.from_numpy(data).float(), deterministic=True).kl.numpy()
    assert kl.mean() > 0.01  # the KL term matters here, so a wrong weight would show
    np.testing.assert_allclose(fitted.score(data), -(squared_error + kl).mean(), rtol=1e-4)


@pytest.mark.filterwarnings("ignore::skvae.PosteriorCollapseWarning")  # tiny fits: nothing to encode
def test_same_random_state_same_embedding_and_global_rngs_untouched(data):
    np_state, torch_state = np.random.get_state()[1].copy(), torch.get_rng_state().clone()
    first = BetaVSCEmbedder(**SMALL).fit_transform(data)
    second = BetaVSCEmbedder(**SMALL).fit_transform(data)
    np.testing.assert_array_equal(first, second)
    assert not np.array_equal(first, BetaVSCEmbedder(**{**SMALL, "random_state": 1}).fit_transform(data))
    np.testing.assert_array_equal(np.random.get_state()[1], np_state)
    assert torch.equal(torch.get_rng_state(), torch_state)


@pytest.mark.filterwarnings("ignore::skvae.PosteriorCollapseWarning")  # tiny fits: nothing to encode
@pytest.mark.parametrize("cls", ESTIMATORS)
@pytest.mark.parametrize("fmt", ["csr", "csc"])
def test_sparse_input_gives_the_dense_result(cls, fmt, data):
    dense = cls(**SMALL).fit(data)
    sparse = cls(**SMALL).fit(sp.csr_matrix(data).asformat(fmt))
    np.testing.assert_allclose(sparse.transform(sp.csr_matrix(data).asformat(fmt)), dense.transform(data), atol=1e-6)


def test_sparse_input_is_densified_one_minibatch_at_a_time(data, monkeypatch):
    densified_rows = []
    toarray = sp.csr_matrix.toarray

    def recording_toarray(self, *args, **kwargs):
        densified_rows.append(self.shape[0])
        return toarray(self, *args, **kwargs)

    monkeypatch.setattr(sp.csr_matrix, "toarray", recording_toarray)
    AutoencoderEmbedder(**{**SMALL, "max_epochs": 2}, algorithm="dense").fit(sp.csr_matrix(data))
    assert densified_rows and max(densified_rows) == SMALL["batch_size"] < data.shape[0]
    densified_rows.clear()
    AutoencoderEmbedder(**{**SMALL, "max_epochs": 2}).fit(sp.csr_matrix(data)).transform(sp.csr_matrix(data))
    assert densified_rows == []  # the sparse algorithm never densifies


@pytest.mark.filterwarnings("ignore::skvae.PosteriorCollapseWarning")  # tiny fits: nothing to encode
def test_pipeline_with_tsne(data):
    pipeline = Pipeline([("vsc", BetaVSCEmbedder(**{**SMALL, "beta": 2})), ("tsne", TSNE(perplexity=10, random_state=0))])
    embedding = pipeline.fit_transform(data)
    assert embedding.shape == (data.shape[0], 2) and np.isfinite(embedding).all()


@pytest.mark.filterwarnings("ignore::skvae.PosteriorCollapseWarning")  # tiny fits: nothing to encode
def test_grid_search_over_beta_uses_score(data):
    search = GridSearchCV(BetaVAEEmbedder(**{**SMALL, "max_epochs": 5}), {"beta": [0.5, 1, 2, 4]}, cv=2)
    search.fit(data)
    scores = search.cv_results_["mean_test_score"]
    assert np.isfinite(scores).all() and len(set(scores)) == 4
    # the search picks the beta whose cross-validated score (the estimator's score) is highest
    assert search.best_params_["beta"] == search.cv_results_["param_beta"][np.argmax(scores)]
    assert search.best_estimator_.beta == search.best_params_["beta"]


@pytest.mark.filterwarnings("ignore::skvae.PosteriorCollapseWarning")  # tiny fits: nothing to encode
def test_beta_scales_the_kl_in_training(data):
    weak = BetaVSCEmbedder(**{**SMALL, "beta": 0.0}).fit(data)
    strong = BetaVSCEmbedder(**{**SMALL, "beta": 20.0}).fit(data)
    assert strong.history_["kl"][-1] < 0.5 * weak.history_["kl"][-1]
    np.testing.assert_allclose(
        np.array(strong.history_["loss"]),
        np.array(strong.history_["reconstruction"]) + 20.0 * np.array(strong.history_["kl"]),
        rtol=1e-6,
    )


def test_pickle_and_joblib_round_trips(fitted, data, tmp_path):
    restored = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_array_equal(restored.transform(data), fitted.transform(data))
    joblib.dump(fitted, tmp_path / "model.joblib")
    np.testing.assert_array_equal(joblib.load(tmp_path / "model.joblib").transform(data), fitted.transform(data))


def test_save_and_load_round_trip(fitted, data, tmp_path):
    path = tmp_path / "model.pt"
    fitted.save(path)
    restored = type(fitted).load(path)
    assert restored.get_params() == fitted.get_params()
    np.testing.assert_array_equal(restored.transform(data), fitted.transform(data))
    assert restored.history_ == fitted.history_ and restored.n_iter_ == fitted.n_iter_


def test_load_refuses_another_class_and_foreign_files(tmp_path, data):
    path = tmp_path / "model.pt"
    AutoencoderEmbedder(**{**SMALL, "max_epochs": 1}).fit(data).save(path)
    with pytest.raises(ValueError, match="holds AutoencoderEmbedder, not BetaVAEEmbedder"):
        BetaVAEEmbedder.load(path)
    torch.save({"something": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="other.pt is not a skvae save"):
        AutoencoderEmbedder.load(tmp_path / "other.pt")


@pytest.mark.filterwarnings("ignore::skvae.PosteriorCollapseWarning")  # tiny fits: nothing to encode
def test_feature_names_and_pandas_output(data):
    genes = [f"gene{i}" for i in range(data.shape[1])]
    embedder = BetaVAEEmbedder(**{**SMALL, "max_epochs": 2}).set_output(transform="pandas")
    codes = embedder.fit_transform(pd.DataFrame(data, columns=genes))
    assert isinstance(codes, pd.DataFrame)
    assert list(codes.columns) == ["betavaeembedder0", "betavaeembedder1", "betavaeembedder2"]
    assert list(embedder.feature_names_in_) == genes


@pytest.mark.filterwarnings("ignore::skvae.PosteriorCollapseWarning")  # tiny fits: nothing to encode
def test_vae_and_vsc_sample_from_the_prior(data):
    for cls in (BetaVAEEmbedder, BetaVSCEmbedder):
        embedder = cls(**{**SMALL, "max_epochs": 2}).fit(data)
        samples = embedder.sample(5, random_state=0)
        assert samples.shape == (5, data.shape[1])
        np.testing.assert_array_equal(samples, embedder.sample(5, random_state=0))
    assert not hasattr(AutoencoderEmbedder(), "sample")


@pytest.mark.filterwarnings("ignore::skvae.PosteriorCollapseWarning")  # tiny fits: nothing to encode
def test_vsc_spike_probabilities(data):
    embedder = BetaVSCEmbedder(**SMALL).fit(data)
    gamma = embedder.spike_probabilities(data)
    assert gamma.shape == (data.shape[0], SMALL["n_components"])
    assert ((gamma > 0) & (gamma < 1)).all()


@pytest.mark.filterwarnings("ignore::skvae.PosteriorCollapseWarning")  # tiny fits: nothing to encode
def test_early_stopping_uses_a_validation_split(data):
    embedder = BetaVAEEmbedder(
        **{**SMALL, "max_epochs": 200}, early_stopping=True, validation_fraction=0.2, n_iter_no_change=3, tol=1e6
    ).fit(data)
    # with an unreachable tolerance, training stops after n_iter_no_change + 1 epochs
    assert embedder.n_iter_ == 4
    assert len(embedder.history_["val_loss"]) == 4


@pytest.mark.filterwarnings("ignore::skvae.PosteriorCollapseWarning")  # tiny fits: nothing to encode
def test_early_stopping_restores_the_best_weights(data):
    from sklearn.model_selection import train_test_split

    from skvae.train.data import RowData
    from skvae.train.loop import mean_loss

    params = dict(SMALL, max_epochs=40, learning_rate=3e-2, early_stopping=True, validation_fraction=0.25,
                  n_iter_no_change=4, tol=0.0)
    embedder = BetaVAEEmbedder(**params).fit(data)
    val_losses = embedder.history_["val_loss"]
    assert np.argmin(val_losses) < len(val_losses) - 1, "the last epoch was the best: nothing to restore"
    # the same split as fit's: the same RandomState, after the seed it draws first
    rng = np.random.RandomState(SMALL["random_state"])
    rng.randint(np.iinfo(np.int32).max)
    _, X_val = train_test_split(data.astype(np.float32), test_size=0.25, random_state=rng)
    rows = RowData.from_input(X_val).source(algorithm=embedder.algorithm_, center=True)
    restored = mean_loss(embedder.module_, rows, kl_weight=embedder.beta, batch_size=SMALL["batch_size"])
    assert restored == pytest.approx(min(val_losses), rel=1e-5)


@pytest.mark.filterwarnings("ignore::skvae.PosteriorCollapseWarning")  # tiny fits: nothing to encode
def test_verbose_prints_one_line_per_epoch(data, capsys):
    AutoencoderEmbedder(**{**SMALL, "max_epochs": 3}, verbose=1).fit(data)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Epoch")]
    assert len(lines) == 3 and "loss" in lines[0] and " s, " in lines[0] and lines[0].endswith(" left")
    assert "KL" not in lines[0]  # an autoencoder has no KL term to report
    BetaVAEEmbedder(**{**SMALL, "max_epochs": 1}, verbose=1).fit(data)
    vae_line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("Epoch"))
    assert "(reconstruction " in vae_line and ", KL " in vae_line


# --- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize("cls", ESTIMATORS)
@pytest.mark.parametrize(
    "X, message",
    [
        (np.array([[0.0, np.nan], [1.0, 2.0], [3.0, 4.0]]), "NaN"),
        (np.array([[0.0, np.inf], [1.0, 2.0], [3.0, 4.0]]), "infinity"),
        (np.empty((0, 3)), "0 sample"),
        (np.empty((3, 0)), "0 feature"),
        (np.ones((1, 3)), "1 sample"),
        (np.array([["a", "b"], ["c", "d"]], dtype=object), "could not convert|Unable to convert"),
    ],
    ids=["nan", "inf", "empty", "no-features", "one-sample", "strings"],
)
def test_bad_training_data_raises_before_training(cls, X, message):
    with pytest.raises(ValueError, match=message):
        cls(**SMALL).fit(X)


@pytest.mark.parametrize(
    "estimator, message",
    [
        (BetaVAEEmbedder(beta=-1), "beta"),
        (BetaVSCEmbedder(beta=-0.5), "beta"),
        (BetaVSCEmbedder(prior_activity=0.0), "prior_activity"),
        (BetaVSCEmbedder(prior_activity=1.0), "prior_activity"),
        (BetaVSCEmbedder(spike_sharpness=0), "spike_sharpness"),
        (AutoencoderEmbedder(n_components=0), "n_components"),
        (AutoencoderEmbedder(learning_rate=0), "learning_rate"),
        (AutoencoderEmbedder(hidden_layer_sizes=()), "hidden_layer_sizes"),
        (AutoencoderEmbedder(hidden_layer_sizes=(16, -2)), "hidden_layer_sizes"),
        (AutoencoderEmbedder(hidden_layer_sizes=(16.5,)), "hidden_layer_sizes"),
        (AutoencoderEmbedder(device="gpu9"), "device"),
        (AutoencoderEmbedder(algorithm="fast"), "algorithm"),
    ],
)
def test_bad_parameters_raise(estimator, message, data):
    with pytest.raises(ValueError, match=message):
        estimator.fit(data)


def test_cuda_requested_without_cuda_raises(data, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="CUDA is not available"):
        AutoencoderEmbedder(device="cuda").fit(data)


def test_wrong_number_of_features_at_transform(fitted, data):
    with pytest.raises(ValueError, match="features"):
        fitted.transform(data[:, :-1])
    with pytest.raises(ValueError, match="columns"):
        fitted.inverse_transform(np.zeros((2, SMALL["n_components"] + 1)))


def test_non_finite_loss_stops_with_a_clear_error():
    X = np.full((20, 5), 1e25)
    X[::2] = -1e25
    with pytest.raises(ValueError, match="Training diverged at epoch 1: the training loss became .*learning_rate"):
        AutoencoderEmbedder(**SMALL).fit(X)


def _two_groups(n=200, n_features=20, seed=0):
    rng = np.random.RandomState(seed)
    groups = rng.randint(2, size=n)
    return rng.normal(size=(n, n_features)) + 4.0 * groups[:, None], groups


@pytest.mark.parametrize("cls", [BetaVAEEmbedder, BetaVSCEmbedder])
def test_a_collapsed_posterior_warns_and_is_counted(cls):
    X, _ = _two_groups()
    # a KL weight that dwarfs the reconstruction pulls every posterior onto the prior
    with pytest.warns(PosteriorCollapseWarning, match=r"0 of the 3 latent dimensions are active.*beta=10000"):
        estimator = cls(**{**SMALL, "beta": 1e4, "max_epochs": 40}).fit(X)
    assert estimator.n_active_components_ == 0 and estimator.active_components_.tolist() == [False] * 3
    assert estimator.transform(X).var(axis=0).max() < 0.01


@pytest.mark.parametrize("cls", [BetaVAEEmbedder, BetaVSCEmbedder])
def test_a_model_that_uses_its_code_does_not_warn(cls, recwarn):
    X, _ = _two_groups()
    estimator = cls(**{**SMALL, "n_components": 2, "beta": 0.1, "max_epochs": 40}).fit(X)
    assert not [w for w in recwarn if issubclass(w.category, PosteriorCollapseWarning)]
    assert estimator.n_active_components_ >= 1
    codes = estimator.transform(X)
    assert np.allclose(estimator.active_components_, codes.var(axis=0) > 0.01)


def test_the_autoencoder_has_no_activity_attributes(data):
    assert not hasattr(AutoencoderEmbedder(**SMALL).fit(data), "active_components_")


def test_activity_survives_save_and_load(tmp_path):
    X, _ = _two_groups()
    estimator = BetaVAEEmbedder(**{**SMALL, "beta": 0.1}).fit(X)
    estimator.save(tmp_path / "vae.pt")
    loaded = BetaVAEEmbedder.load(tmp_path / "vae.pt")
    np.testing.assert_array_equal(loaded.active_components_, estimator.active_components_)
    assert loaded.n_active_components_ == estimator.n_active_components_


@pytest.mark.filterwarnings("ignore::skvae.PosteriorCollapseWarning")  # tiny fits: nothing to encode
@pytest.mark.parametrize("cls", ESTIMATORS)
def test_batch_norm_and_dropout_train_reproducibly_and_leave_global_rngs_alone(cls, data, tmp_path):
    params = {**SMALL, "batch_norm": True, "dropout": 0.2}
    torch_state = torch.get_rng_state().clone()
    first = cls(**params).fit(data)
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert any(isinstance(m, torch.nn.BatchNorm1d) for m in first.module_.modules())
    assert any(isinstance(m, torch.nn.Dropout) for m in first.module_.modules())
    np.testing.assert_array_equal(first.transform(data), cls(**params).fit(data).transform(data))
    # dropout is off at inference, so transform is deterministic; batch norm's statistics are saved
    np.testing.assert_array_equal(first.transform(data), first.transform(data))
    first.save(tmp_path / "model.pt")
    np.testing.assert_array_equal(cls.load(tmp_path / "model.pt").transform(data), first.transform(data))


@pytest.mark.filterwarnings("ignore::skvae.PosteriorCollapseWarning")  # tiny fits: nothing to encode
def test_kl_warmup_is_recorded_in_the_history(data):
    estimator = BetaVAEEmbedder(**{**SMALL, "beta": 2.0, "kl_warmup_epochs": 10}).fit(data)
    weights = estimator.history_["kl_weight"]
    assert weights[0] == 0.0 and weights[5] == pytest.approx(1.0) and weights[10:] == [2.0] * 5
    assert AutoencoderEmbedder(**SMALL).fit(data).history_["kl_weight"] == [0.0] * SMALL["max_epochs"]


def test_sample_without_a_seed_leaves_numpys_global_state_untouched():
    X = np.random.RandomState(0).normal(size=(40, 6))
    embedder = BetaVAEEmbedder(n_components=2, hidden_layer_sizes=(8,), max_epochs=1, random_state=0).fit(X)
    before = np.random.get_state()[1].copy()
    embedder.sample(3)
    np.testing.assert_array_equal(np.random.get_state()[1], before)


def test_nothing_is_printed_by_default_and_every_epoch_is_logged(data, capsys, caplog):
    import logging
    import warnings

    with caplog.at_level(logging.INFO, logger="skvae"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # warnings are not printing: tiny fits collapse
        BetaVAEEmbedder(**{**SMALL, "max_epochs": 2}).fit(data)
    assert capsys.readouterr() == ("", "")
    epochs = [record.getMessage() for record in caplog.records if record.name == "skvae"]
    assert len(epochs) == 2 and epochs[1].startswith("Epoch 2/2: loss")


def test_a_progress_bar_where_tqdm_renders(data, capsys, monkeypatch):
    import tqdm  # noqa: F401 -- a test extra: the bar needs it

    import skvae.train.progress
    monkeypatch.setattr(skvae.train.progress, "_bar_wanted", lambda: True)
    AutoencoderEmbedder(**{**SMALL, "max_epochs": 3}, verbose=1).fit(data)
    output = capsys.readouterr()
    assert "3/3" in output.err and "loss=" in output.err and not output.out
