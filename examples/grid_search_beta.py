"""Choose beta for BetaVAEEmbedder with GridSearchCV, no scorer needed.

``score`` is the negative evidence lower bound per cell (with weight 1 on the KL
term, whatever beta was trained with), so held-out cells rank the values of beta.
``--quick`` trains for 2 epochs on 2 folds.
"""

import argparse

import numpy as np
import pandas as pd
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline

from skvae import BetaVAEEmbedder
from skvae.datasets import fetch_pbmc3k
from skvae.preprocessing import ClippedStandardScaler, LogNormalizer

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--quick", action="store_true", help="2 epochs, 2 folds, for a smoke test")
args = parser.parse_args()

X = make_pipeline(LogNormalizer(), ClippedStandardScaler()).fit_transform(fetch_pbmc3k().data).astype(np.float32)
search = GridSearchCV(
    BetaVAEEmbedder(max_epochs=2 if args.quick else 50, random_state=0),
    {"beta": [0.5, 1, 2, 4]},
    cv=2 if args.quick else 3,
)
search.fit(X)

results = pd.DataFrame(search.cv_results_)[["param_beta", "mean_test_score", "std_test_score"]]
print(results.to_string(index=False))
print(f"best beta: {search.best_params_['beta']}")
