"""One rank of the data-parallel tests in test_distributed.py, started by torchrun (not a test module).

Usage: python -m torch.distributed.run --nproc_per_node=2 tests/distributed_worker.py OUT MODE
MODE "train": each rank fits an autoencoder on its half of a fixed data set and saves its weights;
MODE "mismatch": rank 1 has one feature more, and each rank writes the error it got;
MODE "batches": as "train", with each cell's batch (both ranks hold both batches);
MODE "batch-mismatch": rank 1 holds a batch rank 0 does not, and each rank writes the error it got;
MODE "covariates": as "batches", with two named columns (sample and technology) and the batch adversary;
MODE "classifier": a BetaVAEClassifier with batches, each rank's cells partly labelled (its types' Gaussians must
come from every rank's labelled cells);
MODE "classifier-counts": as "classifier" on counts (a Poisson model), saving the types' marker genes too;
MODE "classes-mismatch": a BetaVAEClassifier whose rank 1 labels a type rank 0 lacks; each rank writes its error;
MODE "classifier-gate": a BetaVAEClassifier with the batch adversary, labelled as ``gate_labels`` says (rank 1 labels
no cell of batch "b"), saving the table of the types the adversary may mix (it must come from every rank's labels);
MODE "batchnorm": as "train", with batch normalisation (its running statistics must agree too);
MODE "invalid": rank 1's rows hold a NaN; it catches its error and stays alive, as in a notebook, and each
rank writes the error it got (none waits in a collective);
MODE "dead": rank 1 dies during training (its process ends); rank 0 writes the error it got;
MODE "map-query": both ranks load the reference saved in OUT/reference.pt and map the query of OUT/query.h5ad (a
matrix on disk, which each rank reads its share of) onto it, then save the weights and the query's codes;
MODE "map-query-invalid": as "map-query" from memory, rank 1's query holding a NaN; each rank writes its error.
"""

import os
import sys
from pathlib import Path

import numpy as np
import torch

from skvae import AutoencoderEmbedder, BetaVAEClassifier, _markers

PARAMS = dict(n_components=2, hidden_layer_sizes=(16, 8), batch_size=32, max_epochs=3, learning_rate=1e-2,
              random_state=0, algorithm="dense")


def data():
    rng = np.random.RandomState(0)
    return rng.normal(size=(100, 12)) + 3.0 * rng.randint(2, size=(100, 1))


def counts(X):
    """Whole non-negative numbers from ``data()``'s values (for a model of counts)."""
    return np.round(np.abs(X) * 3.0)


def gate_labels(X, rows):
    """The cells' batches and labels of MODE "classifier-gate": the types follow the data's two groups; "high" is
    labelled in batch "a" only, and the cells of rows 60-99 (rank 1) are labelled in batch "a" only."""
    batch = np.where(rows % 2 == 0, "a", "b")
    types = np.where(X[:, 0] > 1.5, "high", "low").astype(object)
    types[(batch == "b") & ((types == "high") | (rows >= 60))] = None
    return batch, types


def main(out, mode):
    rank = int(os.environ["RANK"])
    X = data()
    shard = X[:60] if rank == 0 else X[60:]  # unequal shards: rank 0 holds rows 0-59, rank 1 rows 60-99
    if mode == "mismatch" and rank == 1:
        shard = np.hstack([shard, np.zeros((len(shard), 1))])
    batch = None
    if mode.startswith("batch"):
        batch = np.where(np.arange(len(shard)) % 2 == 0, "a", "b")
        if mode == "batch-mismatch" and rank == 1:
            batch[0] = "c"
    if mode == "covariates":
        rows = np.arange(len(shard)) + (0 if rank == 0 else 60)
        batch = {"sample": np.array(["s1", "s2", "s3"])[rows % 3], "technology": np.where(rows % 3 == 2, "y", "x")}
    if mode == "invalid" and rank == 1:
        shard = shard.copy()
        shard[0, 0] = np.nan
    params = {**PARAMS, "batch_norm": True} if mode == "batchnorm" else PARAMS
    if mode == "covariates":
        params = {**PARAMS, "batch_adversary": 0.3}
    if mode == "dead" and rank == 1:
        import skvae.train.loop

        original = skvae.train.loop.kl_warmup_weight

        def die_in_the_second_epoch(epoch, *args):
            if epoch == 2:
                os._exit(3)  # as a killed process: no exception, no clean-up
            return original(epoch, *args)

        skvae.train.loop.kl_warmup_weight = die_in_the_second_epoch
    if mode.startswith("map-query"):
        map_query(out, mode, rank)
        return
    if mode == "classifier-gate":
        batch, types = gate_labels(shard, np.arange(len(shard)) + (0 if rank == 0 else 60))
        estimator = BetaVAEClassifier(**PARAMS, batch_adversary=0.3).fit(shard, types, batch=batch)
        torch.save({"types": estimator._adversary_types}, Path(out, f"rank{rank}.pt"))
        return
    if mode == "classifier-counts":
        shard = counts(shard)
    if mode in ("classifier", "classes-mismatch", "classifier-counts"):
        rows = np.arange(len(shard)) + (0 if rank == 0 else 60)
        batch = np.where(rows % 2 == 0, "a", "b")
        # the types follow the data's two groups; rank 0 labels a third of its cells, rank 1 two thirds
        types = np.where(shard[:, 0] > (4.5 if mode == "classifier-counts" else 1.5), "high", "low").astype(object)
        types[rows % 3 == (0 if rank == 0 else 1)] = None
        if mode == "classes-mismatch":
            if rank == 1:
                types[:5] = "other"
            try:
                BetaVAEClassifier(**PARAMS).fit(shard, types, batch=batch)
            except ValueError as exc:
                Path(out, f"error{rank}.txt").write_text(str(exc))
            return
        likelihood = "poisson" if mode == "classifier-counts" else "gaussian"
        _markers.MIN_CELLS = 10  # this small set's types tested (the profile test's calibration gathered)
        estimator = BetaVAEClassifier(**PARAMS, likelihood=likelihood).fit(shard, types, batch=batch)
        torch.save({"state": estimator.module_.state_dict(), "means": estimator.class_means_,
                    "quantiles": estimator.class_distance_quantiles_, "markers": estimator.class_markers_,
                    "expression": estimator.class_expression_, "shares": estimator.class_marker_shares_,
                    "gene_shares": estimator.class_shares_, "profile_centres": estimator.class_profile_centres_,
                    "profile_quantiles": estimator.class_profile_quantiles_},
                   Path(out, f"rank{rank}.pt"))
        return
    try:
        estimator = AutoencoderEmbedder(**params).fit(shard, batch=batch)
    except (ValueError, RuntimeError) as exc:
        Path(out, f"error{rank}.txt").write_text(str(exc))
        if mode == "dead":
            os._exit(0)  # the group cannot be closed cleanly without its dead peer
        return
    torch.save({"state": estimator.module_.state_dict(), "loss": estimator.history_["loss"],
                "categories": {name: list(values) for name, values in estimator.batch_categories_.items()}
                if isinstance(estimator.batch_categories_, dict) else None}, Path(out, f"rank{rank}.pt"))


def map_query(out, mode, rank):
    import anndata

    reference = AutoencoderEmbedder.load(Path(out, "reference.pt"))
    query = anndata.read_h5ad(Path(out, "query.h5ad"), backed="r")
    if mode == "map-query-invalid":
        X = query.X[:20].toarray() if rank == 0 else query.X[20:].toarray()
        if rank == 1:
            X[0, 0] = np.nan
        try:
            reference.map_query(X, batch=np.full(len(X), "q"), max_epochs=2)
        except ValueError as exc:
            Path(out, f"error{rank}.txt").write_text(str(exc))
        return
    reference.map_query(query.X, batch=query.obs["batch"].to_numpy(), max_epochs=2)
    torch.save({"state": reference.module_.state_dict(),
                "codes": reference.transform(query.X, batch=query.obs["batch"].to_numpy())}, Path(out, f"rank{rank}.pt"))


if __name__ == "__main__":
    try:
        main(sys.argv[1], sys.argv[2])
    finally:
        if torch.distributed.is_initialized():  # fit initialised the group from torchrun's variables
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()
