"""A classifier's cell types as it learned them."""

import numpy as np
import pandas as pd
from sklearn.utils.validation import check_is_fitted

from ..pipeline import _flat_steps


def type_statistics(classifier):
    """One row per cell type of a fitted classifier: its labelled cells, its Gaussian's spread, how typical is typical.

    Parameters
    ----------
    classifier : fitted BetaVAEClassifier, or an EmbeddingPipeline ending in one

    Returns
    -------
    DataFrame
        Indexed by the classes, with ``n_labelled`` (the labelled cells its
        Gaussian comes from; 0 for a type no call labelled, never predicted),
        ``spread`` (the square root of the mean variance of its Gaussian, in code
        units) and ``median_distance`` (the median squared Mahalanobis distance
        of its labelled cells to its centre: about ``n_components`` for a
        Gaussian type); for a model of counts also ``markers`` (the genes
        its unknown flag checks a cell named the type holds, the most specific
        first: by name where the model knows its genes' names, else column
        indices) and ``marker_share`` (the share of a cell's counts on them).

    Examples
    --------
    >>> import numpy as np
    >>> from skvae import BetaVAEClassifier
    >>> from skvae.analysis import type_statistics
    >>> rng = np.random.RandomState(0)
    >>> counts = rng.poisson(rng.gamma(0.5, 2.0, size=(2, 30))[np.arange(60) % 2]).astype(float)
    >>> model = BetaVAEClassifier(2, hidden_layer_sizes=(16,), likelihood="nb", max_epochs=5,
    ...                           random_state=0).fit(counts, np.arange(60) % 2)
    >>> table = type_statistics(model)
    >>> table["n_labelled"].tolist(), len(table["markers"].iloc[0]) > 0
    ([30, 30], True)
    """
    final = _flat_steps(classifier)[-1]  # the model itself, or a pipeline's last step
    check_is_fitted(final, "class_means_")
    precisions = np.asarray(final.class_precisions_)
    known = ~np.isnan(final.class_means_[:, 0])
    spread = np.full(len(final.classes_), np.nan)
    for c in np.flatnonzero(known):
        spread[c] = np.sqrt(np.trace(np.linalg.pinv(precisions[c], hermitian=True)) / precisions.shape[1])
    quantiles = np.asarray(final.class_distance_quantiles_)
    counts = getattr(final, "class_counts_", np.where(known, -1, 0))
    table = pd.DataFrame({"n_labelled": np.asarray(counts, dtype=np.int64), "spread": spread,
                          "median_distance": quantiles[:, quantiles.shape[1] // 2]},
                         index=pd.Index(final.classes_, name="type"))
    markers = getattr(final, "class_markers_", np.zeros((len(table), 0), dtype=int))
    if markers.shape[1]:
        names = _gene_names(classifier, final)
        table["markers"] = [[names[g] if names is not None else int(g) for g in row[row >= 0]] for row in markers]
        table["marker_share"] = final.class_marker_shares_
    return table


def _gene_names(classifier, final):
    """The names of the classifier's input columns: its own, or those the pipeline's steps before it give; or None."""
    names = getattr(final, "feature_names_in_", None)
    if names is None and classifier is not final:
        try:
            names = classifier[:-1].get_feature_names_out()
        except (AttributeError, TypeError, ValueError):  # steps that do not name their output
            names = None
    return None if names is None else np.asarray(names, dtype=object)
