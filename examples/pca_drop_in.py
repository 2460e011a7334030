"""skvae as a drop-in for PCA: the same pipeline, one step swapped, the study's metrics compared.

Both pipelines end in 6 components; each is scored by t-SNE + KMeans against the
cell types (NMI, ARI, ...) and by silhouette and k-NN accuracy on the components.
``--quick`` trains for 3 epochs.
"""

import argparse

import pandas as pd
from sklearn.decomposition import PCA
from sklearn.pipeline import Pipeline

from skvae import BetaVSCEmbedder
from skvae.datasets import fetch_pbmc3k
from skvae.study.evaluation import evaluate_embedding
from skvae.preprocessing import ClippedStandardScaler, LogNormalizer

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--quick", action="store_true", help="3 epochs, for a smoke test")
args = parser.parse_args()

pbmc = fetch_pbmc3k()
cell_types = pbmc.target_names[pbmc.target]
pipeline = Pipeline([("normalize", LogNormalizer()), ("scale", ClippedStandardScaler()), ("embed", PCA(6))])

rows = {}
for name, step in [
    ("PCA", PCA(n_components=6, random_state=0)),
    ("beta-VSC", BetaVSCEmbedder(n_components=6, beta=2, max_epochs=3 if args.quick else 200, random_state=0)),
]:
    codes = pipeline.set_params(embed=step).fit_transform(pbmc.data)
    rows[name] = evaluate_embedding(codes, cell_types, seeds=[0]).iloc[0]
print(pd.DataFrame(rows).T.round(3).to_string())
