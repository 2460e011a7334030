"""Training time with each thread setting, alone and beside a competing CPU-bound process.

A busy machine is the common case (a laptop, a shared node). For ``n_jobs`` in 1, 2 and
-1 (every core), this times the study's beta-VAE (PBMC3k, scaled, all genes) on a quiet
machine and again while another process spins on one core, and prints the seconds per
epoch and their ratio. Threads beyond the idle cores wait on each other: the ratio says
how gracefully each setting degrades. The default, ``n_jobs=None``, is 1 thread.
Seconds per epoch are steady-state, ``(time of E epochs - time of 1 epoch) / (E - 1)``:
the one-off set-up (examining and converting the dense input) is left out.

Usage: python benchmarks/threads.py [--epochs 10]
"""

import argparse
import os
import subprocess
import sys
import time

import numpy as np
import torch

from skvae import BetaVAEEmbedder
from skvae.datasets import fetch_pbmc3k
from skvae.preprocessing import ClippedStandardScaler, LogNormalizer


def fit_seconds(X, n_jobs, epochs):
    start = time.perf_counter()
    BetaVAEEmbedder(beta=2.0, max_epochs=epochs, random_state=0, n_jobs=n_jobs, device="cpu").fit(X)
    return time.perf_counter() - start


def seconds_per_epoch(X, n_jobs, epochs):
    return (fit_seconds(X, n_jobs, epochs) - fit_seconds(X, n_jobs, 1)) / (epochs - 1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} cores, torch {torch.__version__} (default {torch.get_num_threads()} threads)")
    pbmc = fetch_pbmc3k()
    X = ClippedStandardScaler().fit_transform(LogNormalizer().fit_transform(pbmc.data)).astype(np.float32)
    print(f"data: PBMC3k scaled, {X.shape[0]} x {X.shape[1]}; BetaVAEEmbedder(beta=2), {args.epochs} epochs "
          "against 1\n")
    fit_seconds(X, 1, 1)  # torch's first-call set-up, outside every timing
    print(f"{'n_jobs':>8} {'quiet (s/epoch)':>16} {'busy (s/epoch)':>15} {'busy / quiet':>13}")
    for n_jobs in (1, 2, -1):
        quiet = seconds_per_epoch(X, n_jobs, args.epochs)
        competitor = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        try:
            time.sleep(0.5)  # let it take its core
            busy = seconds_per_epoch(X, n_jobs, args.epochs)
        finally:
            competitor.kill()
            competitor.wait()
        print(f"{n_jobs:>8} {quiet:>16.3f} {busy:>15.3f} {busy / quiet:>13.2f}", flush=True)


if __name__ == "__main__":
    main()
