"""The study's evaluation protocol, as plain functions of any embedding (PCA's included).

- :func:`tsne_kmeans_scores`: 2-D t-SNE, KMeans with one cluster per label, then NMI,
  ARI, homogeneity and completeness against the labels (the study's protocol);
- :func:`latent_scores`: silhouette and cross-validated k-NN accuracy on the codes
  themselves, which do not depend on t-SNE's randomness;
- :func:`evaluate_embedding`: both, over several seeds, one row per seed.
"""

import numpy as np
import pandas as pd
from sklearn.cluster import KMeans
from sklearn.manifold import TSNE
from sklearn.metrics import (
    adjusted_rand_score,
    completeness_score,
    homogeneity_score,
    normalized_mutual_info_score,
    silhouette_score,
)
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.neighbors import KNeighborsClassifier
from sklearn.utils import check_array, check_consistent_length


def clustering_scores(labels_true, labels_pred):
    """NMI, ARI, homogeneity and completeness of a clustering against labels.

    Parameters
    ----------
    labels_true, labels_pred : array-like of shape (n_samples,)

    Returns
    -------
    scores : dict of str to float
        Keys ``"NMI"``, ``"ARI"``, ``"homogeneity"``, ``"completeness"``.

    Examples
    --------
    >>> from skvae.study.evaluation import clustering_scores
    >>> clustering_scores([0, 0, 1, 1], [1, 1, 0, 0])
    {'NMI': 1.0, 'ARI': 1.0, 'homogeneity': 1.0, 'completeness': 1.0}
    """
    return {
        "NMI": float(normalized_mutual_info_score(labels_true, labels_pred)),
        "ARI": float(adjusted_rand_score(labels_true, labels_pred)),
        "homogeneity": float(homogeneity_score(labels_true, labels_pred)),
        "completeness": float(completeness_score(labels_true, labels_pred)),
    }


def tsne_kmeans_scores(X, labels, *, perplexity=40.0, random_state=None, return_tsne=False):
    """The study's protocol: 2-D t-SNE, then KMeans with k = number of labels, then scores.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_components)
        An embedding, e.g. latent codes or principal components.
    labels : array-like of shape (n_samples,)
        Reference labels (cell types).
    perplexity : float, default=40.0
        t-SNE's perplexity.
    random_state : int, RandomState instance or None, default=None
        Seeds t-SNE and KMeans.
    return_tsne : bool, default=False
        Also return the 2-D t-SNE coordinates.

    Returns
    -------
    scores : dict of str to float
        As :func:`clustering_scores`.
    tsne : ndarray of shape (n_samples, 2)
        Only when ``return_tsne`` is True.

    Examples
    --------
    >>> import numpy as np
    >>> from skvae.study.evaluation import tsne_kmeans_scores
    >>> rng = np.random.RandomState(0)
    >>> X = np.vstack([rng.normal(0, 1, (40, 5)), rng.normal(8, 1, (40, 5))])
    >>> tsne_kmeans_scores(X, [0] * 40 + [1] * 40, perplexity=10, random_state=0)["ARI"]
    1.0
    """
    X = check_array(X)
    check_consistent_length(X, labels)
    n_clusters = len(np.unique(labels))
    tsne = TSNE(n_components=2, perplexity=perplexity, random_state=random_state).fit_transform(X)
    clusters = KMeans(n_clusters=n_clusters, n_init=10, random_state=random_state).fit_predict(tsne)
    scores = clustering_scores(labels, clusters)
    return (scores, tsne) if return_tsne else scores


def latent_scores(X, labels, *, n_neighbors=15, cv=5, random_state=0):
    """Label structure of the embedding itself: silhouette and k-NN accuracy.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_components)
    labels : array-like of shape (n_samples,)
    n_neighbors : int, default=15
        Neighbours of the k-NN classifier.
    cv : int, default=5
        Folds of the stratified cross-validation of the k-NN classifier.
    random_state : int, default=0
        Seeds the fold shuffling.

    Returns
    -------
    scores : dict of str to float
        ``"silhouette"`` (Euclidean, against the labels) and ``"kNN accuracy"``
        (mean over folds).

    Examples
    --------
    >>> import numpy as np
    >>> from skvae.study.evaluation import latent_scores
    >>> X = np.array([[0.0], [0.1], [0.2], [5.0], [5.1], [5.2]] * 5)
    >>> latent_scores(X, [0, 0, 0, 1, 1, 1] * 5, n_neighbors=3)["kNN accuracy"]
    1.0
    """
    X = check_array(X)
    check_consistent_length(X, labels)
    folds = StratifiedKFold(n_splits=cv, shuffle=True, random_state=random_state)
    accuracy = cross_val_score(KNeighborsClassifier(n_neighbors=n_neighbors), X, labels, cv=folds)
    return {"silhouette": float(silhouette_score(X, labels)), "kNN accuracy": float(accuracy.mean())}


def evaluate_embedding(X, labels, *, seeds=(0, 1, 2), perplexity=40.0, return_tsne=False):
    """Every score of the study over several seeds of t-SNE and KMeans.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_components)
    labels : array-like of shape (n_samples,)
    seeds : sequence of int, default=(0, 1, 2)
        One t-SNE + KMeans run per seed.
    perplexity : float, default=40.0
    return_tsne : bool, default=False
        Also return the 2-D t-SNE of the first seed.

    Returns
    -------
    scores : pandas.DataFrame
        One row per seed (index ``seed``); the columns of
        :func:`tsne_kmeans_scores` and :func:`latent_scores` (the latter repeated:
        they do not depend on the seed).
    tsne : ndarray of shape (n_samples, 2)
        Only when ``return_tsne`` is True.

    Examples
    --------
    >>> import numpy as np
    >>> from skvae.study.evaluation import evaluate_embedding
    >>> rng = np.random.RandomState(0)
    >>> X = np.vstack([rng.normal(0, 1, (40, 5)), rng.normal(8, 1, (40, 5))])
    >>> scores = evaluate_embedding(X, [0] * 40 + [1] * 40, seeds=[0, 1], perplexity=10)
    >>> scores.agg(["mean", "std"]).round(2)[["ARI", "kNN accuracy"]]
          ARI  kNN accuracy
    mean  1.0           1.0
    std   0.0           0.0
    """
    if not len(seeds):
        raise ValueError("seeds is empty: give at least one seed of t-SNE and KMeans")
    latent = latent_scores(X, labels)
    rows, first_tsne = [], None
    for seed in seeds:
        scores, tsne = tsne_kmeans_scores(X, labels, perplexity=perplexity, random_state=seed, return_tsne=True)
        first_tsne = tsne if first_tsne is None else first_tsne
        rows.append({**scores, **latent})
    table = pd.DataFrame(rows, index=pd.Index(list(seeds), name="seed"))
    return (table, first_tsne) if return_tsne else table
