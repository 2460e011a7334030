"""The minibatch training loop shared by every estimator: Adam, early stopping, history."""

import copy
import math
import time

import torch

from .batching import iter_row_batches


@torch.no_grad()
def mean_loss(module, X, *, kl_weight, batch_size, device="cpu"):
    """Mean per-cell loss ``reconstruction + kl_weight * kl`` with deterministic codes.

    Parameters
    ----------
    module : skvae.modules model
    X : ndarray or scipy.sparse CSR matrix of shape (n_samples, n_features)
    kl_weight : float
    batch_size : int
    device : str or torch.device, default="cpu"

    Returns
    -------
    float
    """
    module.eval()
    total = 0.0
    for xb in iter_row_batches(X, batch_size, device=device):
        terms = module.loss(xb, deterministic=True)
        total += (terms.reconstruction + kl_weight * terms.kl).sum().item()
    return total / X.shape[0]


def train(
    module,
    X_train,
    X_val=None,
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
    module : skvae.modules model
        Already on ``device``.
    X_train : ndarray or scipy.sparse CSR matrix of shape (n_samples, n_features)
    X_val : ndarray or scipy.sparse CSR matrix, default=None
        Held-out rows. When given, training stops once the validation loss has not
        improved by at least ``tol`` for ``n_iter_no_change`` epochs, and the best
        weights are restored.
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
        and ``val_loss`` when ``X_val`` is given.
    """
    optimizer = torch.optim.Adam(module.parameters(), lr=learning_rate)
    n_train = X_train.shape[0]
    history = {"loss": [], "reconstruction": [], "kl": []}
    if X_val is not None:
        history["val_loss"] = []
    best_val, best_state, epochs_no_improve = math.inf, None, 0

    for epoch in range(1, max_epochs + 1):
        start = time.perf_counter()
        module.train()
        sums = torch.zeros(2, device=device)
        for xb in iter_row_batches(X_train, batch_size, order=rng.permutation(n_train), device=device):
            terms = module.loss(xb, generator=generator)
            loss = (terms.reconstruction + kl_weight * terms.kl).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            sums += torch.stack([terms.reconstruction.detach().sum(), terms.kl.detach().sum()])

        reconstruction, kl = (sums / n_train).tolist()
        loss = reconstruction + kl_weight * kl
        if not math.isfinite(loss):
            raise ValueError(
                f"Training loss became {loss} at epoch {epoch}. Likely causes: a learning_rate "
                "too large for this data, or unscaled input with very large values (scale it, "
                "e.g. log-normalise and standardise, or lower learning_rate)."
            )
        history["loss"].append(loss)
        history["reconstruction"].append(reconstruction)
        history["kl"].append(kl)
        message = f"Epoch {epoch}/{max_epochs}: loss {loss:.6g} (reconstruction {reconstruction:.6g}, KL {kl:.6g})"

        if X_val is not None:
            val_loss = mean_loss(module, X_val, kl_weight=kl_weight, batch_size=batch_size, device=device)
            history["val_loss"].append(val_loss)
            message += f", validation loss {val_loss:.6g}"
            epochs_no_improve = 0 if val_loss < best_val - tol else epochs_no_improve + 1
            if val_loss < best_val:
                best_val, best_state = val_loss, copy.deepcopy(module.state_dict())
        if verbose > 0:
            print(f"{message}, {time.perf_counter() - start:.2f} s", flush=True)
        if X_val is not None and epochs_no_improve >= n_iter_no_change:
            if verbose > 0:
                print(f"Validation loss did not improve by {tol} for {n_iter_no_change} epochs: stopping.")
            break

    if best_state is not None:
        module.load_state_dict(best_state)
    module.eval()
    return history
