"""The minibatch training loop shared by every estimator: Adam, early stopping, history."""

import copy
import math
import time
import warnings

import torch
from sklearn.exceptions import ConvergenceWarning

from .rows import iter_batches


def _divergence_error(epoch, what, value):
    return ValueError(
        f"Training diverged at epoch {epoch}: {what} became {value}. Likely causes: a learning_rate too large "
        "for this data, or unscaled input with very large values (scale it, e.g. log-normalise and "
        "standardise, or lower learning_rate)."
    )


@torch.no_grad()
def _loss_after_step(module, xb, kl_weight):
    """Deterministic loss of the last minibatch under the weights the last step left (no noise drawn)."""
    terms = module.loss(xb, deterministic=True)
    return (terms.reconstruction + kl_weight * terms.kl).sum().item()


@torch.no_grad()
def mean_loss(module, rows, *, kl_weight, batch_size):
    """Mean per-cell loss ``reconstruction + kl_weight * kl`` with deterministic codes.

    Parameters
    ----------
    module : skvae.nn.models model
    rows : row source of :mod:`skvae.train.rows`
    kl_weight : float
    batch_size : int

    Returns
    -------
    float

    Examples
    --------
    >>> import numpy as np
    >>> from skvae.train.rows import make_row_source
    >>> from skvae.nn.models import Autoencoder
    >>> from skvae.train.loop import mean_loss
    >>> rows = make_row_source(np.zeros((8, 5)), algorithm="dense")
    >>> mean_loss(Autoencoder(5, 2, (4,)), rows, kl_weight=1.0, batch_size=4) >= 0
    True
    """
    module.eval()
    total = 0.0
    for xb in iter_batches(rows, batch_size):
        terms = module.loss(xb, deterministic=True)
        total += (terms.reconstruction + kl_weight * terms.kl).sum().item()
    return total / rows.n_rows


def train(
    module,
    train_rows,
    val_rows=None,
    *,
    kl_weight,
    batch_size,
    learning_rate,
    max_epochs,
    n_iter_no_change,
    tol,
    rng,
    generator,
    device,
    verbose=0,
):
    """Fit ``module`` with Adam on minibatches of rows, in place.

    Parameters
    ----------
    module : skvae.nn.models model
        Already on ``device``.
    train_rows : row source of :mod:`skvae.train.rows`
        The training rows, on ``device``.
    val_rows : row source of :mod:`skvae.train.rows`, default=None
        Held-out rows. When given, training stops once the validation loss has not
        improved by at least ``tol`` for ``n_iter_no_change`` epochs, and the best
        weights are restored; a ConvergenceWarning says when ``max_epochs`` ran out
        first.
    kl_weight : float
        Weight ``beta`` of the KL term.
    batch_size, learning_rate, max_epochs, n_iter_no_change, tol
        As in the estimators.
    rng : numpy.random.RandomState
        Shuffles the rows each epoch.
    generator : torch.Generator
        Reparameterisation noise, on ``device``.
    device : torch.device
    verbose : int, default=0
        Print one line per epoch when > 0.

    Returns
    -------
    history : dict of list of float
        Per-epoch mean training ``loss``, ``reconstruction`` and ``kl`` per cell,
        and ``val_loss`` when ``val_rows`` is given.

    Raises
    ------
    ValueError
        When training diverges: a non-finite training or validation loss, or a
        non-finite loss under the weights of an epoch's last step.

    Notes
    -----
    A KeyboardInterrupt during an epoch keeps the weights of the last finished
    epoch, with a warning; one during the first epoch is raised.

    Examples
    --------
    >>> import numpy as np
    >>> import torch
    >>> from skvae.train.rows import make_row_source
    >>> from skvae.nn.models import VariationalAutoencoder
    >>> from skvae.train.loop import train
    >>> X = np.random.RandomState(0).normal(size=(64, 10))
    >>> history = train(VariationalAutoencoder(10, 2, (8,)), make_row_source(X, with_transpose=True),
    ...                 kl_weight=1.0, batch_size=16, learning_rate=1e-2, max_epochs=5, n_iter_no_change=1,
    ...                 tol=0.0, rng=np.random.RandomState(0), generator=torch.Generator().manual_seed(0),
    ...                 device="cpu")
    >>> len(history["loss"]), history["loss"][-1] < history["loss"][0]
    (5, True)
    """
    # the fused kernel steps all 3.5 M parameters of the study's network in one pass
    optimizer = torch.optim.Adam(module.parameters(), lr=learning_rate, fused=True)
    n_train = train_rows.n_rows
    history = {"loss": [], "reconstruction": [], "kl": []}
    if val_rows is not None:
        history["val_loss"] = []
    best_val, best_state, epochs_no_improve = math.inf, None, 0
    finished_state = None

    for epoch in range(1, max_epochs + 1):
        start = time.perf_counter()
        module.train()
        sums = torch.zeros(2, device=device)
        try:
            for xb in iter_batches(train_rows, batch_size, order=rng.permutation(n_train)):
                terms = module.loss(xb, generator=generator)
                loss = (terms.reconstruction + kl_weight * terms.kl).mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                sums += torch.stack([terms.reconstruction.detach().sum(), terms.kl.detach().sum()])
        except KeyboardInterrupt:
            if finished_state is None:
                raise
            warnings.warn(f"Training interrupted during epoch {epoch}: keeping the model of epoch {epoch - 1}.",
                          UserWarning, stacklevel=2)
            module.load_state_dict(finished_state)
            best_state = None
            break

        reconstruction, kl = (sums / n_train).tolist()
        loss = reconstruction + kl_weight * kl
        if not math.isfinite(loss):
            raise _divergence_error(epoch, "the training loss", loss)
        # the losses above come from before each step: the last step can still diverge
        after_step = _loss_after_step(module, xb, kl_weight)
        if not math.isfinite(after_step):
            raise _divergence_error(epoch, "the loss after the last optimiser step", after_step)
        history["loss"].append(loss)
        history["reconstruction"].append(reconstruction)
        history["kl"].append(kl)
        message = f"Epoch {epoch}/{max_epochs}: loss {loss:.6g}"
        if module.variational:
            message += f" (reconstruction {reconstruction:.6g}, KL {kl:.6g})"

        if val_rows is not None:
            val_loss = mean_loss(module, val_rows, kl_weight=kl_weight, batch_size=batch_size)
            if not math.isfinite(val_loss):
                raise _divergence_error(epoch, "the validation loss", val_loss)
            history["val_loss"].append(val_loss)
            message += f", validation loss {val_loss:.6g}"
            epochs_no_improve = 0 if val_loss < best_val - tol else epochs_no_improve + 1
            if val_loss < best_val:
                best_val, best_state = val_loss, copy.deepcopy(module.state_dict())
        if verbose > 0:
            print(f"{message}, {time.perf_counter() - start:.2f} s", flush=True)
        if val_rows is not None and epochs_no_improve >= n_iter_no_change:
            if verbose > 0:
                print(f"Validation loss did not improve by {tol} for {n_iter_no_change} epochs: stopping.")
            break
        # kept so that an interrupted epoch can fall back to it (the size of the weights, once)
        finished_state = {key: value.detach().clone() for key, value in module.state_dict().items()}
    else:
        if val_rows is not None:
            warnings.warn(
                f"Early stopping did not stop training within max_epochs={max_epochs}: the validation loss was "
                f"still improving by more than tol={tol}. Raise max_epochs or tol.",
                ConvergenceWarning,
                stacklevel=2,
            )

    if best_state is not None:
        module.load_state_dict(best_state)
    module.eval()
    return history
