"""Scale: training from a backed h5ad larger than memory needs, and data-parallel training with torchrun.

1. ``--part disk``: a synthetic 1,000,000 x 2,000 count matrix (about 5 % non-zero:
   negative-binomial counts, dispersion 2, of 8 latent groups with their own gene means,
   and log-normal library sizes) is written once to an h5ad file in ``--workdir``. The
   recommended count model (``make_count_embedder()``'s embedder with its defaults, the
   "auto" budget included; the matrix has 2,000 genes already, so the gene selection is
   left out; every core) is then fitted and its codes computed in a child process from
   the matrix in memory (``read_h5ad``), and in another from the backed file
   (``read_h5ad(backed="r")``): wall time from fit to codes, the epochs the budget
   resolved to, seconds per epoch, peak resident memory and the final loss of each. In
   the same run, when installed (benchmark-only extras): scanpy's ``sc.pp.pca`` of the
   log-normalised matrix in memory, and one epoch of scVI's defaults times the number of
   epochs its own heuristic gives for this many cells.
   With ``--modes recipe-memory,recipe`` (and ``--genes 4000``, say, so that the
   selection has genes to leave out): the whole ``make_count_embedder()``, its gene
   selection included, fitted from the matrix in memory and from the backed file (the
   selection streams over the file in two passes of bounded blocks of rows, the
   embedder reads the selected genes a minibatch at a time): the same figures, the
   genes each selected and how many differ.
2. ``--part torchrun``: PBMC3k's 2,000 highly variable genes (raw counts), the same
   count model for ``--epochs`` epochs with the same global minibatch of 256 cells, in one
   process (2 threads) and in two processes started by ``torchrun --nproc_per_node=2``
   (gloo, 1 thread each, each holding half of the cells): final training loss, 15-NN
   accuracy of the codes against the cell types, and throughput (cells x epochs / s).

3. ``--part convergence`` (not run by default; needs the file of part 1): the same model in
   memory with 1 % of the cells held out, trained for ``--multiples`` times the auto budget's
   epochs (KL warm-up over the first half, as "auto"): the held-out loss (minus the ELBO per
   cell, KL weight 1) after every epoch, to see whether the auto budget has converged.

Usage: python benchmarks/scale.py [--part disk,torchrun,convergence] [--workdir /tmp/skvae-scale]
                                  [--cells 1000000] [--genes 2000] [--modes memory,backed,recipe-memory,recipe]
                                  [--epochs 100] [--multiples 1,2]
"""

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

HERE = Path(__file__).resolve()


def peak_memory_mib():
    """This process's peak resident memory (``VmHWM``)."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 2**10


def count_model(**overrides):
    from skvae import BetaVAEEmbedder
    from skvae.recipes import RECOMMENDED_COUNT_SETTINGS

    return BetaVAEEmbedder(**{**RECOMMENDED_COUNT_SETTINGS, "random_state": 0, **overrides})


def write_synthetic(path, n_cells, n_genes=2000, n_groups=8, chunk=20_000, seed=0):
    """Negative-binomial counts with latent groups, about 5 % non-zero, written to ``path`` as CSR."""
    import anndata

    rng = np.random.default_rng(seed)
    # per-group gene means around 0.05 counts per cell: with libraries around 1, ~5 % of entries are non-zero
    base = rng.gamma(0.6, 0.06 / 0.6, size=n_genes)
    means = base * rng.lognormal(0.0, 1.0, size=(n_groups, n_genes))
    theta = 2.0
    blocks = []
    for start in range(0, n_cells, chunk):
        n = min(chunk, n_cells - start)
        groups = rng.integers(n_groups, size=n)
        library = rng.lognormal(0.0, 0.3, size=(n, 1)).astype(np.float32)
        mean = (library * means[groups]).astype(np.float32)
        rate = rng.standard_gamma(theta, size=mean.shape, dtype=np.float32) * (mean / theta)
        blocks.append(sp.csr_matrix(rng.poisson(rate).astype(np.float32)))
    X = sp.vstack(blocks, format="csr")
    anndata.AnnData(X).write_h5ad(path)
    return X.nnz / (X.shape[0] * X.shape[1])


def child_disk(path, mode):
    """The default recommendation from the matrix in memory or on disk, fit to codes; prints a JSON line.

    ``mode``: "memory" / "backed" (the embedder alone, every gene), "recipe-memory" / "recipe" (the whole
    ``make_count_embedder()``, its gene selection included).
    """
    import anndata

    from skvae import make_count_embedder

    start = time.perf_counter()
    adata = anndata.read_h5ad(path, backed="r" if mode in ("backed", "recipe") else None)
    read_seconds = time.perf_counter() - start
    recipe = mode.startswith("recipe")
    estimator = make_count_embedder(n_jobs=-1, random_state=0) if recipe else count_model(n_jobs=-1)
    start = time.perf_counter()
    if recipe:
        estimator["genes"].fit(adata.X)
        selection_seconds = time.perf_counter() - start
        embedder = estimator["embedder"].fit(estimator["genes"].transform(adata.X))
    else:
        selection_seconds, embedder = 0.0, estimator.fit(adata.X)
    fit_seconds = time.perf_counter() - start
    codes = estimator.transform(adata.X)
    seconds = time.perf_counter() - start
    genes = np.flatnonzero(estimator["genes"].get_support()).tolist() if recipe else None
    print(json.dumps({"mode": mode, "read s": read_seconds, "selection s": selection_seconds, "fit s": fit_seconds,
                      "fit to codes s": seconds, "epochs": embedder.max_epochs_,
                      "s/epoch": (fit_seconds - selection_seconds) / embedder.n_iter_, "peak MiB": peak_memory_mib(),
                      "loss": embedder.history_["loss"][-1], "codes": list(codes.shape), "genes": genes}))


def child_convergence(path, multiple):
    """The recommendation in memory with ``multiple`` times the auto budget's epochs, 1 % of the cells held out."""
    import anndata

    from skvae.train.loop import epochs_for

    X = anndata.read_h5ad(path).X
    held_out = 0.01
    epochs = epochs_for(round(X.shape[0] * (1 - held_out))) * int(multiple)
    # early stopping only for its held-out loss each epoch: it never stops before max_epochs here
    estimator = count_model(n_jobs=-1, max_epochs=epochs, early_stopping=True, validation_fraction=held_out,
                            n_iter_no_change=10**6)
    start = time.perf_counter()
    estimator.fit(X)
    print(json.dumps({"multiple": int(multiple), "epochs": estimator.n_iter_, "warm-up": estimator.kl_warmup_epochs_,
                      "fit s": time.perf_counter() - start, "val_loss": estimator.history_["val_loss"]}))


def part_convergence(workdir, n_cells, multiples):
    path = Path(workdir) / f"synthetic_{n_cells}x2000.h5ad"
    if not path.exists():
        raise SystemExit(f"{path} is missing: run --part disk first, which writes it")
    for multiple in multiples:  # one at a time: never two trainings at once
        output = subprocess.run([sys.executable, str(HERE), "--child-convergence", str(path), str(multiple)],
                                capture_output=True, text=True, check=True).stdout
        result = json.loads(output.strip().splitlines()[-1])
        curve = ", ".join(f"{value:.2f}" for value in result["val_loss"])
        print(f"{result['multiple']} x the auto budget: {result['epochs']} epochs (KL warm-up {result['warm-up']}), "
              f"fit {result['fit s'] / 60:.1f} min; held-out loss (-ELBO per cell) by epoch: {curve}", flush=True)


def child_scanpy(path):
    """scanpy's PCA of the log-normalised matrix in memory; prints a JSON line (nothing without scanpy)."""
    try:
        import scanpy as sc
    except ImportError:
        return
    adata = sc.read_h5ad(path)
    start = time.perf_counter()
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    sc.pp.pca(adata, n_comps=50)
    print(json.dumps({"scanpy": sc.__version__, "pca s": time.perf_counter() - start, "peak MiB": peak_memory_mib()}))


def child_scvi(path):
    """One epoch of scVI's defaults and its own epoch heuristic; prints a JSON line (nothing without scvi-tools)."""
    try:
        import scvi
    except ImportError:
        return
    import anndata

    adata = anndata.read_h5ad(path)
    scvi.settings.seed = 0
    scvi.model.SCVI.setup_anndata(adata)
    model = scvi.model.SCVI(adata)
    start = time.perf_counter()
    model.train(max_epochs=1, accelerator="cpu", enable_progress_bar=False)
    epoch = time.perf_counter() - start
    heuristic = min(round(20_000 / adata.n_obs * 400), 400)  # scvi-tools' get_max_epochs_heuristic
    print(json.dumps({"scvi": scvi.__version__, "epoch s": epoch, "epochs": heuristic, "peak MiB": peak_memory_mib()}))


def part_disk(workdir, n_cells, n_genes=2000, modes=("memory", "backed")):
    path = Path(workdir) / f"synthetic_{n_cells}x{n_genes}.h5ad"
    if not path.exists():
        Path(workdir).mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        density = write_synthetic(path.with_suffix(".partial"), n_cells, n_genes)
        path.with_suffix(".partial").rename(path)
        print(f"wrote {path} ({path.stat().st_size / 2**30:.2f} GiB, {density:.1%} non-zero) in "
              f"{time.perf_counter() - start:.0f} s")
    results = {}
    for mode in modes:  # one at a time: never two trainings at once
        output = subprocess.run([sys.executable, str(HERE), "--child-disk", str(path), mode], capture_output=True,
                                text=True, check=True).stdout
        results[mode] = result = json.loads(output.strip().splitlines()[-1])
        selection = f"gene selection {result['selection s']:.0f} s, " if mode.startswith("recipe") else ""
        print(f"{mode:13s}: read {result['read s']:.1f} s; fit to codes {result['fit to codes s']:.0f} s "
              f"({result['fit to codes s'] / 60:.1f} min: {selection}{result['epochs']} epochs ('auto'), "
              f"{result['s/epoch']:.1f} s/epoch); peak memory {result['peak MiB']:.0f} MiB; loss {result['loss']:.2f}",
              flush=True)
    for memory, disk in (("memory", "backed"), ("recipe-memory", "recipe")):
        if memory in results and disk in results:
            ratio = results[disk]["s/epoch"] / results[memory]["s/epoch"]
            print(f"{disk} / {memory}: {ratio:.2f}x the epoch time (goal: at most 1.2x); {disk} peak memory "
                  f"{results[disk]['peak MiB']:.0f} MiB (goal: under 1024 MiB)")
    if "recipe-memory" in results and "recipe" in results:
        differ = set(results["recipe"]["genes"]) ^ set(results["recipe-memory"]["genes"])
        print(f"genes selected from the file and in memory: {len(results['recipe']['genes'])} each, "
              f"{len(differ)} differ")
    if "memory" not in modes:
        return
    for child in ("--child-scanpy", "--child-scvi"):  # benchmark-only extras: silent when not installed
        output = subprocess.run([sys.executable, str(HERE), child, str(path)], capture_output=True, text=True,
                                check=True).stdout.strip()
        if not output:
            print(f"[skip] {child[8:]}: not installed")
            continue
        result = json.loads(output.splitlines()[-1])
        if "pca s" in result:
            print(f"scanpy {result['scanpy']} normalize_total + log1p + pca(50) in memory: {result['pca s']:.0f} s, "
                  f"peak memory {result['peak MiB']:.0f} MiB")
        else:
            print(f"scVI {result['scvi']} defaults: one epoch {result['epoch s']:.0f} s x {result['epochs']} epochs "
                  f"(its heuristic) = {result['epoch s'] * result['epochs'] / 60:.0f} min; peak memory "
                  f"{result['peak MiB']:.0f} MiB")


def pbmc3k_counts():
    from skvae.datasets import fetch_pbmc3k
    from skvae.preprocessing import HighlyVariableGenes

    data = fetch_pbmc3k(os.environ.get("SKVAE_DATA"), download_if_missing=False)
    return HighlyVariableGenes(2000).fit_transform(data.data), np.asarray(data.target_names)[data.target]


def child_torchrun(out, epochs):
    """One rank: fit on its half of PBMC3k; rank 0 writes the codes of all cells and the history."""
    import torch.distributed as dist

    X, _ = pbmc3k_counts()
    rank = int(os.environ["RANK"])
    half = X.shape[0] // 2
    estimator = count_model(max_epochs=epochs, n_jobs=1)
    start = time.perf_counter()
    estimator.fit(X[:half] if rank == 0 else X[half:])
    seconds = time.perf_counter() - start
    if rank == 0:
        np.save(Path(out) / "codes.npy", estimator.transform(X))
        Path(out, "result.json").write_text(json.dumps({"seconds": seconds, "loss": estimator.history_["loss"]}))
    dist.barrier()
    dist.destroy_process_group()


def part_torchrun(workdir, epochs):
    from skvae.study.evaluation import latent_scores

    X, labels = pbmc3k_counts()
    estimator = count_model(max_epochs=epochs, n_jobs=2)
    start = time.perf_counter()
    codes = estimator.fit_transform(X)
    single = {"seconds": time.perf_counter() - start, "loss": estimator.history_["loss"][-1],
              "kNN": latent_scores(codes, labels)["kNN accuracy"]}
    out = Path(workdir) / "torchrun"
    out.mkdir(parents=True, exist_ok=True)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
                    f"--master_port={port}", str(HERE), "--child-torchrun", str(out), str(epochs)],
                   check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    result = json.loads((out / "result.json").read_text())
    double = {"seconds": result["seconds"], "loss": result["loss"][-1],
              "kNN": latent_scores(np.load(out / "codes.npy"), labels)["kNN accuracy"]}
    for name, run in (("1 process, 2 threads", single), ("torchrun, 2 processes x 1 thread", double)):
        print(f"{name:34s}: final loss {run['loss']:.2f}, 15-NN accuracy {run['kNN']:.3f}, "
              f"{X.shape[0] * epochs / run['seconds']:.0f} cells x epochs / s ({run['seconds']:.0f} s)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", default="disk,torchrun")
    parser.add_argument("--workdir", default="/tmp/skvae-scale")
    parser.add_argument("--cells", type=int, default=1_000_000)
    parser.add_argument("--genes", type=int, default=2000, help="--part disk: genes of the synthetic matrix")
    parser.add_argument("--modes", default="memory,backed,recipe-memory,recipe",
                        help="--part disk: the embedder alone (memory, backed) and the whole recipe (recipe-memory, "
                             "recipe: from the file)")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--multiples", default="1,2", help="--part convergence: multiples of the auto budget")
    parser.add_argument("--child-disk", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--child-convergence", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--child-torchrun", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--child-scanpy", help=argparse.SUPPRESS)
    parser.add_argument("--child-scvi", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_disk:
        return child_disk(*args.child_disk)
    if args.child_convergence:
        return child_convergence(*args.child_convergence)
    if args.child_scanpy:
        return child_scanpy(args.child_scanpy)
    if args.child_scvi:
        return child_scvi(args.child_scvi)
    if args.child_torchrun:
        return child_torchrun(args.child_torchrun[0], int(args.child_torchrun[1]))
    import torch

    print(f"torch {torch.__version__}, {platform.machine()}, {os.cpu_count()} cores")
    parts = args.part.split(",")
    if "disk" in parts:
        part_disk(args.workdir, args.cells, args.genes, args.modes.split(","))
    if "torchrun" in parts:
        part_torchrun(args.workdir, args.epochs)
    if "convergence" in parts:
        part_convergence(args.workdir, args.cells, [int(value) for value in args.multiples.split(",")])


if __name__ == "__main__":
    main()
