"""BetaVSCEmbedder inside a scikit-learn Pipeline, followed by t-SNE, on PBMC3k.

From raw UMI counts to a 2-D map in one estimator:
LogNormalizer -> ClippedStandardScaler -> BetaVSCEmbedder -> TSNE.
Saves ``pipeline_tsne.png``. ``--quick`` trains for 3 epochs instead of 200.
"""

import argparse

import matplotlib.pyplot as plt
from sklearn.manifold import TSNE
from sklearn.pipeline import Pipeline

from skvae import BetaVSCEmbedder
from skvae.datasets import fetch_pbmc3k
from skvae.study.plotting import plot_embedding
from skvae.preprocessing import ClippedStandardScaler, LogNormalizer

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--quick", action="store_true", help="3 epochs, for a smoke test")
args = parser.parse_args()

pbmc = fetch_pbmc3k()
pipeline = Pipeline(
    [
        ("normalize", LogNormalizer()),
        ("scale", ClippedStandardScaler(max_value=10)),
        ("vsc", BetaVSCEmbedder(beta=2, max_epochs=3 if args.quick else 200, random_state=0)),
        ("tsne", TSNE(perplexity=40, random_state=0)),
    ]
)
tsne = pipeline.fit_transform(pbmc.data)

ax = plot_embedding(tsne, pbmc.target_names[pbmc.target], title="PBMC3k: beta-VSC codes, 2-D t-SNE")
ax.figure.savefig("pipeline_tsne.png", dpi=110, bbox_inches="tight")
plt.close(ax.figure)
print(f"t-SNE of {tsne.shape[0]} cells saved to pipeline_tsne.png")
