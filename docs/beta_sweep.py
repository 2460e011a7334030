"""Draw _static/beta_sweep.png for the user guide: what beta does to a beta-VAE."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np

from skvae import BetaVAEEmbedder

BETAS = [0.1, 0.5, 1.0, 2.0, 4.0, 8.0]


def draw_beta_sweep(path):
    """Fit a beta-VAE per beta on three synthetic groups; plot the final loss terms to ``path``."""
    rng = np.random.RandomState(0)
    centres = rng.normal(0, 2, size=(3, 60))
    X = np.vstack([c + rng.normal(size=(200, 60)) for c in centres])
    reconstruction, kl = [], []
    for beta in BETAS:
        history = BetaVAEEmbedder(n_components=4, beta=beta, max_epochs=40, random_state=0).fit(X).history_
        reconstruction.append(history["reconstruction"][-1])
        kl.append(history["kl"][-1])
    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5), layout="constrained")
    left.plot(BETAS, reconstruction, "o-")
    left.set(xscale="log", xlabel="beta", ylabel="squared error per cell", title="Reconstruction")
    right.plot(BETAS, kl, "o-", color="tab:orange")
    right.set(xscale="log", xlabel="beta", ylabel="KL per cell (nats)", title="KL divergence from the prior")
    figure.suptitle("beta-VAE on synthetic data (3 groups, 60 features), 40 epochs")
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
