"""Training and transform speed of the three embedders on PBMC3k, against a plain torch loop.

For each model, in one run on this machine:
- a plain, vectorised torch loop of the same network and loss (dense minibatches sliced from
  one tensor, ``torch.optim.Adam`` with its defaults): seconds per epoch and final loss;
- the estimator with ``algorithm="dense"`` and with the automatic (sparse) path: the same;
- the study metrics of the plain loop's and the fast path's codes (k-NN accuracy, silhouette,
  t-SNE + KMeans ARI with seed 0).
Then transform throughput on sparse input and one epoch on a synthetic 1,000,000 x 2,000
sparse matrix (5 % non-zero) with its peak memory, measured in a child process.

Count likelihoods: seconds per epoch of each model with each likelihood on PBMC3k's raw
counts (2,000 highly variable genes, and all 13,714), with the Gaussian models on the
scaled log-normalised data of the same genes, and scVI (when scvi-tools is installed: a
benchmark-only extra, ``pip install scvi-tools``) on the same counts, genes and batch size,
with its default likelihood (ZINB) and with ``gene_likelihood="nb"``. Seconds per epoch are
steady-state: the time of an ``E``-epoch fit minus that of a 1-epoch fit, over ``E - 1``, so
that set-up is left out for both tools; each time is the best of three fits, taken in rounds
over all the fits so that a slow spell of a shared machine falls on all of them alike.

Usage: python benchmarks/speed.py [--epochs 200] [--models ae,vae,vsc] [--skip-large]
       python benchmarks/speed.py --counts-only [--count-epochs 10]
"""

import argparse
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from skvae import AutoencoderEmbedder, BetaVAEEmbedder, BetaVSCEmbedder
from skvae.datasets import fetch_pbmc3k
from skvae.preprocessing import ClippedStandardScaler, HighlyVariableGenes, LogNormalizer
from skvae.study.evaluation import latent_scores, tsne_kmeans_scores

# Every core, as the plain torch loop and scVI use (torch's default): a like-for-like comparison on an idle machine.
THREADS = -1
MODELS = {"ae": (AutoencoderEmbedder, {}), "vae": (BetaVAEEmbedder, {"beta": 2.0}), "vsc": (BetaVSCEmbedder, {"beta": 2.0})}


def plain_torch_loop(module, X, *, beta, epochs, batch_size=256, learning_rate=1e-3, seed=0):
    """The reference: the same module and loss, trained by the loop one writes first."""
    torch.manual_seed(seed)
    data = torch.from_numpy(X)
    optimizer = torch.optim.Adam(module.parameters(), lr=learning_rate)
    start = time.perf_counter()
    for _ in range(epochs):
        total = 0.0
        for batch in torch.randperm(len(data)).split(batch_size):
            terms = module.loss(data[batch])
            loss = (terms.reconstruction + beta * terms.kl).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
    return (time.perf_counter() - start) / epochs, total / len(data)


def study_metrics(codes, labels):
    scores = latent_scores(codes, labels)
    ari = tsne_kmeans_scores(codes, labels, random_state=0)["ARI"]
    return f"kNN {scores['kNN accuracy']:.3f}, silhouette {scores['silhouette']:.3f}, t-SNE+KMeans ARI {ari:.3f}"


def peak_memory_mib():
    """This process's peak resident memory. ``VmHWM`` where Linux has it: ``ru_maxrss`` survives
    ``exec``, so in a child it would report the parent's peak."""
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM")) / 2**10
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10


def large_sparse_epoch():
    """One epoch on 1,000,000 x 2,000 cells at 5 % density; run in a child process for its peak memory."""
    n_cells, n_genes, per_cell = 1_000_000, 2_000, 100
    rng = np.random.default_rng(0)
    offsets = rng.integers(0, n_genes // per_cell, size=n_cells, dtype=np.int32)
    indices = (offsets[:, None] + np.arange(per_cell, dtype=np.int32) * (n_genes // per_cell)).ravel()
    data = np.exp(rng.standard_normal(indices.size, dtype=np.float32))
    X = sp.csr_matrix((data, indices, np.arange(0, indices.size + 1, per_cell, dtype=np.int64)), (n_cells, n_genes))
    del offsets, indices, data
    print(f"matrix: {n_cells} x {n_genes}, {X.nnz / (n_cells * n_genes):.0%} non-zero, "
          f"{(X.data.nbytes + X.indices.nbytes + X.indptr.nbytes) / 2**20:.0f} MiB as CSR; "
          f"process peak while building it {peak_memory_mib():.0f} MiB")
    try:  # Linux: restart the high-water mark so the figure below is the fit's own
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        pass
    start = time.perf_counter()
    BetaVSCEmbedder(max_epochs=1, random_state=0, n_jobs=THREADS).fit(X)
    print(f"one epoch of BetaVSCEmbedder: {time.perf_counter() - start:.1f} s, process peak during the fit "
          f"{peak_memory_mib():.0f} MiB (matrix, Python and torch included)")


def steady_seconds_per_epoch(fits, epochs, repeats=3):
    """``(time of fit(epochs) - time of fit(1)) / (epochs - 1)`` of each fit: per-epoch time without set-up.

    ``fits`` maps a label to a function fitting for a given number of epochs. Each time is
    the best of ``repeats`` (as timeit does: on a shared machine, other work only ever adds
    time), and the repeats go round all the fits in turn, so that a slow spell of the machine
    falls on every fit alike, not on whichever ran during it.
    """
    best = {label: {1: float("inf"), epochs: float("inf")} for label in fits}
    for _ in range(repeats):
        for label, fit in fits.items():
            for n in (1, epochs):
                start = time.perf_counter()
                fit(n)
                best[label][n] = min(best[label][n], time.perf_counter() - start)
    return {label: (times[epochs] - times[1]) / (epochs - 1) for label, times in best.items()}


def scvi_fit(counts, batch_size, **model_params):
    """A function fitting scVI with its defaults (and ``model_params``) for a given number of epochs."""
    import anndata
    import scvi

    def fit(epochs):
        adata = anndata.AnnData(counts.astype(np.float32))
        scvi.model.SCVI.setup_anndata(adata)
        model = scvi.model.SCVI(adata, **model_params)
        model.train(max_epochs=epochs, batch_size=batch_size, train_size=1.0, early_stopping=False,
                    accelerator="cpu", enable_progress_bar=False)

    return fit


def count_likelihood_speed(pbmc, *, epochs, batch_size=256):
    """Seconds per epoch of every model x likelihood, and of scVI, on the same genes and cells."""
    try:
        import scvi
        print(f"scvi-tools {scvi.__version__}")
    except ImportError:
        scvi = None
        print("scvi-tools is not installed (pip install scvi-tools): no scVI rows")
    hvg = HighlyVariableGenes(n_top_genes=2000).fit(pbmc.data)
    gene_sets = {"2,000 HVGs": hvg.get_support(), f"all {pbmc.data.shape[1]:,} genes": slice(None)}
    BetaVAEEmbedder(likelihood="nb", max_epochs=1, random_state=0).fit(pbmc.data[:, :50])  # torch warm-up
    for label, genes in gene_sets.items():
        counts = pbmc.data[:, genes].tocsr()
        scaled = ClippedStandardScaler().fit_transform(LogNormalizer().fit_transform(counts)).astype(np.float32)
        print(f"\n== {label}: {counts.shape[0]} cells x {counts.shape[1]} genes, batch {batch_size}, "
              f"{epochs} epochs; s/epoch (steady state)")
        fits = {}
        for cls, params in MODELS.values():
            for likelihood in ("gaussian", "poisson", "nb", "zinb"):
                def fit(n, cls=cls, params=params, likelihood=likelihood, X=scaled if likelihood == "gaussian" else counts):
                    cls(**params, likelihood=likelihood, max_epochs=n, batch_size=batch_size, random_state=0,
                        device="cpu", n_jobs=THREADS).fit(X)
                fits[cls.__name__, likelihood] = fit
        scvi_rows = {"scVI defaults (ZINB)": {}, "scVI gene_likelihood='nb'": {"gene_likelihood": "nb"}}
        if scvi is not None:
            fits.update({label: scvi_fit(counts, batch_size, **params) for label, params in scvi_rows.items()})
        seconds = steady_seconds_per_epoch(fits, epochs)
        for cls, _ in MODELS.values():
            cells = [f"{likelihood} {seconds[cls.__name__, likelihood]:.3f}" for likelihood in ("gaussian", "poisson", "nb", "zinb")]
            print(f"{cls.__name__:20s}: " + ", ".join(cells))
        for label in scvi_rows if scvi is not None else ():
            speedups = ", ".join(f"{cls.__name__} {seconds[label] / seconds[cls.__name__, 'nb']:.1f}x" for cls, _ in MODELS.values())
            print(f"{label:26s}: {seconds[label]:.3f}; skvae's NB models are faster by: {speedups}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--models", default="ae,vae,vsc")
    parser.add_argument("--skip-large", action="store_true", help="leave out the 1M-cell epoch")
    parser.add_argument("--large-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--counts-only", action="store_true", help="only the count-likelihood section")
    parser.add_argument("--skip-counts", action="store_true", help="leave out the count-likelihood section")
    parser.add_argument("--count-epochs", type=int, default=10, help="epochs per timing in the count section")
    args = parser.parse_args()
    if args.large_only:
        return large_sparse_epoch()

    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    cpu = next((line.split(":")[1].strip() for line in cpuinfo if "model name" in line), platform.machine())
    print(f"machine: {cpu}, {os.cpu_count()} cores, torch {torch.__version__} with {torch.get_num_threads()} threads")
    pbmc = fetch_pbmc3k()
    if args.counts_only:
        return count_likelihood_speed(pbmc, epochs=args.count_epochs)
    lognorm = LogNormalizer().fit_transform(pbmc.data)
    X = ClippedStandardScaler().fit_transform(lognorm).astype(np.float32)
    labels = pbmc.target
    print(f"data: PBMC3k scaled as the study did, {X.shape[0]} x {X.shape[1]} dense float32, "
          f"{np.mean(X != np.median(X, axis=0)):.1%} off each gene's background value; {args.epochs} epochs\n")

    for name in args.models.split(","):
        cls, params = MODELS[name]
        plain = cls(**params)._make_module(X.shape[1], (128, 32, 16))
        plain_seconds, plain_loss = plain_torch_loop(plain, X, beta=params.get("beta", 0.0), epochs=args.epochs)
        results = {}
        for algorithm in ("dense", "auto"):
            embedder = cls(**params, max_epochs=args.epochs, random_state=0, algorithm=algorithm, device="cpu",
                           n_jobs=THREADS)
            start = time.perf_counter()
            embedder.fit(X)
            results[algorithm] = (time.perf_counter() - start, embedder)
        dense_seconds, fast_seconds = results["dense"][0], results["auto"][0]
        fast = results["auto"][1]
        print(f"== {type(fast).__name__}")
        print(f"plain torch loop : {plain_seconds:.3f} s/epoch, {plain_seconds * args.epochs:6.1f} s, "
              f"final loss {plain_loss:.1f}")
        for label, (seconds, embedder) in (("skvae dense     ", results["dense"]), ("skvae fast path ", results["auto"])):
            print(f"{label} : {seconds / args.epochs:.3f} s/epoch, {seconds:6.1f} s, final loss "
                  f"{embedder.history_['loss'][-1]:.1f}, {plain_seconds * args.epochs / seconds:.2f}x the plain loop")
        print(f"fast path / dense: {dense_seconds / fast_seconds:.2f}x")
        with torch.no_grad():
            plain.eval()
            plain_codes = plain.embed(torch.from_numpy(X)).numpy()
        print(f"study metrics, plain loop: {study_metrics(plain_codes, labels)}")
        print(f"study metrics, fast path : {study_metrics(fast.transform(X), labels)}")

        many = sp.vstack([lognorm.astype(np.float32)] * 40).tocsr()
        fast.transform(many[:1000])
        start = time.perf_counter()
        fast.transform(many)
        print(f"transform, sparse input: {many.shape[0] / (time.perf_counter() - start):,.0f} cells/s "
              f"({many.shape[0]} cells)\n", flush=True)

    peak = peak_memory_mib()
    print(f"peak memory of this process: {peak:.0f} MiB")
    if not args.skip_counts:
        count_likelihood_speed(pbmc, epochs=args.count_epochs)
    if not args.skip_large:
        print("\n== 1,000,000-cell sparse epoch (child process)", flush=True)
        subprocess.run([sys.executable, __file__, "--large-only"], check=True)


if __name__ == "__main__":
    main()
