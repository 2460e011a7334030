"""partial_fit: out-of-core training one pass at a time, continuing the model and its optimiser."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from skvae import AutoencoderEmbedder, BetaVAEEmbedder, BetaVSCEmbedder

ESTIMATORS = [AutoencoderEmbedder, BetaVAEEmbedder, BetaVSCEmbedder]
SMALL = dict(n_components=2, hidden_layer_sizes=(16, 8), batch_size=16, random_state=0, dropout=0.1)


@pytest.fixture(scope="module")
def data():
    rng = np.random.RandomState(0)
    return rng.normal(size=(80, 12)) + 3.0 * rng.randint(2, size=(80, 1))


def _same_weights(first, second):
    return all(torch.equal(value, second.module_.state_dict()[key]) for key, value in first.module_.state_dict().items())


def test_the_first_call_creates_the_model_and_later_calls_continue_it(data):
    estimator = BetaVAEEmbedder(**SMALL).partial_fit(data)
    assert estimator.n_iter_ == 1 and len(estimator.history_["loss"]) == 1 and estimator.algorithm_ == "dense"
    before = {key: value.clone() for key, value in estimator.module_.state_dict().items()}
    module = estimator.module_
    estimator.partial_fit(data[:40]).partial_fit(data[40:])
    assert estimator.module_ is module and estimator.n_iter_ == 3 and len(estimator.history_["kl_weight"]) == 3
    assert any(not torch.equal(value, estimator.module_.state_dict()[key]) for key, value in before.items())
    assert estimator.transform(data).shape == (80, 2)


@pytest.mark.filterwarnings("ignore::skvae.PosteriorCollapseWarning")  # tiny fits: nothing to encode
@pytest.mark.parametrize("cls", ESTIMATORS)
@pytest.mark.parametrize("sparse", [False, True])
def test_passes_over_the_same_data_give_the_model_of_fit(cls, sparse, data):
    X = sp.csr_matrix(np.maximum(data, 0)) if sparse else data
    fitted = cls(**SMALL, max_epochs=3).fit(X)
    streamed = cls(**SMALL)
    for _ in range(3):
        streamed.partial_fit(X)
    assert _same_weights(fitted, streamed)
    assert streamed.history_["loss"] == fitted.history_["loss"]


def test_partial_fit_after_fit_continues_as_more_epochs(data):
    longer = BetaVSCEmbedder(**SMALL, max_epochs=3).fit(data)
    continued = BetaVSCEmbedder(**SMALL, max_epochs=2).fit(data).partial_fit(data)
    assert _same_weights(longer, continued) and continued.n_iter_ == 3


def test_the_kl_warmup_counts_the_passes_of_every_call(data):
    estimator = BetaVAEEmbedder(**SMALL, beta=2.0, kl_warmup_epochs=4)
    for _ in range(6):
        estimator.partial_fit(data)
    assert estimator.history_["kl_weight"] == [0.0, 0.5, 1.0, 1.5, 2.0, 2.0]


def test_a_different_number_of_features_is_refused(data):
    estimator = AutoencoderEmbedder(**SMALL).partial_fit(data)
    with pytest.raises(ValueError, match="X has 11 features, but AutoencoderEmbedder is expecting 12"):
        estimator.partial_fit(data[:, :11])


def test_a_loaded_model_continues_with_a_new_optimiser(data, tmp_path):
    estimator = AutoencoderEmbedder(**SMALL, max_epochs=2).fit(data)
    estimator.save(tmp_path / "ae.pt")
    loaded = AutoencoderEmbedder.load(tmp_path / "ae.pt").partial_fit(data)
    assert loaded.n_iter_ == 3 and np.isfinite(loaded.transform(data)).all()


def test_a_first_call_that_diverges_leaves_the_estimator_unfitted(data):
    estimator = AutoencoderEmbedder(**SMALL, learning_rate=1e30)
    with pytest.raises(ValueError, match="diverged"):
        estimator.partial_fit(data)
    assert not hasattr(estimator, "module_") and not hasattr(estimator, "n_features_in_")


def test_a_later_call_that_diverges_leaves_weights_and_training_state_as_they_were(data):
    estimator = BetaVAEEmbedder(**SMALL).partial_fit(data)
    before = {key: value.clone() for key, value in estimator.module_.state_dict().items()}
    estimator.set_params(learning_rate=1e30)
    with pytest.raises(ValueError, match="diverged"):
        estimator.partial_fit(data * 1e6)
    assert _same_weights(estimator, type(estimator)(**SMALL).partial_fit(data))  # as after the first call
    assert all(torch.equal(value, before[key]) for key, value in estimator.module_.state_dict().items())
    # the next pass continues from the first one, as if the failed call never happened
    estimator.set_params(learning_rate=1e-3)
    reference = BetaVAEEmbedder(**SMALL).partial_fit(data).partial_fit(data)
    assert _same_weights(estimator.partial_fit(data), reference) and estimator.n_iter_ == 2


def test_a_refit_that_fails_keeps_the_fitted_model_and_its_features(data):
    import pandas as pd

    frame = pd.DataFrame(data, columns=[f"g{i}" for i in range(data.shape[1])])
    estimator = AutoencoderEmbedder(**SMALL, max_epochs=1).fit(frame)
    module, names = estimator.module_, estimator.feature_names_in_.copy()
    wider = pd.DataFrame(np.hstack([data, data[:, :1]]), columns=[f"h{i}" for i in range(data.shape[1] + 1)])
    estimator.set_params(learning_rate=1e30)
    with pytest.raises(ValueError, match="diverged"):
        estimator.fit(wider)
    assert estimator.module_ is module and estimator.n_features_in_ == data.shape[1]
    np.testing.assert_array_equal(estimator.feature_names_in_, names)
    with_nan = wider.copy()
    with_nan.iloc[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        estimator.fit(with_nan)
    np.testing.assert_array_equal(estimator.feature_names_in_, names)
    assert estimator.transform(frame).shape == (len(data), 2)


@pytest.mark.filterwarnings("ignore:X looks like raw counts")  # count-like data, not what is tested
@pytest.mark.parametrize(("name", "value"), [("n_components", 3), ("likelihood", "poisson"), ("batch_norm", True),
                                             ("hidden_layer_sizes", (16, 4)), ("dropout", 0.3)])
def test_set_params_that_reshape_the_network_are_refused_by_partial_fit_and_save(name, value, data, tmp_path):
    estimator = AutoencoderEmbedder(**SMALL).partial_fit(np.abs(data).round())
    estimator.set_params(**{name: value})
    with pytest.raises(ValueError, match=f"set_params changed {name}=.*call fit to build a new model"):
        estimator.partial_fit(np.abs(data).round())
    with pytest.raises(ValueError, match=f"set_params changed {name}="):
        estimator.save(tmp_path / "model.pt")
    assert not (tmp_path / "model.pt").exists() and estimator.n_iter_ == 1


def test_a_learning_rate_set_between_calls_applies_from_the_next_call(data):
    estimator = AutoencoderEmbedder(**SMALL).partial_fit(data)
    estimator.set_params(learning_rate=0.05)
    estimator.partial_fit(data)
    assert estimator._training_state.optimizer.param_groups[0]["lr"] == 0.05
    frozen = AutoencoderEmbedder(**SMALL).partial_fit(data)
    weights = {key: value.clone() for key, value in frozen.module_.state_dict().items()}
    frozen.set_params(learning_rate=1e-12).partial_fit(data)
    assert all(torch.allclose(weights[key], value, atol=1e-8) for key, value in frozen.module_.state_dict().items())
