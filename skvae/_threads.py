"""Thread limits around training and inference, so that a busy machine slows skvae down gracefully.

torch's intra-op pool and the BLAS / OpenMP pools of numpy and scipy each default to one
thread per core. When another process is busy, threads that spin-wait for each other
stall: a 2-thread epoch beside one CPU-bound job ran 10-100x slower than alone.
"""

from contextlib import contextmanager

import torch
from joblib import effective_n_jobs
from threadpoolctl import ThreadpoolController

_controller = None


def _threadpool_controller():
    """One controller for the process: creating one scans every loaded library."""
    global _controller
    if _controller is None:
        _controller = ThreadpoolController()
    return _controller


@contextmanager
def limited_threads(n_jobs):
    """Run the block with ``n_jobs`` threads in torch and in the BLAS / OpenMP pools, then restore them.

    ``n_jobs`` follows scikit-learn: None is 1 unless inside ``joblib.parallel_config(n_jobs=...)``,
    -1 is every CPU, -2 all but one.
    """
    n_threads = max(1, effective_n_jobs(n_jobs))
    previous = torch.get_num_threads()
    torch.set_num_threads(n_threads)
    try:
        with _threadpool_controller().limit(limits=n_threads):
            yield n_threads
    finally:
        torch.set_num_threads(previous)
