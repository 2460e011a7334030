"""One call's training, from checked rows to trained weights: device, ranks, random generators, optimiser, epochs.

An estimator's ``fit`` or ``partial_fit`` opens a :class:`TrainingSession` on a device
(and, under ``torchrun``, the rank group), lets every rank check its input
(:meth:`~TrainingSession.agree`), starts or resumes the :class:`~skvae.train.loop.TrainingState`
(:meth:`~TrainingSession.begin`, :meth:`~TrainingSession.resume`), and hands it the
rows, split and sharded here (:meth:`~TrainingSession.split`), to train
(:meth:`~TrainingSession.train`). The session knows nothing of scikit-learn: it
takes the module, the rows and a :class:`~skvae.train.loop.TrainingConfig`.
"""

import os

import numpy as np
import torch
from sklearn.utils import check_random_state

from .distributed import Agreement, data_parallel
from .loop import TrainingState, train
from .rows import DenseRowSource


class TrainingSession:
    """The device, rank group and training state of one call's training.

    Parameters
    ----------
    device : torch.device
        Where training runs. Under ``torchrun`` (``WORLD_SIZE`` > 1) the process
        group is joined here (:func:`~skvae.train.distributed.data_parallel`).

    Attributes
    ----------
    parallel : skvae.train.distributed.RankGroup or None
    state : skvae.train.loop.TrainingState or None
        Set by :meth:`begin` or :meth:`resume`.
    seed : int or None
        The seed :meth:`begin` drew (validation splits of ranks derive from it).

    Examples
    --------
    >>> import numpy as np
    >>> import torch
    >>> from skvae.nn.models import Autoencoder
    >>> from skvae.train.data import RowData
    >>> from skvae.train.loop import TrainingConfig
    >>> from skvae.train.session import TrainingSession
    >>> session = TrainingSession(torch.device("cpu"))
    >>> module = session.begin(lambda: Autoencoder(10, 2, (8,)), random_state=0, learning_rate=1e-2)
    >>> rows, _ = session.split(RowData.from_input(np.random.RandomState(0).normal(size=(40, 10)).astype("f4")))
    >>> history, algorithm = session.train(module, rows, config=TrainingConfig(max_epochs=3), algorithm="auto")
    >>> len(history["loss"]), algorithm
    (3, 'dense')
    """

    def __init__(self, device):
        self.device = device
        self.parallel = data_parallel(device)
        self.state = self.seed = None

    def agree(self, check):
        """``check()``'s result, once every rank has run it; when any rank fails, every rank raises.

        Parameters
        ----------
        check : callable
            Validates this rank's input (no collective inside).

        Returns
        -------
        object
            What ``check`` returned.
        """
        if self.parallel is None:
            return check()
        error = result = None
        try:
            result = check()
        except Exception as exc:  # re-raised below, once the ranks agreed
            error = exc
        self.parallel.raise_if_any_failed(error)
        return result

    def begin(self, build, *, random_state, learning_rate, same=None):
        """Start a new training state: the shuffling RandomState, torch's seed, the optimiser; returns the module.

        Parameters
        ----------
        build : callable
            Returns the module to train (a new one is initialised from the local seed).
        random_state : int, RandomState instance or None
            None draws fresh entropy (agreed on across ranks), never numpy's global state.
        learning_rate : float
        same : callable, default=None
            Returns what every rank must agree on, by name (the estimator, its
            features, its covariates): checked across ranks. A value may be an
            :class:`~skvae.train.distributed.Agreement`, whose remedy the error states.

        Returns
        -------
        torch.nn.Module
        """
        rng = np.random.RandomState() if random_state is None else check_random_state(random_state)
        if self.parallel is not None:
            for what, value in (same() if same is not None else {}).items():
                agreement = value if isinstance(value, Agreement) else Agreement(value, None)
                self.parallel.check_same(what, agreement.value, agreement.remedy)
            if random_state is None:
                rng = np.random.RandomState(self.parallel.broadcast_seed(rng.randint(np.iinfo(np.int32).max)))
        seed = rng.randint(np.iinfo(np.int32).max)
        with torch.random.fork_rng(devices=_cuda_indices(self.device)):
            torch.manual_seed(seed)  # the initialisation and dropout draw from a local seed
            module = build()
            torch_rng = _torch_rng_state(self.device)
        self.seed = seed
        self.state = TrainingState(module, device=self.device, seed=seed, rng=rng, learning_rate=learning_rate,
                                   torch_rng=torch_rng)
        return module

    def start(self, build, *, state=None, random_state, learning_rate, same=None):
        """Continue ``state`` (:meth:`resume`) when given, else :meth:`begin` a new one; returns the module to train.

        Parameters
        ----------
        build : callable
            Returns the module: a new one (initialised from the local seed), or the one ``state`` trains.
        state : skvae.train.loop.TrainingState, default=None
            An earlier call's (``partial_fit``); None: a new optimiser, shuffling and noise.
        random_state, learning_rate, same
            As for :meth:`begin` (``learning_rate`` applies from now on when resuming).

        Returns
        -------
        torch.nn.Module
        """
        if state is None:
            return self.begin(build, random_state=random_state, learning_rate=learning_rate, same=same)
        self.resume(state, learning_rate=learning_rate)
        return build()

    def resume(self, state, *, learning_rate):
        """Continue a training state of an earlier call (``partial_fit``), at this learning rate from now on.

        Parameters
        ----------
        state : skvae.train.loop.TrainingState
        learning_rate : float
        """
        state.set_learning_rate(learning_rate)
        self.state = state

    def split(self, data, validation_fraction=None):
        """This rank's share of ``data`` and, with ``validation_fraction``, a held-out part of it.

        A rank splits its rows with a generator of its own: the shuffling RandomState
        stays the same on every rank.

        Parameters
        ----------
        data : skvae.train.data.RowData
        validation_fraction : float, default=None

        Returns
        -------
        train, validation : RowData, RowData or None
        """
        data = data.shard(self.parallel)
        if validation_fraction is None:
            return data, None
        rng = self.state.rng if self.parallel is None else np.random.RandomState([self.seed, self.parallel.rank])
        return data.split(validation_fraction, rng)

    def count(self, data):
        """The number of rows of ``data`` on every rank together.

        Parameters
        ----------
        data : skvae.train.data.RowData

        Returns
        -------
        int
        """
        return data.n_rows if self.parallel is None else sum(self.parallel.gather(data.n_rows))

    def train(self, module, train_data, val_data=None, *, config, algorithm, center=True, start_epoch=0):
        """Train ``module`` in place on these rows; the state ends on CPU, the module too.

        Parameters
        ----------
        module : torch.nn.Module
        train_data, val_data : skvae.train.data.RowData
            From :meth:`split`.
        config : skvae.train.loop.TrainingConfig
        algorithm : {"auto", "sparse", "dense"}
            How minibatches are represented; the validation rows take the one
            "auto" chose for the training rows.
        center : bool, default=True
            Center sparse rows' columns (a Gaussian model's input).
        start_epoch : int, default=0
            Epochs already trained (the KL warm-up continues from there).

        Returns
        -------
        history : dict of list of float
        algorithm : {"sparse", "dense"}
            The representation used.

        Raises
        ------
        ValueError
            When a file trained from changed during training (its values are then a mix).
        """
        train_source = train_data.source(algorithm=algorithm, center=center, device=self.device, with_transpose=True)
        algorithm = "dense" if isinstance(train_source, DenseRowSource) else "sparse"
        val_source = None if val_data is None else val_data.source(algorithm=algorithm, center=center, device=self.device)
        fingerprint = train_data.fingerprint() if train_data.on_disk else None
        state = self.state
        module.to(self.device)
        state.train_on(self.device)
        with torch.random.fork_rng(devices=_cuda_indices(self.device)):
            _set_torch_rng_state(state.torch_rng, self.device)
            history = train(module, train_source, val_source, config=config, state=state, device=self.device,
                            parallel=self.parallel, start_epoch=start_epoch)
            state.torch_rng = _torch_rng_state(self.device)
        state.to(torch.device("cpu"))
        module.cpu()
        if fingerprint is not None and train_data.fingerprint() != fingerprint:
            raise ValueError(f"{train_data.filename} was modified while skvae trained on it: the model saw a mix of "
                             "old and new values, so it is not kept. Train on a file nothing writes to.")
        return history, algorithm


def training_device(device):
    """The torch device of an estimator's ``device`` parameter; a ValueError for one skvae cannot train on.

    Parameters
    ----------
    device : {"auto", "cpu", "cuda"}, str or torch.device
        "auto": CUDA when available (under ``torchrun``, this process's GPU,
        ``LOCAL_RANK``), else the CPU.

    Returns
    -------
    torch.device

    Examples
    --------
    >>> from skvae.train.session import training_device
    >>> training_device("cpu")
    device(type='cpu')
    """
    if isinstance(device, str) and device == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        # torchrun starts one process per GPU and tells each its own
        return torch.device("cuda", int(os.environ["LOCAL_RANK"])) if "LOCAL_RANK" in os.environ else torch.device("cuda")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"device={device!r} is not a torch device: {exc}") from None
    if resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"device={device!r}: skvae trains on 'cpu' or 'cuda' (or 'auto'), not {resolved.type!r}.")
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was requested but CUDA is not available; use 'cpu' or 'auto'.")
    return resolved


def _cuda_indices(device):
    """The CUDA device whose random generator training draws from, as ``fork_rng`` takes it."""
    if device.type != "cuda":
        return []
    return [torch.cuda.current_device() if device.index is None else device.index]


def _torch_rng_state(device):
    """torch's global random states that training draws from (dropout): the CPU's, and the GPU's on CUDA."""
    return torch.get_rng_state(), (torch.cuda.get_rng_state(device) if device.type == "cuda" else None)


def _set_torch_rng_state(states, device):
    cpu, cuda = states
    torch.set_rng_state(cpu)
    if cuda is not None and device.type == "cuda":
        torch.cuda.set_rng_state(cuda, device)
