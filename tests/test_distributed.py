"""Data-parallel training with torch.distributed: two real processes on gloo, started by torchrun."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from skvae import AutoencoderEmbedder, _markers
from skvae.train.distributed import data_parallel

WORKER = Path(__file__).with_name("distributed_worker.py")
sys.path.insert(0, str(WORKER.parent))
import distributed_worker


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _torchrun(out, mode, *, succeeds=True, monitor_interval=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # monitor_interval: how long torchrun leaves the other ranks running after one has died (it then stops them)
    monitor = [] if monitor_interval is None else [f"--monitor-interval={monitor_interval}"]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
               f"--master_port={_free_port()}", *monitor, str(WORKER), str(out), mode]
    result = subprocess.run(command, check=False, env=env, capture_output=True, text=True, timeout=300)
    assert (result.returncode == 0) == succeeds, result.stderr[-3000:]
    return result


def test_two_ranks_end_identical_and_match_one_process_on_the_global_batch(tmp_path):
    _torchrun(tmp_path, "train")
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in (0, 1)]
    for key, value in ranks[0]["state"].items():
        assert torch.equal(value, ranks[1]["state"][key]), key
    # one process on all rows with the same global minibatch of 32: each rank computed its part of it
    single = AutoencoderEmbedder(**distributed_worker.PARAMS).fit(distributed_worker.data())
    for key, value in single.module_.state_dict().items():
        torch.testing.assert_close(ranks[0]["state"][key], value, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ranks[0]["loss"], single.history_["loss"], rtol=1e-5)
    assert ranks[0]["loss"] == ranks[1]["loss"]  # the logged losses are reduced over both ranks


def test_ranks_with_different_features_both_get_a_clear_error(tmp_path):
    _torchrun(tmp_path, "mismatch")
    for rank in (0, 1):
        message = (tmp_path / f"error{rank}.txt").read_text()
        assert "disagree on the number of features (rank 0: 12, rank 1: 13)" in message


def test_a_single_process_trains_without_a_process_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert data_parallel(torch.device("cpu")) is None
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert data_parallel(torch.device("cpu")) is None
    assert not torch.distributed.is_initialized()


_GROUP_FREED = """
import glob, tempfile
import numpy as np
import torch.distributed as dist
from skvae import AutoencoderEmbedder
dist.init_process_group("gloo", init_method=f"file://{tempfile.mkdtemp()}/store", rank=0, world_size=1)
AutoencoderEmbedder(n_components=2, hidden_layer_sizes=(4,), max_epochs=1).fit(np.random.RandomState(0).normal(size=(20, 5)))
dist.destroy_process_group()
print(sorted(open(name).read().strip() for name in glob.glob("/proc/self/task/*/comm")))
"""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads the process's threads from Linux's /proc")
def test_a_destroyed_group_leaves_no_gloo_thread_behind_after_training():
    # a group that outlives destroy_process_group is torn down while the interpreter exits, which aborted torchrun's
    # processes now and then; a fresh interpreter, as a user's script (the test process has imported everything)
    result = subprocess.run([sys.executable, "-c", _GROUP_FREED], check=True, capture_output=True, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    threads = result.stdout.strip().splitlines()[-1]
    assert "python" in threads
    assert "gloo" not in threads, threads


def test_two_ranks_with_batches_end_identical_and_disagreeing_categories_are_one_clear_error(tmp_path):
    _torchrun(tmp_path, "batches")
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in (0, 1)]
    assert any("covariate_offsets" in key for key in ranks[0]["state"])
    for key, value in ranks[0]["state"].items():
        assert torch.equal(value, ranks[1]["state"][key]), key
    mismatch = tmp_path / "mismatch"
    mismatch.mkdir()
    _torchrun(mismatch, "batch-mismatch")
    for rank in (0, 1):
        message = (mismatch / f"error{rank}.txt").read_text()
        assert "disagree on the batch categories (rank 0: ['a', 'b'], rank 1: ['a', 'b', 'c'])" in message


def test_two_ranks_with_two_covariates_end_identical(tmp_path):
    _torchrun(tmp_path, "covariates")
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in (0, 1)]
    assert ranks[0]["categories"] == {"sample": ["s1", "s2", "s3"], "technology": ["x", "y"]}
    assert ranks[0]["state"]["decoder.covariate_offsets.0.weight"].shape[0] == 5  # 3 samples + 2 technologies
    for key, value in ranks[0]["state"].items():
        assert torch.equal(value, ranks[1]["state"][key]), key


def test_two_ranks_train_one_classifier_with_the_same_type_gaussians(tmp_path):
    _torchrun(tmp_path, "classifier")
    ranks = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=False) for rank in (0, 1)]
    for key, value in ranks[0]["state"].items():
        assert torch.equal(value, ranks[1]["state"][key]), key
    # the Gaussians come from both ranks' labelled cells: the same on each (each rank's own would differ)
    np.testing.assert_array_equal(ranks[0]["means"], ranks[1]["means"])
    np.testing.assert_array_equal(ranks[0]["quantiles"], ranks[1]["quantiles"])


def test_the_types_the_adversary_may_mix_come_from_every_ranks_labelled_cells(tmp_path):
    from skvae.classifier import adversary_types

    _torchrun(tmp_path, "classifier-gate")
    # one process's rule over all the cells: "high" is labelled in batch "a" alone, so not mixed there; rank 1 labels
    # no cell of batch "b", so alone it would take "b" to hold every type and mix everything
    X = distributed_worker.data()
    batch, types = distributed_worker.gate_labels(X, np.arange(len(X)))
    codes = np.array([-1 if label is None else ["high", "low"].index(label) for label in types])
    expected = adversary_types(codes, (batch == "b").astype(int), 2, 2)
    assert expected.tolist() == [[False, True], [True, True]]
    rank1 = types[60:][batch[60:] == "b"]
    assert all(label is None for label in rank1)
    for rank in (0, 1):
        assert torch.load(tmp_path / f"rank{rank}.pt")["types"] == tuple(map(tuple, expected.tolist()))


def test_two_ranks_choose_the_same_marker_genes_from_every_ranks_labelled_cells(tmp_path, monkeypatch):
    _torchrun(tmp_path, "classifier-counts")
    ranks = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=False) for rank in (0, 1)]
    for name in ("markers", "expression", "shares", "gene_shares", "means", "profile_centres", "profile_quantiles"):
        np.testing.assert_array_equal(ranks[0][name], ranks[1][name])
    # the types' mean expression of all labelled cells of both ranks, as one process computes it
    X = distributed_worker.counts(distributed_worker.data())
    rows = np.arange(len(X))
    types = np.where(X[:, 0] > 4.5, 0, 1)  # "high" sorts before "low"
    types[np.where(rows < 60, rows % 3 == 0, rows % 3 == 1)] = -1
    n, log_sums, share_sums = _markers.expression_sums([(slice(0, len(X)), X)], types, 2, X.shape[1])
    np.testing.assert_allclose(ranks[0]["expression"], log_sums / n[:, None], rtol=1e-5)
    np.testing.assert_allclose(ranks[0]["gene_shares"], share_sums / n[:, None], rtol=1e-5)
    assert (ranks[0]["markers"] >= 0).any()
    # the profile test calibrated on both ranks' labelled cells (the worker tests types of 10 cells or more)
    monkeypatch.setattr(_markers, "MIN_CELLS", 10)
    profiles = _markers.log_profiles(ranks[0]["gene_shares"])
    labelled = types >= 0
    scores = _markers.shortfalls([(slice(0, labelled.sum()), X[labelled])], types[labelled],
                                 _markers.marker_indicator(ranks[0]["markers"], X.shape[1]), ranks[0]["shares"],
                                 profile_shares=ranks[0]["gene_shares"], leave_out=n)
    centres, _, quantiles = _markers.profile_calibration(scores.likelihood, scores.totals, types[labelled], profiles,
                                                         ranks[0]["profile_quantiles"].shape[1])
    assert np.isfinite(centres).all()
    np.testing.assert_allclose(ranks[0]["profile_centres"], centres, rtol=1e-5)
    np.testing.assert_allclose(ranks[0]["profile_quantiles"], quantiles, rtol=1e-5, atol=1e-6)


def test_ranks_labelling_different_types_get_the_remedy(tmp_path):
    _torchrun(tmp_path, "classes-mismatch")
    for rank in (0, 1):
        message = (tmp_path / f"error{rank}.txt").read_text()
        assert "disagree on the classes" in message and "every rank needs labelled cells of every type" in message
        assert "classes=np.unique(all_labels)" in message


def test_batch_norm_statistics_are_the_same_on_every_rank(tmp_path):
    _torchrun(tmp_path, "batchnorm")
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in (0, 1)]
    assert any("running_mean" in key for key in ranks[0]["state"])
    for key, value in ranks[0]["state"].items():
        assert torch.equal(value, ranks[1]["state"][key]), key


def test_a_rank_that_fails_validation_and_stays_alive_stops_the_others_with_its_reason(tmp_path):
    _torchrun(tmp_path, "invalid")
    assert "NaN" in (tmp_path / "error1.txt").read_text()
    message = (tmp_path / "error0.txt").read_text()
    assert "Another process of this data-parallel run failed before training (rank 1: ValueError: " in message
    assert "NaN" in message


def test_a_rank_that_dies_during_training_gets_a_message_that_says_so_on_the_others(tmp_path):
    # torchrun reports the dead rank's exit code; it stops the living rank within its monitor interval (0.1 s by
    # default), which on a loaded machine can come before that rank has noticed and written its error
    result = _torchrun(tmp_path, "dead", succeeds=False, monitor_interval=5)
    message = (tmp_path / "error0.txt").read_text()
    assert message.startswith("Rank 0: another process of this data-parallel run stopped"), message
    assert "torchrun prints each rank's error" in message and "exitcode" in result.stderr.lower()


def _reference_and_query(folder):
    """A reference fitted in one process with batches a and b, saved; query cells of batch q on disk."""
    import anndata
    import scipy.sparse as sp

    X = np.abs(distributed_worker.data())
    reference = AutoencoderEmbedder(**distributed_worker.PARAMS).fit(X, batch=np.where(np.arange(100) % 2, "a", "b"))
    reference.save(folder / "reference.pt")
    query = anndata.AnnData(sp.csr_matrix(X[:50] * 1.5 + 0.5))
    query.obs["batch"] = "q"
    query.write_h5ad(folder / "query.h5ad")
    return reference, query


def test_map_query_under_torchrun_shards_a_query_on_disk_and_ends_identical_on_both_ranks(tmp_path):
    reference, query = _reference_and_query(tmp_path)
    _torchrun(tmp_path, "map-query")
    ranks = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=False) for rank in (0, 1)]
    for key, value in ranks[0]["state"].items():
        assert torch.equal(value, ranks[1]["state"][key]), key
    np.testing.assert_array_equal(ranks[0]["codes"], ranks[1]["codes"])
    # each rank trained on its share of the file: together, the global minibatches of one process on all of it
    single = AutoencoderEmbedder.load(tmp_path / "reference.pt")
    single.map_query(query.X.toarray(), batch=np.full(query.n_obs, "q"), max_epochs=2)
    for key, value in single.module_.state_dict().items():
        torch.testing.assert_close(ranks[0]["state"][key], value, rtol=1e-4, atol=1e-5)
    # the reference's own weights did not move (the query's offsets did)
    moved = [key for key, value in reference.module_.state_dict().items()
             if value.shape == ranks[0]["state"][key].shape and not torch.equal(value, ranks[0]["state"][key])]
    assert moved == []
    assert not torch.equal(ranks[0]["state"]["decoder.covariate_offsets.0.weight"][2],
                           single.module_.state_dict()["decoder.covariate_offsets.0.weight"][0])


def test_map_query_under_torchrun_reports_a_rank_whose_query_is_invalid_on_every_rank(tmp_path):
    _reference_and_query(tmp_path)
    _torchrun(tmp_path, "map-query-invalid")
    assert "NaN" in (tmp_path / "error1.txt").read_text()
    message = (tmp_path / "error0.txt").read_text()
    assert "Another process of this data-parallel run failed before training (rank 1: ValueError: " in message
    assert "NaN" in message
