"""Data-parallel training over :mod:`torch.distributed`: which rows each rank trains on, and the reductions.

Every rank holds its own rows. All ranks draw the same permutation of the rows of
all ranks together (the global rows, rank 0's first), so a global minibatch is the
same set of cells as in one process; each rank computes the loss of the cells of it
that it holds, divided by the size of the global minibatch, and the gradients are
summed across ranks: the step is the one process's step on the global minibatch, up
to the order of floating-point sums. Ranks start from the same weights and take the
same steps, so they end with the same weights.
"""

import contextlib
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

if dist.is_available():
    # torch.distributed.nn binds the default group as its functions' default argument when it is first imported. The
    # first optimiser imports it (through torch._dynamo); were that after the group is initialised, the binding would
    # keep the group alive after destroy_process_group, and its threads would be stopped while the interpreter exits,
    # which aborts the process now and then ("terminate called without an active exception"). Imported here, first.
    import torch.distributed.nn


@dataclass(frozen=True)
class Agreement:
    """A value every rank must share, with what to do when they do not (for :meth:`RankGroup.check_same`).

    Parameters
    ----------
    value : object
        This rank's value.
    remedy : str or None
        What the error tells the user to do when the ranks disagree (None: the
        general remedy of :meth:`RankGroup.check_same`).

    Examples
    --------
    >>> from skvae.train.distributed import Agreement
    >>> Agreement(["B", "T"], "label every type on every rank").value
    ['B', 'T']
    """

    value: Any
    remedy: str | None


def data_parallel(device):
    """The process group to train in, or None for a single process.

    A process group already initialised is used as it is. Otherwise, when the
    environment variables that ``torchrun`` sets say there are several processes
    (``WORLD_SIZE`` > 1), the default group is initialised from them: the "nccl"
    backend for CUDA, else "gloo".

    Parameters
    ----------
    device : torch.device
        Where this process trains.

    Returns
    -------
    RankGroup or None

    Examples
    --------
    >>> import torch
    >>> from skvae.train.distributed import data_parallel
    >>> data_parallel(torch.device("cpu")) is None  # a single process
    True
    """
    if not dist.is_available():
        return None
    if not dist.is_initialized():
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return None
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    if dist.get_world_size() == 1:
        return None
    return RankGroup(device)


class RankGroup:
    """The default process group, seen from this rank.

    Parameters
    ----------
    device : torch.device
        Where this rank's tensors live (NCCL reduces CUDA tensors).

    Examples
    --------
    A group of one process, for illustration (``torchrun`` starts real ones):

    >>> import tempfile
    >>> import numpy as np
    >>> import torch
    >>> import torch.distributed as dist
    >>> from skvae.train.distributed import RankGroup
    >>> dist.init_process_group("gloo", init_method=f"file://{tempfile.mkdtemp()}/store", rank=0, world_size=1)
    >>> parallel = RankGroup(torch.device("cpu"))
    >>> parallel.set_rows(5)
    5
    >>> [(local.tolist(), size) for local, size in parallel.local_minibatches(np.array([4, 0, 2, 1, 3]), 2)]
    [([4, 0], 2), ([2, 1], 2), ([3], 1)]
    >>> parallel.sum([1.5, 2.0])
    [1.5, 2.0]
    >>> dist.destroy_process_group()
    """

    def __init__(self, device):
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.device = device
        self._offset = self._n_local = self.n_rows = None

    def gather(self, value):
        """Every rank's ``value``, in rank order.

        Parameters
        ----------
        value : object
            Any picklable object.

        Returns
        -------
        list
        """
        values = [None] * self.world_size
        with _peers_alive():
            dist.all_gather_object(values, value)
        return values

    def check_same(self, what, value, remedy=None):
        """Raise the same ValueError on every rank when ranks disagree on ``value``.

        Parameters
        ----------
        what : str
            What ``value`` is, for the message.
        value : object
            This rank's value (picklable, comparable with ``==``).
        remedy : str, default=None
            What to do about it, for the message; None: every rank must train the
            same estimator on the same features.
        """
        values = self.gather(value)
        if any(other != values[0] for other in values):
            listing = ", ".join(f"rank {rank}: {other}" for rank, other in enumerate(values))
            raise ValueError(f"The processes of this data-parallel run disagree on {what} ({listing}): "
                             f"{remedy or 'every rank must train the same estimator on the same features.'}")

    def broadcast_seed(self, seed):
        """Rank 0's ``seed`` on every rank.

        Parameters
        ----------
        seed : int
            This rank's seed.

        Returns
        -------
        int
        """
        return self.gather(int(seed))[0]

    def set_rows(self, n_local):
        """Record this rank's number of rows.

        Parameters
        ----------
        n_local : int

        Returns
        -------
        int
            The number of rows of all ranks.
        """
        counts = self.gather(int(n_local))
        self._offset, self.n_rows = sum(counts[: self.rank]), sum(counts)
        self._n_local = n_local
        return self.n_rows

    def local_minibatches(self, order, batch_size):
        """Yield this rank's part of each global minibatch of ``order``.

        Parameters
        ----------
        order : ndarray of int
            A permutation of the global rows, the same on every rank.
        batch_size : int
            Rows per global minibatch.

        Yields
        ------
        local : ndarray of int
            Indices into this rank's rows, in the order of ``order`` (possibly empty).
        global_size : int
            Rows in the global minibatch.
        """
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            mine = rows[(rows >= self._offset) & (rows < self._offset + self._n_local)]
            yield mine - self._offset, len(rows)

    def sum(self, values):
        """Sums over ranks of a list of floats (NaN and inf propagate).

        Parameters
        ----------
        values : list of float

        Returns
        -------
        list of float
        """
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        with _peers_alive():
            dist.all_reduce(tensor)
        return tensor.tolist()

    def sum_gradients(self, parameters):
        """Sum each parameter's gradient over ranks, in one all-reduce (a missing gradient counts as 0).

        Parameters
        ----------
        parameters : iterable of torch.nn.Parameter
        """
        parameters = [p for p in parameters if p.requires_grad]
        grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in parameters]
        flat = torch.cat([grad.reshape(-1) for grad in grads])
        with _peers_alive():
            dist.all_reduce(flat)
        for parameter, chunk in zip(parameters, flat.split([p.numel() for p in parameters]), strict=True):
            parameter.grad = chunk.view_as(parameter)

    def average_buffers(self, module):
        """Make ``module``'s buffers the same on every rank: floats averaged (batch normalisation's running
        statistics, each rank's from its part of the minibatches), integers the largest (its batch counts).

        Parameters
        ----------
        module : torch.nn.Module
        """
        buffers = [buffer for buffer in module.buffers() if buffer.numel()]
        floats = [buffer for buffer in buffers if buffer.is_floating_point()]
        if floats:
            flat = torch.cat([buffer.reshape(-1) for buffer in floats]).to(self.device)
            with _peers_alive():
                dist.all_reduce(flat)
            flat /= self.world_size
            for buffer, chunk in zip(floats, flat.split([b.numel() for b in floats]), strict=True):
                buffer.copy_(chunk.view_as(buffer))
        for buffer in buffers:
            if not buffer.is_floating_point():
                with _peers_alive():
                    dist.all_reduce(buffer, op=dist.ReduceOp.MAX)

    def raise_if_any_failed(self, error):
        """Raise on every rank when any rank's ``error`` is not None, so no rank waits in a collective alone.

        A rank raises its own error; the others a ValueError that names the rank that
        failed and its message.

        Parameters
        ----------
        error : Exception or None
            What this rank raised, or None.
        """
        failures = [(rank, message) for rank, message in enumerate(self.gather(None if error is None else
                                                                               f"{type(error).__name__}: {error}"))
                    if message is not None]
        if error is not None:
            raise error
        if failures:
            listing = "; ".join(f"rank {rank}: {message}" for rank, message in failures)
            raise ValueError(f"Another process of this data-parallel run failed before training ({listing}), so "
                             "this one stops too.")

    def shard_of(self, n_rows):
        """This rank's contiguous block of ``n_rows`` shared rows (ranks' blocks differ by at most 1).

        Parameters
        ----------
        n_rows : int

        Returns
        -------
        slice
        """
        bounds = np.linspace(0, n_rows, self.world_size + 1).round().astype(int)
        return slice(int(bounds[self.rank]), int(bounds[self.rank + 1]))


@contextlib.contextmanager
def _peers_alive():
    """A collective whose peer process died says so, instead of gloo's or NCCL's transport message."""
    try:
        yield
    except (RuntimeError, dist.DistBackendError) as exc:
        if not any(sign in str(exc) for sign in ("Connection closed", "Connection reset", "closed by peer", "Broken pipe",
                                                  "NCCL", "timed out", "Timeout")):
            raise
        rank = dist.get_rank() if dist.is_initialized() else "?"
        raise RuntimeError(
            f"Rank {rank}: another process of this data-parallel run stopped while the ranks were exchanging "
            f"results ({str(exc).splitlines()[0]}). Its own output says why: torchrun prints each rank's error, "
            "and names the rank that failed first."
        ) from exc
