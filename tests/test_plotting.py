"""The figures carry what a reader needs: titles, axis labels, legends, annotations."""

import numpy as np
import pandas as pd
import pytest

from skvae.study.plotting import (
    plot_embedding,
    plot_metrics_heatmap,
    plot_spike_probabilities,
    plot_training_history,
)


@pytest.mark.parametrize("dims", [2, 3])
def test_plot_embedding_labels_axes_and_legend(dims):
    labels = np.repeat(["B", "NK", "DC"], 10)
    coordinates = np.random.RandomState(0).normal(size=(30, dims))
    ax = plot_embedding(coordinates, labels, title="codes")
    assert ax.get_title() == "codes" and ax.get_ylabel() == "t-SNE 2"
    assert sorted(t.get_text() for t in ax.get_legend().get_texts()) == ["B", "DC", "NK"]
    assert (ax.name == "3d") == (dims == 3)
    assert plot_embedding(coordinates, labels, legend=False).get_legend() is None


def test_plot_metrics_heatmap_annotates_means_and_sds():
    means = pd.DataFrame({"ARI": [0.5, 0.7], "NMI": [0.6, 0.8]}, index=["PCA", "beta-VSC"])
    ax = plot_metrics_heatmap(means, means * 0 + 0.01)
    assert ax.texts[0].get_text() == "0.50\n± 0.01"
    assert [t.get_text() for t in ax.get_yticklabels()] == ["PCA", "beta-VSC"]


def test_plot_training_history_one_line_per_model():
    ax = plot_training_history({"AE": {"loss": [3, 2, 1]}, "VAE": {"loss": [4, 3, 2]}})
    assert len(ax.get_lines()) == 2 and ax.get_xlabel() == "epoch"


def test_plot_spike_probabilities_averages_per_cell_type():
    gamma = np.array([[1.0, 0.0], [0.8, 0.2], [0.1, 0.9], [0.3, 0.7]])
    ax = plot_spike_probabilities(gamma, ["B", "B", "NK", "NK"])
    assert [t.get_text() for t in ax.texts] == ["0.90", "0.10", "0.20", "0.80"]


def test_plots_reject_coordinates_they_cannot_draw():
    labels = ["a", "b"] * 5
    with pytest.raises(ValueError, match="2 or 3 columns, got 4"):
        plot_embedding(np.zeros((10, 4)), labels)
    with pytest.raises(ValueError, match="Expected 2D array"):
        plot_embedding(np.zeros(10), labels)
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        plot_embedding(np.zeros((10, 2)), labels[:-1])
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        plot_spike_probabilities(np.full((10, 2), 0.5), labels[:-1])
