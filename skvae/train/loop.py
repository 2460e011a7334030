"""The minibatch training loop shared by every estimator: Adam, early stopping, history.

:func:`train` takes what does not change during a fit in one :class:`TrainingConfig` and
what the training carries from one call to the next (``partial_fit``) in one
:class:`TrainingState`.
"""

import copy
import math
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning

from ..nn.models import GradientScale, LossWeights
from .data import iter_minibatches
from .progress import EpochProgress


def _divergence_error(epoch, what, value, module, config):
    # the adversary's weight counts only in a model that has one (one fitted without batches has none)
    adversary = config.adversary_weight if getattr(module, "has_adversary", False) else 0.0
    causes = (f"a batch classifier's weight batch_adversary={adversary:g} too large (the recommended embedder uses "
              "0.3; lower it), " if adversary else "")
    return ValueError(
        f"Training diverged at epoch {epoch}: {what} became {value}. Likely causes: {causes}a learning_rate too "
        "large for this data, or unscaled input with very large values (scale it, e.g. log-normalise and "
        "standardise, or lower learning_rate)."
    )


@torch.no_grad()
def _loss_after_step(module, minibatch, weights):
    """Deterministic loss of the last minibatch under the weights the last step left (no noise drawn)."""
    return module.loss(minibatch.x, labels=minibatch.labels, deterministic=True, weights=weights,
                       **minibatch.given).total(weights.kl).sum().item()


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


@dataclass(frozen=True)
class TrainingConfig:
    """The settings of a fit that the loop reads: the estimator's parameters, resolved.

    Parameters
    ----------
    kl_weight : float, default=0.0
        Weight ``beta`` of the KL term.
    kl_warmup_epochs : int, default=0
        Epochs of a linear warm-up of the KL weight from 0 to ``kl_weight``
        (:func:`kl_warmup_weight`). The validation loss always weighs the KL term
        by ``kl_weight``, and early stopping waits for the warm-up to end.
    batch_size : int, default=256
        Rows per minibatch (of all ranks together in a data-parallel run).
    shuffle_block_size : int, default=1
        Consecutive rows shuffled together (:func:`epoch_order`).
    max_epochs : int, default=200
    n_iter_no_change : int, default=10
        Epochs without an improvement of the validation loss before stopping.
    tol : float, default=1e-4
        Least improvement of the validation loss that counts.
    verbose : int, default=0
        Show progress when > 0 (a bar, or one line per epoch; on rank 0 only, in a
        data-parallel run): :class:`~skvae.train.progress.EpochProgress`. Each
        epoch's line also goes to the ``"skvae"`` logger at INFO level.
    adversary_weight : float, default=0.0
        The adversarial batch classifier's weight (a model built with one;
        :class:`~skvae.nn.models.LossWeights`).
    classification_weight : float, default=1.0
        The cell-type classifier's weight (a model built with one).
    adversary_types : tuple of tuple of bool, default=None
        For a model with a cell-type classifier and an adversary: for each type
        (rows) and category of the first covariate (columns), whether the type is
        held by another category (:class:`~skvae.nn.models.LossWeights`'
        ``shared_types``); None: every type is.
    held_types : tuple of tuple of bool, default=None
        For such a model: whether each category holds each type (``LossWeights``'
        ``held_types``: the adversary asks among the batches that hold a cell's
        type); for an embedder with ``batch_counterparts``, whether each category
        holds each group of cells, the rows' labels their groups; None: it asks
        among the batches around a cell.

    Examples
    --------
    >>> from skvae.train.loop import TrainingConfig
    >>> TrainingConfig(kl_weight=2.0, max_epochs=5).batch_size
    256
    """

    kl_weight: float = 0.0
    kl_warmup_epochs: int = 0
    batch_size: int = 256
    shuffle_block_size: int = 1
    max_epochs: int = 200
    n_iter_no_change: int = 10
    tol: float = 1e-4
    verbose: int = 0
    adversary_weight: float = 0.0
    classification_weight: float = 1.0
    adversary_types: tuple | None = None
    held_types: tuple | None = None

    def loss_weights(self, kl_weight):
        """The :class:`~skvae.nn.models.LossWeights` of a training step whose KL weight is ``kl_weight``.

        Parameters
        ----------
        kl_weight : float

        Returns
        -------
        skvae.nn.models.LossWeights
        """
        shared, held = (None if table is None else torch.tensor(table, dtype=torch.float32)
                        for table in (self.adversary_types, self.held_types))
        return LossWeights(kl=kl_weight, adversary=self.adversary_weight, classification=self.classification_weight,
                           shared_types=shared, held_types=held)


class TrainingState:
    """What training carries from one call to the next: shuffling, noise, optimiser, torch's RNG, gradient scale.

    ``fit`` creates one; ``partial_fit`` continues it, so ``E`` calls give the model of
    ``E`` epochs of ``fit``. The optimiser's moments move between devices with the model
    and sit on CPU between calls; the noise generator stays on the device it was made on
    (CPU and CUDA generators do not share states).

    Parameters
    ----------
    module : torch.nn.Module
        The model the optimiser steps.
    device : torch.device
        Where training runs: the noise generator is made there.
    seed : int
        Seeds the noise generator and, from ``torch_rng``, the global draws
        (initialisation, dropout).
    rng : numpy.random.RandomState
        Shuffles the rows each epoch.
    learning_rate : float
        Adam's step size.
    torch_rng : torch.Tensor
        torch's CPU random state to train from (``torch.get_rng_state()``).

    Attributes
    ----------
    gradient_scale : skvae.nn.models.GradientScale
        The running size of the reconstruction's gradient at the code.

    Examples
    --------
    >>> import numpy as np
    >>> import torch
    >>> from skvae.train.loop import TrainingState
    >>> state = TrainingState(torch.nn.Linear(2, 1), device=torch.device("cpu"), seed=0,
    ...                       rng=np.random.RandomState(0), learning_rate=1e-3, torch_rng=torch.get_rng_state())
    >>> state.generator.device
    device(type='cpu')
    """

    def __init__(self, module, *, device, seed, rng, learning_rate, torch_rng):
        self.rng = rng
        self.generator = torch.Generator(device).manual_seed(seed)
        self.optimizer = adam(module, learning_rate)
        self.torch_rng = torch_rng
        self.gradient_scale = GradientScale()

    def to(self, device):
        """Move the optimiser's moments to ``device``; returns self.

        Parameters
        ----------
        device : torch.device

        Returns
        -------
        TrainingState
        """
        device = torch.device(device)
        for moments in self.optimizer.state.values():
            for key, value in moments.items():
                if isinstance(value, torch.Tensor) and key != "step":
                    moments[key] = value.to(device)
        return self

    def train_on(self, device):
        """Get ready to train on ``device``: the moments there, and a noise generator of its type; returns self.

        A generator made for another device type is replaced by one seeded from the
        shuffling RandomState.

        Parameters
        ----------
        device : torch.device

        Returns
        -------
        TrainingState
        """
        if self.generator.device.type != torch.device(device).type:
            self.generator = torch.Generator(device).manual_seed(int(self.rng.randint(2**31 - 1)))
        return self.to(device)

    def snapshot(self):
        """A copy of everything training changes in place, for :meth:`restore`.

        Returns
        -------
        tuple
        """
        return (copy.deepcopy(self.optimizer.state_dict()), self.rng.get_state(), self.generator,
                self.generator.get_state(), self.torch_rng, self.gradient_scale.value)

    def restore(self, snapshot):
        """Go back to the state of a :meth:`snapshot`.

        Parameters
        ----------
        snapshot : tuple
        """
        optimizer_state, rng_state, generator, generator_state, self.torch_rng, self.gradient_scale.value = snapshot
        self.optimizer.load_state_dict(optimizer_state)
        self.rng.set_state(rng_state)
        generator.set_state(generator_state)
        self.generator = generator

    def set_learning_rate(self, learning_rate):
        """Step with this learning rate from now on.

        Parameters
        ----------
        learning_rate : float
        """
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate



# The "auto" training budget: every cell this many times up to AUTO_FULL_CELLS cells; beyond, as many gradient steps.
AUTO_EPOCHS = 200
AUTO_FULL_CELLS = 20_000


def epochs_for(n_cells):
    """The number of epochs ``max_epochs="auto"`` resolves to for ``n_cells`` training cells.

    ``AUTO_EPOCHS`` (200) up to ``AUTO_FULL_CELLS`` (20,000) cells, the budget at which
    skvae's recommendation was measured; beyond, fewer, so that the number of
    gradient steps (cells seen) stays that of 20,000 cells x 200 epochs: 40 epochs at
    100,000 cells, 4 at a million, and never fewer than 2. scVI's default shrinks its
    epochs the same way (``min(round(20000 / n_cells * 400), 400)``).

    Parameters
    ----------
    n_cells : int

    Returns
    -------
    int

    Examples
    --------
    >>> from skvae.train.loop import epochs_for
    >>> [epochs_for(n) for n in (2_638, 20_000, 100_000, 1_000_000, 10**8)]
    [200, 200, 40, 4, 2]
    """
    return int(min(AUTO_EPOCHS, max(2, round(AUTO_EPOCHS * AUTO_FULL_CELLS / max(n_cells, 1)))))


def epoch_order(rng, n_rows, block_size=1):
    """The order in which an epoch visits ``n_rows`` rows: a random order of blocks of consecutive rows.

    Blocks of ``block_size`` rows (the last one may be shorter) are shuffled, and
    each keeps its rows in order. ``block_size=1`` is ``rng.permutation(n_rows)``.

    Parameters
    ----------
    rng : numpy.random.RandomState
    n_rows, block_size : int

    Returns
    -------
    ndarray of int of shape (n_rows,)

    Examples
    --------
    >>> import numpy as np
    >>> from skvae.train.loop import epoch_order
    >>> epoch_order(np.random.RandomState(0), 7, 3).tolist()
    [6, 3, 4, 5, 0, 1, 2]
    """
    if block_size <= 1:
        return rng.permutation(n_rows)
    starts = rng.permutation(np.arange(0, n_rows, block_size))
    order = (starts[:, None] + np.arange(block_size)).ravel()
    return order[order < n_rows]  # the last block is shorter


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
def mean_loss(module, source, *, kl_weight, batch_size, parallel=None):
    """Mean per-cell loss ``reconstruction + kl_weight * kl`` with deterministic codes.

    Parameters
    ----------
    module : skvae.nn.models model
    source : skvae.train.rows.RowSource
    kl_weight : float
    batch_size : int
    parallel : skvae.train.distributed.RankGroup, default=None
        When given, the mean over the rows of every rank.

    Returns
    -------
    float

    Examples
    --------
    >>> import numpy as np
    >>> from skvae.nn.models import Autoencoder
    >>> from skvae.train.data import RowData
    >>> from skvae.train.loop import mean_loss
    >>> source = RowData.from_input(np.zeros((8, 5))).source(algorithm="dense", center=False)
    >>> mean_loss(Autoencoder(5, 2, (4,)), source, kl_weight=1.0, batch_size=4) >= 0
    True
    """
    module.eval()
    total = 0.0
    for minibatch in iter_minibatches(source, batch_size):
        total += module.loss(minibatch.x, labels=minibatch.labels, deterministic=True, **minibatch.given).total(
            kl_weight).sum().item()
    if parallel is not None:
        total, n_rows = parallel.sum([total, source.n_rows])
        return total / n_rows
    return total / source.n_rows


def train(module, train_source, val_source=None, *, config, state, device, parallel=None, start_epoch=0):
    """Fit ``module`` with Adam on minibatches of rows, in place.

    Parameters
    ----------
    module : skvae.nn.models model
        Already on ``device``.
    train_source : skvae.train.rows.RowSource
        The training rows, on ``device``.
    val_source : skvae.train.rows.RowSource, default=None
        Held-out rows. When given, training stops once the validation loss has not
        improved by at least ``config.tol`` for ``config.n_iter_no_change`` epochs,
        and the best weights are restored; a ConvergenceWarning says when
        ``config.max_epochs`` ran out first.
    config : TrainingConfig
    state : TrainingState
        The shuffling RandomState, the noise generator (on ``device``) and the
        optimiser (its moments are kept between calls, as ``partial_fit`` needs).
    device : torch.device
    parallel : skvae.train.distributed.RankGroup, default=None
        Train data-parallel: ``train_source`` and ``val_source`` are this rank's rows,
        ``config.batch_size`` is the global minibatch, gradients are summed across
        ranks (:mod:`skvae.train.distributed`) and the logged losses are over all ranks.
    start_epoch : int, default=0
        Epochs the module has already been trained for: the warm-up continues
        from there.

    Returns
    -------
    history : dict of list of float
        Per-epoch mean training ``loss``, ``reconstruction`` and ``kl`` per cell,
        the epoch's ``kl_weight``, and ``val_loss`` when ``val_source`` is given.

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
    >>> from skvae.nn.models import VariationalAutoencoder
    >>> from skvae.train.data import RowData
    >>> from skvae.train.loop import TrainingConfig, TrainingState, train
    >>> X = np.random.RandomState(0).normal(size=(64, 10))
    >>> module = VariationalAutoencoder(10, 2, (8,))
    >>> state = TrainingState(module, device=torch.device("cpu"), seed=0, rng=np.random.RandomState(0),
    ...                       learning_rate=1e-2, torch_rng=torch.get_rng_state())
    >>> history = train(module, RowData.from_input(X).source(algorithm="auto", center=True, with_transpose=True),
    ...                 config=TrainingConfig(kl_weight=1.0, batch_size=16, max_epochs=5), state=state, device="cpu")
    >>> len(history["loss"]), history["loss"][-1] < history["loss"][0]
    (5, True)
    """
    n_train = train_source.n_rows if parallel is None else parallel.set_rows(train_source.n_rows)
    state.gradient_scale.n_processes = 1 if parallel is None else parallel.world_size
    # batch normalisation cannot normalise a single row in training
    fewest_rows = 2 if any(isinstance(layer, torch.nn.BatchNorm1d) for layer in module.modules()) else 1
    progress = EpochProgress(config.max_epochs, config.verbose if parallel is None or parallel.rank == 0 else 0)
    history = {"loss": [], "reconstruction": [], "kl": [], "kl_weight": [], **({} if val_source is None else {"val_loss": []})}
    stopping = None if val_source is None else EarlyStopping(config.n_iter_no_change, config.tol)
    finished = None  # the weights of the last finished epoch, which an interrupted one falls back to
    try:
        for epoch in range(1, config.max_epochs + 1):
            start = time.perf_counter()
            kl_weight = kl_warmup_weight(start_epoch + epoch, config.kl_weight, config.kl_warmup_epochs)
            try:
                reconstruction, kl = run_epoch(module, train_source, config=config, state=state, kl_weight=kl_weight,
                                               n_rows=n_train, epoch=epoch, device=device, parallel=parallel,
                                               fewest_rows=fewest_rows)
            except KeyboardInterrupt:
                if finished is None:
                    raise
                warnings.warn(f"Training interrupted during epoch {epoch}: keeping the model of epoch {epoch - 1}.",
                              UserWarning, stacklevel=2)
                module.load_state_dict(finished)
                stopping = None
                break
            loss = reconstruction + kl_weight * kl
            for key, value in (("loss", loss), ("reconstruction", reconstruction), ("kl", kl), ("kl_weight", kl_weight)):
                history[key].append(value)
            message = _epoch_message(epoch, config, loss, reconstruction, kl, kl_weight)
            if stopping is not None:
                val_loss = mean_loss(module, val_source, kl_weight=config.kl_weight, batch_size=config.batch_size,
                                     parallel=parallel)
                if not math.isfinite(val_loss):
                    raise _divergence_error(epoch, "the validation loss", val_loss, module, config)
                history["val_loss"].append(val_loss)
                message += f", validation loss {val_loss:.6g}"
                stopping.update(module, val_loss, warming_up=kl_weight < config.kl_weight)
            progress.epoch(epoch, message, loss=loss, seconds=time.perf_counter() - start)
            if stopping is not None and stopping.stop:
                progress.note(f"Validation loss did not improve by {config.tol} for {config.n_iter_no_change} "
                              "epochs: stopping.")
                break
            finished = {key: value.detach().clone() for key, value in module.state_dict().items()}
        else:
            if val_source is not None:
                warnings.warn(f"Early stopping did not stop training within max_epochs={config.max_epochs}: the "
                              f"validation loss was still improving by more than tol={config.tol}. Raise max_epochs "
                              "or tol.", ConvergenceWarning, stacklevel=2)
    finally:
        progress.close()
    if stopping is not None:
        stopping.restore_best(module)
    module.eval()
    return history


def run_epoch(module, source, *, config, state, kl_weight, n_rows, epoch, device, parallel=None, fewest_rows=1):
    """One pass over ``source``'s rows in a new shuffled order, an optimiser step per minibatch; the mean loss terms per cell.

    Parameters
    ----------
    module : skvae.nn.models model
    source : skvae.train.rows.RowSource
    config : TrainingConfig
        Its ``batch_size`` and ``shuffle_block_size``.
    state : TrainingState
    kl_weight : float
        This epoch's weight of the KL term.
    n_rows : int
        Rows of every rank together.
    epoch : int
        For messages.
    device : torch.device
    parallel : skvae.train.distributed.RankGroup, default=None
    fewest_rows : int, default=1
        Smaller minibatches are skipped (batch normalisation needs 2).

    Returns
    -------
    reconstruction, kl : float
        Mean per cell over the epoch's minibatches (of all ranks), before each step.

    Raises
    ------
    ValueError
        When the loss, or the loss of the last minibatch under the weights of the
        last step, is not finite.

    Examples
    --------
    >>> import numpy as np
    >>> import torch
    >>> from skvae.nn.models import Autoencoder
    >>> from skvae.train.data import RowData
    >>> from skvae.train.loop import TrainingConfig, TrainingState, run_epoch
    >>> module = Autoencoder(10, 2, (8,))
    >>> state = TrainingState(module, device=torch.device("cpu"), seed=0, rng=np.random.RandomState(0),
    ...                       learning_rate=1e-2, torch_rng=torch.get_rng_state())
    >>> source = RowData.from_input(np.random.RandomState(0).normal(size=(32, 10))).source(algorithm="dense", center=True)
    >>> reconstruction, kl = run_epoch(module, source, config=TrainingConfig(batch_size=8), state=state, kl_weight=0.0,
    ...                                n_rows=32, epoch=1, device=torch.device("cpu"))
    >>> reconstruction > 0, kl
    (True, 0.0)
    """
    module.train()
    sums = torch.zeros(2, device=device)
    last = None
    weights = config.loss_weights(kl_weight)
    order = epoch_order(state.rng, n_rows, config.shuffle_block_size)
    for minibatch, global_size in _minibatches(source, config.batch_size, order, parallel, fewest_rows):
        state.optimizer.zero_grad(set_to_none=True)
        if minibatch is not None:
            terms = module.loss(minibatch.x, labels=minibatch.labels, generator=state.generator, weights=weights,
                                gradient_scale=state.gradient_scale, **minibatch.given)
            per_cell = terms.total(kl_weight)
            loss = per_cell.mean() if parallel is None else per_cell.sum() / global_size
            loss.backward()
            sums += torch.stack([terms.reconstruction.detach().sum(), terms.kl.detach().sum()])
            last = minibatch
        if parallel is not None:
            parallel.sum_gradients(module.parameters())
        state.optimizer.step()
    sums = sums.tolist() if parallel is None else parallel.sum(sums.tolist())
    reconstruction, kl = (total / n_rows for total in sums)
    loss = reconstruction + kl_weight * kl
    if not math.isfinite(loss):
        raise _divergence_error(epoch, "the training loss", loss, module, config)
    # the losses above come from before each step: the last step can still diverge
    after_step = 0.0 if last is None else _loss_after_step(module, last, weights)
    if parallel is not None:
        after_step = parallel.sum([after_step])[0]
        # batch normalisation's running statistics come from each rank's part of the minibatches
        # (and from the check above, a forward pass in training mode)
        parallel.average_buffers(module)
    if not math.isfinite(after_step):
        raise _divergence_error(epoch, "the loss after the last optimiser step", after_step, module, config)
    return reconstruction, kl


class EarlyStopping:
    """Stop once the validation loss has not improved by ``tol`` for ``n_iter_no_change`` epochs; keep the best weights.

    Epochs of the KL warm-up never count against it (their losses are not comparable).

    Parameters
    ----------
    n_iter_no_change : int
    tol : float

    Examples
    --------
    >>> import torch
    >>> from skvae.train.loop import EarlyStopping
    >>> stopping, module = EarlyStopping(n_iter_no_change=2, tol=0.0), torch.nn.Linear(1, 1)
    >>> for loss in (3.0, 2.0, 2.5, 2.4):
    ...     stopping.update(module, loss)
    >>> stopping.stop, stopping.best
    (True, 2.0)
    """

    def __init__(self, n_iter_no_change, tol):
        self.n_iter_no_change, self.tol = n_iter_no_change, tol
        self.best, self.best_state, self.waited = math.inf, None, 0

    @property
    def stop(self):
        """Whether the loss has waited ``n_iter_no_change`` epochs without improving."""
        return self.waited >= self.n_iter_no_change

    def update(self, module, val_loss, *, warming_up=False):
        """Record an epoch's validation loss; the weights are kept when it is the best yet.

        Parameters
        ----------
        module : torch.nn.Module
        val_loss : float
        warming_up : bool, default=False
        """
        self.waited = 0 if val_loss < self.best - self.tol or warming_up else self.waited + 1
        if val_loss < self.best:
            self.best, self.best_state = val_loss, copy.deepcopy(module.state_dict())

    def restore_best(self, module):
        """Load the best epoch's weights into ``module`` (if any was recorded).

        Parameters
        ----------
        module : torch.nn.Module
        """
        if self.best_state is not None:
            module.load_state_dict(self.best_state)


def _epoch_message(epoch, config, loss, reconstruction, kl, kl_weight):
    message = f"Epoch {epoch}/{config.max_epochs}: loss {loss:.6g}"
    if config.kl_weight > 0:  # a model with a KL term
        message += f" (reconstruction {reconstruction:.6g}, KL {kl:.6g}"
        message += f", KL weight {kl_weight:.3g})" if kl_weight < config.kl_weight else ")"
    return message


def _minibatches(source, batch_size, order, parallel, fewest_rows):
    """Yield ``(minibatch, global_size)``: a minibatch of this process's rows, or None for too few rows.

    A single process yields every ``batch_size`` rows of ``order`` (global_size None),
    leaving out a last minibatch of fewer than ``fewest_rows``. A rank of a
    data-parallel run yields its part of each global minibatch, None where it has
    fewer than ``fewest_rows`` of it: it still takes part in the step.
    """
    if parallel is None:
        indices = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
        yield from ((minibatch, None) for minibatch in source.minibatches([index for index in indices if len(index) >= fewest_rows]))
        return
    pairs = list(parallel.local_minibatches(order, batch_size))
    made = source.minibatches([index for index, _ in pairs if len(index) >= fewest_rows])
    for index, global_size in pairs:
        yield (next(made) if len(index) >= fewest_rows else None), global_size
