"""The training loop: divergence is an error, early stopping says when it ran out, Ctrl-C keeps an epoch, KL warm-up."""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from sklearn.exceptions import ConvergenceWarning

import skvae.train.loop
from skvae import AutoencoderEmbedder, BetaVAEEmbedder
from skvae.nn.models import Autoencoder, VariationalAutoencoder
from skvae.train.data import RowData
from skvae.train.rows import RowSource
from skvae.train.loop import TrainingConfig, TrainingState, kl_warmup_weight, train

SMALL = dict(n_components=2, hidden_layer_sizes=(16, 8), batch_size=16, random_state=0)


@pytest.fixture(scope="module")
def data():
    return np.random.RandomState(0).normal(size=(64, 12))


def test_divergence_in_the_last_optimiser_step_is_an_error(data):
    # one epoch of one minibatch: the only loss seen before a step is finite, the step itself explodes
    with pytest.raises(ValueError, match="diverged at epoch 1: the loss after the last optimiser step.*learning_rate"):
        AutoencoderEmbedder(learning_rate=1e30, max_epochs=1, batch_size=64).fit(data)


def test_a_non_finite_validation_loss_is_an_error(data, monkeypatch):
    monkeypatch.setattr(skvae.train.loop, "mean_loss", lambda *args, **kwargs: float("nan"))
    with pytest.raises(ValueError, match="diverged at epoch 1: the validation loss became nan"):
        AutoencoderEmbedder(**SMALL, max_epochs=5, early_stopping=True).fit(data)


def test_early_stopping_that_runs_out_of_epochs_warns(data):
    with pytest.warns(ConvergenceWarning, match="did not stop training within max_epochs=3"):
        AutoencoderEmbedder(**SMALL, max_epochs=3, early_stopping=True, tol=0.0, n_iter_no_change=50).fit(data)


def test_no_warning_without_early_stopping_or_when_it_stops(data, recwarn):
    AutoencoderEmbedder(**SMALL, max_epochs=3).fit(data)
    AutoencoderEmbedder(**SMALL, max_epochs=50, early_stopping=True, tol=1e9, n_iter_no_change=2).fit(data)
    assert not [w for w in recwarn if issubclass(w.category, ConvergenceWarning)]


def _training_rows(data):
    return RowData.from_input(data).source(algorithm="auto", center=True, with_transpose=True)


def _state(module, seed=0):
    return TrainingState(module, device=torch.device("cpu"), seed=seed, rng=np.random.RandomState(0),
                         learning_rate=1e-2, torch_rng=torch.get_rng_state())


def _interrupting(after_batches):
    """A minibatch iterator that raises KeyboardInterrupt once ``after_batches`` batches were given."""
    given = 0
    original = RowSource.minibatches

    def iterate(source, indices):
        nonlocal given
        for batch in original(source, indices):
            if given == after_batches:
                raise KeyboardInterrupt
            given += 1
            yield batch

    return iterate


def test_keyboard_interrupt_keeps_the_model_of_the_last_finished_epoch(data, monkeypatch):
    rows = _training_rows(data)

    def run(max_epochs):
        torch.manual_seed(0)
        module = Autoencoder(12, 2, (8,))
        config = TrainingConfig(batch_size=16, max_epochs=max_epochs, n_iter_no_change=1, tol=0.0)
        history = train(module, rows, config=config, state=_state(module), device="cpu")
        return module, history

    two_epochs, _ = run(2)
    monkeypatch.setattr(RowSource, "minibatches", _interrupting(after_batches=4 * 2 + 1))  # mid epoch 3
    with pytest.warns(UserWarning, match="interrupted during epoch 3: keeping the model of epoch 2"):
        interrupted, history = run(10)
    assert len(history["loss"]) == 2
    for key, value in two_epochs.state_dict().items():
        torch.testing.assert_close(interrupted.state_dict()[key], value, rtol=0, atol=0)


def test_keyboard_interrupt_in_the_first_epoch_is_raised(data, monkeypatch):
    monkeypatch.setattr(RowSource, "minibatches", _interrupting(after_batches=1))
    with pytest.raises(KeyboardInterrupt):
        BetaVAEEmbedder(**SMALL, max_epochs=5).fit(data)


@given(beta=st.floats(0, 100), warmup=st.integers(0, 50), epoch=st.integers(1, 200))
def test_kl_warmup_weight_rises_linearly_from_zero_to_beta(beta, warmup, epoch):
    weight = kl_warmup_weight(epoch, beta, warmup)
    assert 0 <= weight <= beta
    if warmup == 0 or epoch > warmup:
        assert weight == beta
    else:
        assert weight == pytest.approx(beta * (epoch - 1) / warmup)
        assert kl_warmup_weight(epoch + 1, beta, warmup) >= weight
    assert kl_warmup_weight(1, beta, warmup) == (beta if warmup == 0 else 0.0)


def test_warmup_weights_each_epoch_and_continues_from_start_epoch(data):
    module = VariationalAutoencoder(12, 2, (8,))
    config = TrainingConfig(kl_weight=2.0, kl_warmup_epochs=4, batch_size=16, max_epochs=3, n_iter_no_change=1, tol=0.0)
    rows = _training_rows(data)
    first = train(module, rows, config=config, state=_state(module), device="cpu")
    assert first["kl_weight"] == [0.0, 0.5, 1.0]
    resumed = train(module, rows, config=config, state=_state(module), device="cpu", start_epoch=3)
    assert resumed["kl_weight"] == [1.5, 2.0, 2.0]
    np.testing.assert_allclose(first["loss"], np.add(first["reconstruction"], np.multiply(first["kl_weight"], first["kl"])))


@pytest.mark.filterwarnings("ignore::skvae.PosteriorCollapseWarning")  # tiny fits: nothing to encode
def test_early_stopping_waits_for_the_warmup(data, monkeypatch):
    # a validation loss that never improves would stop after one epoch, but not during the warm-up
    monkeypatch.setattr(skvae.train.loop, "mean_loss", lambda *args, **kwargs: 1.0)
    estimator = BetaVAEEmbedder(**SMALL, early_stopping=True, n_iter_no_change=1, kl_warmup_epochs=5, max_epochs=20)
    estimator.fit(data)
    # epochs 1-5 warm up (weights below beta=1); epoch 6 is the first at full weight, and it does not improve
    assert estimator.n_iter_ == 6
    assert estimator.history_["kl_weight"] == pytest.approx([0, 0.2, 0.4, 0.6, 0.8, 1.0])


@given(n_cells=st.integers(1, 10**9))
def test_the_auto_budget_keeps_gradient_steps_of_20000_cells_and_never_grows(n_cells):
    epochs = skvae.train.loop.epochs_for(n_cells)
    assert 2 <= epochs <= 200 and epochs >= skvae.train.loop.epochs_for(n_cells + 1)
    if n_cells <= 20_000:
        assert epochs == 200
    elif epochs > 2:
        assert abs(epochs * n_cells - 200 * 20_000) <= n_cells / 2 + 1  # cells seen: those of 20,000 x 200


@pytest.mark.filterwarnings("ignore::skvae.PosteriorCollapseWarning")  # tiny fits: nothing to encode
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")  # a few epochs on purpose
def test_auto_epochs_and_warmup_are_resolved_from_the_training_cells_recorded_and_saved(data, monkeypatch, tmp_path):
    monkeypatch.setattr(skvae.train.loop, "AUTO_FULL_CELLS", 16)  # 64 cells: a quarter of the epochs
    monkeypatch.setattr(skvae.train.loop, "AUTO_EPOCHS", 8)
    estimator = BetaVAEEmbedder(**SMALL, max_epochs="auto", kl_warmup_epochs="auto").fit(data)
    assert estimator.max_epochs_ == 2 == estimator.n_iter_ and estimator.kl_warmup_epochs_ == 1
    held_out = BetaVAEEmbedder(**SMALL, max_epochs="auto", early_stopping=True, validation_fraction=0.5).fit(data)
    assert held_out.max_epochs_ == 4  # 32 training cells
    estimator.save(tmp_path / "model.pt")
    loaded = BetaVAEEmbedder.load(tmp_path / "model.pt")
    assert loaded.max_epochs_ == 2 and loaded.kl_warmup_epochs_ == 1
    numbers = BetaVAEEmbedder(**SMALL, max_epochs=3, kl_warmup_epochs=2).fit(data)
    assert numbers.max_epochs_ == 3 and numbers.kl_warmup_epochs_ == 2


def test_partial_fit_keeps_the_auto_warmup_of_its_first_call(data, monkeypatch):
    monkeypatch.setattr(skvae.train.loop, "AUTO_FULL_CELLS", 16)
    monkeypatch.setattr(skvae.train.loop, "AUTO_EPOCHS", 16)
    estimator = BetaVAEEmbedder(**SMALL, beta=2.0, max_epochs="auto", kl_warmup_epochs="auto").partial_fit(data)  # 4
    estimator.partial_fit(data[:16]).partial_fit(data[:16])  # smaller chunks do not change it
    assert estimator.kl_warmup_epochs_ == 2 and estimator.history_["kl_weight"] == [0.0, 1.0, 2.0]


@given(n_rows=st.integers(1, 300), block=st.integers(1, 40), seed=st.integers(0, 2**31 - 1))
def test_an_epoch_visits_every_row_once_in_shuffled_blocks_of_consecutive_rows(n_rows, block, seed):
    order = skvae.train.loop.epoch_order(np.random.RandomState(seed), n_rows, block)
    assert sorted(order.tolist()) == list(range(n_rows))
    starts = [i for i in range(n_rows) if order[i] % block == 0]
    assert len(starts) == -(-n_rows // block)  # every block once, each starting at a multiple of the block size
    for start in starts:
        run = order[start:start + min(block, n_rows - order[start])]
        np.testing.assert_array_equal(run, np.arange(order[start], order[start] + len(run)))
    if block == 1:
        np.testing.assert_array_equal(order, np.random.RandomState(seed).permutation(n_rows))


def test_a_backed_file_trains_in_blocks_by_default_and_as_in_memory_with_the_same_order(tmp_path):
    import anndata
    import scipy.sparse as sp

    counts = np.random.RandomState(0).poisson(1.0, size=(64, 12)).astype(np.float32)
    anndata.AnnData(sp.csr_matrix(counts)).write_h5ad(tmp_path / "cells.h5ad")
    backed = anndata.read_h5ad(tmp_path / "cells.h5ad", backed="r").X
    from_disk = BetaVAEEmbedder(**SMALL, likelihood="nb", max_epochs=2).fit(backed)
    assert from_disk.shuffle_block_size_ == 16
    in_memory = BetaVAEEmbedder(**SMALL, likelihood="nb", max_epochs=2).fit(counts)
    assert in_memory.shuffle_block_size_ == 1
    # the same rows in the same order (the sparse path, as from disk): the same model
    same_order = BetaVAEEmbedder(**SMALL, likelihood="nb", max_epochs=2, shuffle_block_size=16).fit(sp.csr_matrix(counts))
    np.testing.assert_array_equal(from_disk.transform(counts), same_order.transform(counts))
