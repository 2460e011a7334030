"""Thread limits: each call runs with n_jobs threads in torch and in the BLAS pools, and restores them."""

import joblib
import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_info

import skvae.base
import skvae.train.session
from skvae import BetaVAEEmbedder, BetaVSCEmbedder
from skvae._threads import limited_threads

X = np.random.RandomState(0).normal(size=(40, 6))


def _blas_threads():
    return {pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"}


@pytest.mark.parametrize(("n_jobs", "expected"), [(None, 1), (1, 1), (2, 2), (-1, joblib.cpu_count())])
def test_limited_threads_sets_and_restores_torch_and_blas(n_jobs, expected):
    torch_before, blas_before = torch.get_num_threads(), _blas_threads()
    with limited_threads(n_jobs) as n_threads:
        assert n_threads == expected == torch.get_num_threads()
        assert _blas_threads() <= {expected}
    assert torch.get_num_threads() == torch_before and _blas_threads() == blas_before


def test_none_follows_a_joblib_parallel_config():
    with joblib.parallel_config(n_jobs=2), limited_threads(None) as n_threads:
        assert n_threads == 2 == torch.get_num_threads()


@pytest.mark.filterwarnings("ignore::skvae.PosteriorCollapseWarning")  # tiny fits: nothing to encode
def test_fit_transform_and_score_run_with_the_estimators_threads(monkeypatch):
    seen = []

    def record(name):
        where = skvae.train.session if name == "train" else skvae.base
        original = getattr(where, name)
        monkeypatch.setattr(where, name, lambda *a, **k: (seen.append((name, torch.get_num_threads())), original(*a, **k))[1])

    for name in ("train", "map_minibatches", "mean_loss"):  # training, transform's minibatches, score's loss
        record(name)
    before = torch.get_num_threads()
    embedder = BetaVSCEmbedder(max_epochs=2, n_jobs=1).fit(X)
    embedder.transform(X)
    embedder.score(X)
    with joblib.parallel_config(n_jobs=2):
        BetaVSCEmbedder(max_epochs=2).fit(X)
    # fit's inference pass measures the active latent dimensions
    assert seen == [("train", 1), ("map_minibatches", 1), ("map_minibatches", 1), ("mean_loss", 1), ("train", 2),
                    ("map_minibatches", 2)]
    assert torch.get_num_threads() == before


def test_n_jobs_zero_is_refused():
    with pytest.raises(ValueError, match="n_jobs"):
        BetaVAEEmbedder(n_jobs=0).fit(X)


@pytest.mark.filterwarnings("ignore::skvae.PosteriorCollapseWarning")  # tiny fits: nothing to encode
def test_results_do_not_depend_on_the_machine_by_default():
    """One thread by default: the same sums in the same order on any CPU, whatever its core count."""
    first = BetaVAEEmbedder(max_epochs=3, random_state=0).fit_transform(X)
    with joblib.parallel_config(n_jobs=1):
        np.testing.assert_array_equal(first, BetaVAEEmbedder(max_epochs=3, random_state=0, n_jobs=1).fit_transform(X))
