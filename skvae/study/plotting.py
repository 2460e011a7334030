"""Figures of the study: embeddings by cell type, the metrics table, loss curves, VSC spikes.

Each function draws on a matplotlib Axes (made when not given) and returns it.
"""

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from sklearn.utils import check_array, check_consistent_length


def _axes(ax, projection=None):
    if ax is not None:
        return ax
    return plt.figure(figsize=(6, 5)).add_subplot(projection=projection)


def plot_embedding(coordinates, labels, *, ax=None, title=None, axis_label="t-SNE", legend=True):
    """Scatter a 2-D or 3-D embedding, one colour per label, with a legend.

    Parameters
    ----------
    coordinates : array-like of shape (n_samples, 2) or (n_samples, 3)
    labels : array-like of str of shape (n_samples,)
        E.g. cell-type names.
    ax : matplotlib Axes, default=None
        Where to draw; a 3-D Axes for 3-D coordinates. A new figure when None.
    title : str, default=None
    axis_label : str, default="t-SNE"
        Axes are labelled ``"<axis_label> 1"``, ``"<axis_label> 2"``, ...
    legend : bool, default=True
        Draw the legend in the Axes. Panels of one figure can leave it out and share a figure
        legend built from ``ax.get_legend_handles_labels()``.

    Returns
    -------
    ax : matplotlib Axes

    Examples
    --------
    >>> import numpy as np
    >>> from skvae.study.plotting import plot_embedding
    >>> ax = plot_embedding(np.random.RandomState(0).normal(size=(30, 2)), ["a", "b", "c"] * 10)
    >>> ax.get_xlabel(), len(ax.get_legend().get_texts())
    ('t-SNE 1', 3)
    """
    coordinates = check_array(coordinates)
    labels = np.asarray(labels)
    check_consistent_length(coordinates, labels)
    dims = coordinates.shape[1]
    if dims not in (2, 3):
        raise ValueError(f"coordinates must have 2 or 3 columns, got {dims}")
    ax = _axes(ax, projection="3d" if dims == 3 else None)
    colours = plt.get_cmap("tab10" if len(np.unique(labels)) <= 10 else "tab20")
    for i, label in enumerate(np.unique(labels)):
        points = coordinates[labels == label]
        ax.scatter(*points.T, s=4, color=colours(i), label=label, alpha=0.8, linewidths=0)
    ax.set_xlabel(f"{axis_label} 1")
    ax.set_ylabel(f"{axis_label} 2")
    if dims == 3:
        ax.set_zlabel(f"{axis_label} 3")
    if title:
        ax.set_title(title)
    if legend:
        ax.legend(markerscale=3, fontsize="small", loc="upper left" if dims == 3 else "best", frameon=False)
    return ax


def plot_metrics_heatmap(means, stds=None, *, ax=None, title="Scores (mean ± sd over seeds)"):
    """Annotated heatmap of a models x metrics table.

    Parameters
    ----------
    means : pandas.DataFrame
        Models in rows, metrics in columns; higher is better.
    stds : pandas.DataFrame, default=None
        Standard deviations of the same shape, written after the means; NaN
        where the runs do not differ (no ± is written there).
    ax : matplotlib Axes, default=None
    title : str, default="Scores (mean ± sd over seeds)"

    Returns
    -------
    ax : matplotlib Axes

    Examples
    --------
    >>> import pandas as pd
    >>> from skvae.study.plotting import plot_metrics_heatmap
    >>> means = pd.DataFrame({"ARI": [0.5, 0.6]}, index=["PCA", "VSC"])
    >>> ax = plot_metrics_heatmap(means, pd.DataFrame({"ARI": [float("nan"), 0.02]}, index=["PCA", "VSC"]))
    >>> [t.get_text().startswith(mean) for t, mean in zip(ax.texts, ["0.50", "0.60"])], ["±" in t.get_text() for t in ax.texts]
    ([True, True], [False, True])
    """
    ax = _axes(ax)
    image = ax.imshow(means.to_numpy(dtype=float), cmap="viridis", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(means.shape[1]), means.columns, rotation=30, ha="right")
    ax.set_yticks(range(means.shape[0]), means.index)
    for (i, j), value in np.ndenumerate(means.to_numpy(dtype=float)):
        spread = np.nan if stds is None else stds.iloc[i, j]
        # no ± where the runs do not differ (NaN), as in the report's table
        text = f"{value:.2f}" if np.isnan(spread) else f"{value:.2f}\n± {spread:.2f}"
        ax.text(j, i, text, ha="center", va="center", fontsize="small", color="white" if value < 0.6 else "black")
    ax.figure.colorbar(image, ax=ax, fraction=0.046)
    ax.set_title(title)
    return ax


def plot_training_history(histories, *, ax=None, key="loss"):
    """Per-epoch training loss of several models.

    Parameters
    ----------
    histories : dict of str to dict
        Model name to its fitted ``history_``.
    ax : matplotlib Axes, default=None
    key : str, default="loss"
        Which series of ``history_`` to plot.

    Returns
    -------
    ax : matplotlib Axes

    Examples
    --------
    >>> from skvae.study.plotting import plot_training_history
    >>> ax = plot_training_history({"AE": {"loss": [3.0, 2.0, 1.5]}})
    >>> ax.get_ylabel()
    'loss per cell'
    """
    ax = _axes(ax)
    for name, history in histories.items():
        ax.plot(np.arange(1, len(history[key]) + 1), history[key], label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"{key} per cell")
    ax.set_title(f"Training {key}")
    ax.legend(frameon=False)
    return ax


def plot_spike_probabilities(spike_probabilities, labels, *, ax=None):
    """Mean VSC spike probability of each latent dimension, per cell type.

    Shows which latent dimensions each cell type uses.

    Parameters
    ----------
    spike_probabilities : array-like of shape (n_samples, n_components)
        From :meth:`skvae.BetaVSCEmbedder.spike_probabilities`.
    labels : array-like of str of shape (n_samples,)
    ax : matplotlib Axes, default=None

    Returns
    -------
    ax : matplotlib Axes

    Examples
    --------
    >>> import numpy as np
    >>> from skvae.study.plotting import plot_spike_probabilities
    >>> ax = plot_spike_probabilities(np.full((4, 2), 0.5), ["a", "a", "b", "b"])
    >>> ax.get_xlabel()
    'latent dimension'
    """
    spike_probabilities = check_array(spike_probabilities)
    check_consistent_length(spike_probabilities, labels)
    ax = _axes(ax)
    table = pd.DataFrame(spike_probabilities).groupby(np.asarray(labels)).mean()
    image = ax.imshow(table.to_numpy(), cmap="magma", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(table.shape[1]), [str(i + 1) for i in table.columns])
    ax.set_yticks(range(table.shape[0]), table.index)
    for (i, j), value in np.ndenumerate(table.to_numpy()):
        ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize="x-small",
                color="white" if value < 0.5 else "black")
    ax.set_xlabel("latent dimension")
    ax.set_title("VSC: mean spike probability per cell type")
    ax.figure.colorbar(image, ax=ax, fraction=0.046, label="P(dimension active)")
    return ax
