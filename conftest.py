"""Shared by the tests and the doctests of skvae/ alike (so it sits at the root): settings, the PBMC3k marker."""

import os

# scikit-learn's check_array_api_input runs only when SciPy's array API support is on;
# it must be set before SciPy is first imported.
os.environ.setdefault("SCIPY_ARRAY_API", "1")

from hypothesis import settings

# First calls into torch are slow (lazy initialisation); CI machines are noisy.
settings.register_profile("skvae", deadline=None)
settings.load_profile("skvae")

import matplotlib

matplotlib.use("Agg")  # tests draw figures without a display

import functools
import socket

import pytest
from _pytest.doctest import DoctestItem

from skvae.datasets import _local_pbmc3k, _pbmc3k_folders, get_data_home

# doctests that read PBMC3k (they call these)
_DATA_CALLS = ("fetch_pbmc3k(", "run_study(")


@functools.cache
def _pbmc3k_unavailable():
    """Why PBMC3k cannot be had here, or None: it is on disk, or its server can be reached."""
    home = get_data_home()
    if _local_pbmc3k(home) is not None:
        return None
    try:
        socket.create_connection(("cf.10xgenomics.com", 443), timeout=3).close()
        return None
    except OSError:
        searched = "; ".join(str(folder) for folder in _pbmc3k_folders(home))
        return (f"PBMC3k is not in {searched} and cf.10xgenomics.com cannot be reached: set SKVAE_DATA to a folder "
                "that holds pbmc3k/ (matrix.mtx, genes.tsv, barcodes.tsv), or allow the download.")


def pytest_collection_modifyitems(items):
    """Real-data tests (``slow``, or using the ``pbmc3k_files`` fixture) and doctests that load PBMC3k need it."""
    for item in items:
        reads_data = (
            item.get_closest_marker("slow") is not None
            or "pbmc3k_files" in getattr(item, "fixturenames", ())
            or (isinstance(item, DoctestItem) and any(call in example.source for example in item.dtest.examples
                                                       for call in _DATA_CALLS))
        )
        if reads_data:
            item.add_marker(pytest.mark.pbmc3k)


def pytest_runtest_setup(item):
    if item.get_closest_marker("pbmc3k") is not None and (reason := _pbmc3k_unavailable()):
        pytest.skip(reason)
