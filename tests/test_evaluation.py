"""The evaluation protocol on synthetic embeddings with known structure."""

import numpy as np
import pytest
from sklearn.metrics import silhouette_score

from skvae.study.evaluation import clustering_scores, evaluate_embedding, latent_scores, tsne_kmeans_scores


def blobs(n_per_group=40, n_groups=3, separation=10.0, seed=0):
    rng = np.random.RandomState(seed)
    X = np.vstack([rng.normal(separation * g, 1.0, size=(n_per_group, 4)) for g in range(n_groups)])
    return X, np.repeat([f"type{g}" for g in range(n_groups)], n_per_group)


def test_clustering_scores_ignore_cluster_names_and_see_noise():
    labels = np.repeat([0, 1, 2], 50)
    assert clustering_scores(labels, (labels + 1) % 3) == {"NMI": 1.0, "ARI": 1.0, "homogeneity": 1.0,
                                                            "completeness": 1.0}
    noise = clustering_scores(labels, np.random.RandomState(0).randint(3, size=150))
    assert abs(noise["ARI"]) < 0.05 and noise["NMI"] < 0.05


def test_tsne_kmeans_recovers_separated_groups():
    X, labels = blobs()
    scores, tsne = tsne_kmeans_scores(X, labels, perplexity=15, random_state=0, return_tsne=True)
    assert scores["ARI"] == pytest.approx(1.0) and tsne.shape == (120, 2)


def test_tsne_kmeans_finds_nothing_in_noise():
    X = np.random.RandomState(0).normal(size=(120, 4))
    labels = np.repeat(["a", "b", "c"], 40)
    assert tsne_kmeans_scores(X, labels, perplexity=15, random_state=0)["ARI"] < 0.1


def test_latent_scores():
    X, labels = blobs()
    scores = latent_scores(X, labels)
    assert scores["kNN accuracy"] == 1.0
    assert scores["silhouette"] == pytest.approx(silhouette_score(X, labels))
    shuffled = latent_scores(X, np.random.RandomState(0).permutation(labels))
    assert shuffled["kNN accuracy"] < 0.6 and shuffled["silhouette"] < 0.05


def test_evaluate_embedding_one_row_per_seed():
    X, labels = blobs(separation=3.0)
    table, tsne = evaluate_embedding(X, labels, seeds=[3, 4], perplexity=15, return_tsne=True)
    assert list(table.index) == [3, 4]
    assert set(table.columns) == {"NMI", "ARI", "homogeneity", "completeness", "silhouette", "kNN accuracy"}
    assert tsne.shape == (120, 2)
    assert table["silhouette"].nunique() == 1


def test_evaluation_rejects_mismatched_labels_and_bad_values():
    X, labels = blobs()
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        tsne_kmeans_scores(X, labels[:-1])
    with pytest.raises(ValueError, match="seeds is empty"):
        evaluate_embedding(X, labels, seeds=[])
    X[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        latent_scores(X, labels)
