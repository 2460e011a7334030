"""Fingerprints of what every configuration computes, to check that a refactoring changes no result.

Fits each configuration (the three models, the four likelihoods, dense, sparse and backed input,
early stopping, KL warm-up, batch norm and dropout, partial_fit, and with ``--torchrun`` a 2-process
data-parallel fit) on small synthetic data with ``random_state=0`` and prints a SHA-256 of its codes,
reconstructions, score and training history. Run it on two trees and compare the files::

    PYTHONPATH=/path/to/old/tree python benchmarks/identity.py --out old.json --torchrun
    PYTHONPATH=. python benchmarks/identity.py --out new.json --torchrun
    python benchmarks/identity.py --compare old.json new.json

Equal fingerprints mean bit-identical results. Needs anndata (the backed cases).
"""

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import scipy.sparse as sp

SMALL = dict(n_components=3, hidden_layer_sizes=(16, 8), batch_size=32, max_epochs=3, random_state=0)


def counts_data():
    rng = np.random.RandomState(0)
    profiles = rng.gamma(0.4, 2.0, size=(3, 40))
    return rng.poisson(profiles[rng.randint(3, size=150)] * rng.uniform(0.5, 2.0, size=(150, 1))).astype(np.float64)


def scaled_data():
    counts = counts_data()
    logged = np.log1p(counts / np.maximum(counts.sum(1, keepdims=True), 1) * 1e4)
    return (logged - logged.mean(0)) / np.maximum(logged.std(0), 1e-8)


def fingerprint(estimator, X, batch=None, y=None):
    digest = hashlib.sha256()
    per_cell = {} if batch is None else {"batch": batch}
    codes = estimator.transform(X, **per_cell)
    digest.update(np.ascontiguousarray(codes).tobytes())
    digest.update(np.ascontiguousarray(estimator.inverse_transform(codes[:10], **(
        {} if batch is None else {"batch": batch[:10]}))).tobytes())
    digest.update(repr(estimator.score(X, **per_cell) if y is None else estimator.score(X, y, **per_cell)).encode())
    digest.update(json.dumps(estimator.history_, sort_keys=True).encode())
    for name in ("active_components_",):
        if hasattr(estimator, name):
            digest.update(np.asarray(getattr(estimator, name)).tobytes())
    return digest.hexdigest()[:16]


def in_process_cases(folder):
    import anndata

    from skvae import AutoencoderEmbedder, BetaVAEEmbedder, BetaVSCEmbedder

    models = {"ae": AutoencoderEmbedder, "vae": BetaVAEEmbedder, "vsc": BetaVSCEmbedder}
    counts, scaled = counts_data(), scaled_data()
    path = Path(folder, "counts.h5ad")
    anndata.AnnData(sp.csr_matrix(counts)).write_h5ad(path)
    backed = anndata.read_h5ad(path, backed="r").X
    results = {}
    for model, cls in models.items():
        variational = {} if model == "ae" else {"kl_warmup_epochs": 2}
        for likelihood in ("gaussian", "poisson", "nb", "zinb"):
            data = scaled if likelihood == "gaussian" else counts
            for layout, X in (("dense", data), ("sparse", sp.csr_matrix(data))):
                estimator = cls(**SMALL, likelihood=likelihood).fit(X)
                results[f"{model}/{likelihood}/{layout}"] = fingerprint(estimator, X)
            options = dict(likelihood=likelihood, batch_norm=True, dropout=0.1, early_stopping=True,
                           n_iter_no_change=1, **variational)
            estimator = cls(**SMALL, **options).fit(data)
            results[f"{model}/{likelihood}/recipe-like, early stopping"] = fingerprint(estimator, data)
        results[f"{model}/gaussian/algorithm=dense"] = fingerprint(cls(**SMALL, algorithm="dense").fit(scaled), scaled)
        for likelihood in ("gaussian", "nb"):
            estimator = cls(**SMALL, likelihood=likelihood, early_stopping=True, n_iter_no_change=1).fit(backed)
            results[f"{model}/{likelihood}/backed, early stopping"] = fingerprint(estimator, counts)
        for source, X in (("dense", counts), ("backed", backed)):
            estimator = cls(**SMALL, likelihood="nb", **variational)
            for _ in range(2):
                estimator.partial_fit(X)
            results[f"{model}/nb/partial_fit {source}"] = fingerprint(estimator, counts)
        # one batch column: decoder conditioning, the gated adversary, per-batch dispersion, an encoder that reads it
        batch = np.array(["b", "a", "c"])[np.arange(len(counts)) % 3]
        for name, options in (("batch", {}), ("batch, adversary", {"batch_adversary": 0.3}),
                              ("batch, gene-batch, encode_batch", {"dispersion": "gene-batch", "encode_batch": True,
                                                                   "batch_adversary": 1.0})):
            estimator = cls(**SMALL, likelihood="nb", **variational, **options).fit(counts, batch=batch)
            results[f"{model}/nb/{name}"] = fingerprint(estimator, counts, batch)
        estimator = cls(**SMALL, likelihood="nb", batch_adversary=0.3, **variational)
        for _ in range(2):
            estimator.partial_fit(backed, batch=batch)
        results[f"{model}/nb/batch, partial_fit backed"] = fingerprint(estimator, counts, batch)
        estimator = cls(**{**SMALL, "hidden_layer_sizes": (16,)}, batch_adversary=0.3, input_activation=True).fit(
            scaled, batch=batch)
        results[f"{model}/gaussian/batch, recipe encoder"] = fingerprint(estimator, scaled, batch)
        # map_query: new batches' rows learned with the reference frozen
        estimator = cls(**SMALL, likelihood="nb", batch_adversary=0.3, **variational).fit(
            counts[batch != "c"], batch=batch[batch != "c"])
        estimator.map_query(counts[batch == "c"], batch=np.array(["d", "e"])[np.arange((batch == "c").sum()) % 2],
                            max_epochs=2)
        results[f"{model}/nb/batch, map_query"] = fingerprint(estimator, counts[batch != "c"], batch[batch != "c"])
    results.update(classifier_cases(counts, batch))
    return results


def classifier_cases(counts, batch):
    """The label-transfer classifier: fit with unlabelled cells, partial_fit, batches and an adversary, map_query."""
    from skvae import BetaVAEClassifier

    types = np.array(["t0", "t1", "t2"], dtype=object)[np.arange(len(counts)) % 3]
    y = np.where(np.arange(len(counts)) % 4 == 0, None, types)
    results = {}

    def classified(estimator, X, batch=None):
        per_cell = {} if batch is None else {"batch": batch}
        digest = hashlib.sha256(fingerprint(estimator, X, batch, y=types).encode())
        digest.update(np.ascontiguousarray(estimator.predict_proba(X, **per_cell)).tobytes())
        digest.update(np.ascontiguousarray(estimator.typicality(X, **per_cell)).tobytes())
        return digest.hexdigest()[:16]

    options = dict(SMALL, likelihood="nb", kl_warmup_epochs=2)
    results["classifier/nb"] = classified(BetaVAEClassifier(**options).fit(counts, y), counts)
    estimator = BetaVAEClassifier(**options, batch_adversary=0.3, classification_weight=2.0).fit(counts, y, batch=batch)
    results["classifier/nb/batch, adversary"] = classified(estimator, counts, batch)
    estimator = BetaVAEClassifier(**options, batch_adversary=0.3, early_stopping=True, n_iter_no_change=1).fit(
        counts, y, batch=batch)
    results["classifier/nb/batch, adversary, early stopping"] = classified(estimator, counts, batch)
    estimator = BetaVAEClassifier(**options)
    for _ in range(2):
        estimator.partial_fit(counts, y, classes=types[:3])
    results["classifier/nb/partial_fit"] = classified(estimator, counts)
    reference = batch != "c"
    estimator = BetaVAEClassifier(**options, batch_adversary=0.3).fit(counts[reference], y[reference],
                                                                      batch=batch[reference])
    estimator.map_query(counts[~reference], batch=np.full((~reference).sum(), "q"), max_epochs=2)
    results["classifier/nb/map_query"] = classified(estimator, counts, np.where(reference, batch, "q"))
    return results


TORCHRUN_WORKER = """
import os, sys, json
import anndata, numpy as np
sys.path.insert(0, {bench!r})
from identity import counts_data, fingerprint, SMALL
from skvae import BetaVAEEmbedder, AutoencoderEmbedder
import torch
rank = int(os.environ["RANK"])
counts = counts_data()
out = {{}}
shard = counts[:70] if rank == 0 else counts[70:]
est = BetaVAEEmbedder(**SMALL, likelihood="nb", batch_norm=True, kl_warmup_epochs=2).fit(shard)
out["torchrun/vae/nb/memory"] = fingerprint(est, counts)
est = AutoencoderEmbedder(**SMALL, likelihood="gaussian", algorithm="dense").fit(np.log1p(shard))
out["torchrun/ae/gaussian/memory"] = fingerprint(est, np.log1p(counts))
est = BetaVAEEmbedder(**SMALL, likelihood="nb", early_stopping=True, n_iter_no_change=1).fit(
    anndata.read_h5ad({path!r}, backed="r").X)
out["torchrun/vae/nb/backed"] = fingerprint(est, counts)
batch = np.array(["b", "a", "c"])[np.arange(len(counts)) % 3]
est = BetaVAEEmbedder(**SMALL, likelihood="nb", batch_adversary=0.3, dispersion="gene-batch").fit(
    shard, batch=batch[:70] if rank == 0 else batch[70:])
out["torchrun/vae/nb/batch, adversary"] = fingerprint(est, counts, batch)
if rank == 0:
    with open({result!r}, "w") as f:
        json.dump(out, f)
torch.distributed.barrier()
torch.distributed.destroy_process_group()
"""


def torchrun_cases(folder):
    import anndata

    path = Path(folder, "shared.h5ad")
    anndata.AnnData(sp.csr_matrix(counts_data())).write_h5ad(path)
    worker, result = Path(folder, "worker.py"), Path(folder, "torchrun.json")
    worker.write_text(TORCHRUN_WORKER.format(bench=str(Path(__file__).parent), path=str(path), result=str(result)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
                    "--master_port=29533", str(worker)], check=True, env=env, capture_output=True)
    return json.loads(result.read_text())


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="write the fingerprints to this JSON file")
    parser.add_argument("--torchrun", action="store_true", help="also the 2-process data-parallel cases")
    parser.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"), help="compare two fingerprint files")
    args = parser.parse_args()
    if args.compare:
        before, after = (json.loads(Path(name).read_text()) for name in args.compare)
        differ = sorted(key for key in before.keys() | after.keys() if before.get(key) != after.get(key))
        print(f"{len(before)} / {len(after)} configurations; {len(differ)} differ")
        for key in differ:
            print(f"  {key}: {before.get(key)} -> {after.get(key)}")
        sys.exit(1 if differ else 0)
    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory() as folder:
        results = in_process_cases(folder)
        if args.torchrun:
            results.update(torchrun_cases(folder))
    for key, value in results.items():
        print(f"{value}  {key}")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
