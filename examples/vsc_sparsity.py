"""Read the sparse codes of BetaVSCEmbedder: which latent dimensions each cell type uses.

``spike_probabilities`` gives, per cell, the probability that each latent
dimension is active; averaged per cell type it shows which dimensions describe
which cells. Prints the table and saves ``vsc_sparsity.png``. ``--quick``: 3 epochs.
"""

import argparse

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from sklearn.pipeline import make_pipeline

from skvae import BetaVSCEmbedder
from skvae.datasets import fetch_pbmc3k
from skvae.study.plotting import plot_spike_probabilities
from skvae.preprocessing import ClippedStandardScaler, LogNormalizer

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--quick", action="store_true", help="3 epochs, for a smoke test")
args = parser.parse_args()

pbmc = fetch_pbmc3k()
cell_types = pbmc.target_names[pbmc.target]
X = make_pipeline(LogNormalizer(), ClippedStandardScaler()).fit_transform(pbmc.data).astype(np.float32)
vsc = BetaVSCEmbedder(beta=2, prior_activity=0.5, max_epochs=3 if args.quick else 200, random_state=0).fit(X)

gamma = vsc.spike_probabilities(X)
table = pd.DataFrame(gamma, columns=[f"dim {i + 1}" for i in range(gamma.shape[1])]).groupby(cell_types).mean()
print("Mean probability that each latent dimension is active, per cell type:")
print(table.round(2).to_string())
print(f"Share of (cell, dimension) pairs active (gamma > 0.5): {(gamma > 0.5).mean():.2f}")

ax = plot_spike_probabilities(gamma, cell_types)
ax.figure.savefig("vsc_sparsity.png", dpi=110, bbox_inches="tight")
plt.close(ax.figure)
