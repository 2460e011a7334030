"""The minibatch training loop shared by every estimator: Adam, early stopping, history."""

import copy
import math
import time
import warnings

import torch
from sklearn.exceptions import ConvergenceWarning

from .rows import batches, iter_batches


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


def adam(module, learning_rate):
    """Adam over ``module``'s parameters; the fused kernel steps all of them in one pass.

    Parameters
    ----------
    module : torch.nn.Module
    learning_rate : float

    Returns
    -------
    torch.optim.Adam

    Examples
    --------
    >>> import torch
    >>> from skvae.train.loop import adam
    >>> adam(torch.nn.Linear(3, 2), 1e-3).param_groups[0]["lr"]
    0.001
    """
    return torch.optim.Adam(module.parameters(), lr=learning_rate, fused=True)


def kl_warmup_weight(epoch, beta, warmup_epochs):
    """Weight of the KL term in an epoch of a linear warm-up.

    The weight rises linearly from 0 in the first epoch to ``beta`` in epoch
    ``warmup_epochs + 1``, and stays there; no warm-up (``warmup_epochs=0``) gives
    ``beta`` from the start.

    Parameters
    ----------
    epoch : int
        The epoch, counted from 1 over the model's whole training.
    beta : float
        The final weight.
    warmup_epochs : int
        Epochs the weight takes to reach ``beta``.

    Returns
    -------
    float

    Examples
    --------
    >>> from skvae.train.loop import kl_warmup_weight
    >>> [kl_warmup_weight(epoch, 2.0, 4) for epoch in range(1, 7)]
    [0.0, 0.5, 1.0, 1.5, 2.0, 2.0]
    """
    if warmup_epochs <= 0:
        return float(beta)
    return float(beta) * min(1.0, (epoch - 1) / warmup_epochs)


@torch.no_grad()
def mean_loss(module, rows, *, kl_weight, batch_size, parallel=None):
    """Mean per-cell loss ``reconstruction + kl_weight * kl`` with deterministic codes.

    Parameters
    ----------
    module : skvae.nn.models model
    rows : row source of :mod:`skvae.train.rows`
    kl_weight : float
    batch_size : int
    parallel : skvae.train.distributed.DataParallel, default=None
        When given, the mean over the rows of every rank.

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
    if parallel is not None:
        total, n_rows = parallel.sum([total, rows.n_rows])
        return total / n_rows
    return total / rows.n_rows


def train(
    module,
    train_rows,
    val_rows=None,
    *,
    kl_weight,
    kl_warmup_epochs=0,
    start_epoch=0,
    batch_size,
    learning_rate,
    max_epochs,
    n_iter_no_change,
    tol,
    rng,
    generator,
    device,
    verbose=0,
    optimizer=None,
    parallel=None,
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
    kl_warmup_epochs : int, default=0
        Epochs of a linear warm-up of the KL weight from 0 to ``kl_weight``
        (:func:`kl_warmup_weight`). The validation loss always weighs the KL term
        by ``kl_weight``, and early stopping waits for the warm-up to end.
    start_epoch : int, default=0
        Epochs the module has already been trained for: the warm-up continues
        from there.
    batch_size, learning_rate, max_epochs, n_iter_no_change, tol
        As in the estimators.
    rng : numpy.random.RandomState
        Shuffles the rows each epoch.
    generator : torch.Generator
        Reparameterisation noise, on ``device``.
    device : torch.device
    verbose : int, default=0
        Print one line per epoch when > 0 (on rank 0 only, in a data-parallel run).
    optimizer : torch.optim.Adam, default=None
        The optimiser to continue with (its moments are kept between calls, as
        ``partial_fit`` needs); a new one when None.
    parallel : skvae.train.distributed.DataParallel, default=None
        Train data-parallel: ``train_rows`` and ``val_rows`` are this rank's rows,
        ``batch_size`` is the global minibatch, gradients are summed across ranks
        (:mod:`skvae.train.distributed`) and the logged losses are over all ranks.

    Returns
    -------
    history : dict of list of float
        Per-epoch mean training ``loss``, ``reconstruction`` and ``kl`` per cell,
        the epoch's ``kl_weight``, and ``val_loss`` when ``val_rows`` is given.

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
    if optimizer is None:
        optimizer = adam(module, learning_rate)
    n_train = train_rows.n_rows if parallel is None else parallel.set_rows(train_rows.n_rows)
    # batch normalisation cannot normalise a single row in training
    fewest_rows = 2 if any(isinstance(layer, torch.nn.BatchNorm1d) for layer in module.modules()) else 1
    verbose = verbose if parallel is None or parallel.rank == 0 else 0
    history = {"loss": [], "reconstruction": [], "kl": [], "kl_weight": []}
    if val_rows is not None:
        history["val_loss"] = []
    best_val, best_state, epochs_no_improve = math.inf, None, 0
    finished_state = None

    beta = kl_weight
    for epoch in range(1, max_epochs + 1):
        start = time.perf_counter()
        kl_weight = kl_warmup_weight(start_epoch + epoch, beta, kl_warmup_epochs)
        warming_up = kl_weight < beta
        module.train()
        sums = torch.zeros(2, device=device)
        last = None
        try:
            for xb, global_size in _minibatches(train_rows, batch_size, rng.permutation(n_train), parallel, fewest_rows):
                optimizer.zero_grad(set_to_none=True)
                if xb is not None:
                    terms = module.loss(xb, generator=generator)
                    per_cell = terms.reconstruction + kl_weight * terms.kl
                    loss = per_cell.mean() if parallel is None else per_cell.sum() / global_size
                    loss.backward()
                    sums += torch.stack([terms.reconstruction.detach().sum(), terms.kl.detach().sum()])
                    last = xb
                if parallel is not None:
                    parallel.sum_gradients(module.parameters())
                optimizer.step()
        except KeyboardInterrupt:
            if finished_state is None:
                raise
            warnings.warn(f"Training interrupted during epoch {epoch}: keeping the model of epoch {epoch - 1}.",
                          UserWarning, stacklevel=2)
            module.load_state_dict(finished_state)
            best_state = None
            break

        sums = sums.tolist() if parallel is None else parallel.sum(sums.tolist())
        reconstruction, kl = (total / n_train for total in sums)
        loss = reconstruction + kl_weight * kl
        if not math.isfinite(loss):
            raise _divergence_error(epoch, "the training loss", loss)
        # the losses above come from before each step: the last step can still diverge
        after_step = 0.0 if last is None else _loss_after_step(module, last, kl_weight)
        if parallel is not None:
            after_step = parallel.sum([after_step])[0]
        if not math.isfinite(after_step):
            raise _divergence_error(epoch, "the loss after the last optimiser step", after_step)
        history["loss"].append(loss)
        history["reconstruction"].append(reconstruction)
        history["kl"].append(kl)
        history["kl_weight"].append(kl_weight)
        message = f"Epoch {epoch}/{max_epochs}: loss {loss:.6g}"
        if module.variational:
            message += f" (reconstruction {reconstruction:.6g}, KL {kl:.6g}"
            message += f", KL weight {kl_weight:.3g})" if warming_up else ")"

        if val_rows is not None:
            val_loss = mean_loss(module, val_rows, kl_weight=beta, batch_size=batch_size, parallel=parallel)
            if not math.isfinite(val_loss):
                raise _divergence_error(epoch, "the validation loss", val_loss)
            history["val_loss"].append(val_loss)
            message += f", validation loss {val_loss:.6g}"
            epochs_no_improve = 0 if val_loss < best_val - tol or warming_up else epochs_no_improve + 1
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


def _minibatches(rows, batch_size, order, parallel, fewest_rows):
    """Yield ``(minibatch, global_size)``: a minibatch of this process's rows, or None for too few rows.

    A single process yields every ``batch_size`` rows of ``order`` (global_size None),
    leaving out a last minibatch of fewer than ``fewest_rows``. A rank of a
    data-parallel run yields its part of each global minibatch, None where it has
    fewer than ``fewest_rows`` of it: it still takes part in the step.
    """
    if parallel is None:
        indices = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
        yield from ((xb, None) for xb in batches(rows, [index for index in indices if len(index) >= fewest_rows]))
        return
    pairs = list(parallel.local_batches(order, batch_size))
    made = batches(rows, [index for index, _ in pairs if len(index) >= fewest_rows])
    for index, global_size in pairs:
        yield (next(made) if len(index) >= fewest_rows else None), global_size
