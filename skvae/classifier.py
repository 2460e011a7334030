"""Label transfer: a beta-VAE that learns cell types from labelled cells and names the others.

:class:`BetaVAEClassifier` is a :class:`~skvae.BetaVAEEmbedder` with a cell-type
classifier on its code, learned with the rest of the model from the labelled cells
among those it is fitted on (semi-supervised, as scANVI), so that the codes separate
the labelled types while the decoder's conditioning and the adversary mix the
batches. After training, each type's labelled cells' codes give it a Gaussian; a
cell's type is the one whose Gaussian is the most likely to have drawn its code,
and :meth:`BetaVAEClassifier.typicality` says how far it lies in that Gaussian's
tail: the unknown-type rule of :meth:`BetaVAEClassifier.is_unknown`. It is a
scikit-learn classifier (``predict``, ``predict_proba``, ``classes_``, ``score`` is the
accuracy) and still a transformer (``transform`` gives the codes). A fitted model
maps cells of new batches with :meth:`BetaVAEClassifier.map_query` (inherited from
the embedders).

A dedicated class, not a ``y`` on the embedders: in a scikit-learn Pipeline
``fit(X, y)`` hands ``y`` to every step, so embedders that learned from ``y``
would silently change every existing ``Pipeline([embedder, classifier])``; and a
classifier's ``score`` must be its accuracy (what ``GridSearchCV`` over ``beta``
then maximises), while an embedder's stays the evidence lower bound.
"""

import warnings
from dataclasses import replace
from numbers import Integral, Real

import numpy as np
import pandas as pd
from scipy.special import softmax
from scipy.stats import chi2
from sklearn.base import ClassifierMixin
from sklearn.covariance import ledoit_wolf
from sklearn.metrics import accuracy_score
from sklearn.neighbors import NearestNeighbors
from sklearn.utils import check_array
from sklearn.utils._param_validation import Interval
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, column_or_1d

from . import _markers
from ._counterparts import REFERENCE_ATTRIBUTES, query_distances, reference_clusters
from ._covariates import combined_labels
from ._persistence import SAVE_FORMAT, saved_attributes
from .estimators import BetaVAEEmbedder, _docstring
from .nn.models import VariationalAutoencoder
from .train.distributed import Agreement

#: How an integer label marks an unlabelled cell (scikit-learn's semi-supervised convention)
UNLABELLED = -1
# Labelled cells of each type whose codes give the type's Gaussian after fit (evenly spaced)
_CALIBRATION_ROWS = 20_000
# Quantiles of each type's reference distances kept (the typicality's resolution: 1 / (_QUANTILES - 1))
_QUANTILES = 1001
# Cells that calibrate a group's typicality to its shift (and labelled cells a type needs to take part): the marker
# test's
_CALIBRATION_CELLS = _markers.MIN_CELLS


def _missing(values):
    """Which of ``values`` (an object array) are missing: None, NaN or pandas' NA."""
    return np.fromiter((value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA
                        for value in values), dtype=bool, count=len(values))


def _plain(value):
    """A label as Python shows it: 1 and 'B', not np.int64(1) and np.str_('B')."""
    return value.item() if isinstance(value, np.generic) else value


def _one_column(y, name):
    try:
        return column_or_1d(y, warn=True)
    except ValueError as exc:
        raise ValueError(f"{name} must hold one label per cell (one column): {exc}") from None


def _refuse_missing_as_text(labels, name="y"):
    text = np.char.lower(np.char.strip(np.asarray(labels, dtype=str)))
    turned = np.isin(text, ["nan", "none", ""])
    if turned.any():
        raise ValueError(
            f"{name} holds {int(turned.sum())} labels that read {sorted(set(np.asarray(labels)[turned].tolist()))}: a "
            "missing value turned into text (numpy turns None and NaN among strings into 'None' and 'nan'). Mark "
            "unlabelled cells with None or NaN in an object array or a pandas Series (e.g. adata.obs['cell_type']).")


def _label_kinds(labels):
    """The kinds of ``labels`` (an array of labelled cells' labels): "text", "number", "bool" or a type's name."""
    if labels.dtype.kind in "US":
        return {"text"}
    if labels.dtype.kind != "O":
        return {"bool" if labels.dtype.kind == "b" else "number"} if len(labels) else set()
    return {"bool" if isinstance(value, (bool, np.bool_)) else "number" if isinstance(value, (Real, np.number))
            else "text" if isinstance(value, str) else type(value).__name__ for value in labels}


def _checked_classes(classes):
    """``partial_fit``'s ``classes``, sorted and distinct: every one a label, none missing."""
    labels, labelled = _split_labels(classes, "classes")
    if not len(labels):
        raise ValueError("classes is empty: give every cell type that any chunk will hold (e.g. "
                         "classes=np.unique(all_labels)).")
    if not labelled.all():
        raise ValueError(f"classes holds {int((~labelled).sum())} missing values (None, NaN or -1, which mark "
                         "unlabelled cells in y): give the cell types only.")
    check_classification_targets(labels)
    return np.unique(labels)


def split_labels(y):
    """Each cell's label and whether it has one, from ``y`` in scikit-learn's semi-supervised convention.

    Integers (or floats) mark an unlabelled cell with -1 (or NaN); strings and
    other labels with None or NaN (pandas' missing value, as in an AnnData's
    ``obs``).

    Parameters
    ----------
    y : array-like of shape (n_samples,)

    Returns
    -------
    labels : ndarray of shape (n_samples,)
    labelled : ndarray of bool of shape (n_samples,)

    Raises
    ------
    ValueError
        For ``y`` that is not one column, or a string label that is a missing
        value turned to text ("nan", "None", "").
    TypeError
        For labels of mixed kinds (strings and numbers).

    Examples
    --------
    >>> from skvae.classifier import split_labels
    >>> split_labels([0, 2, -1])[1].tolist()
    [True, True, False]
    >>> import numpy as np
    >>> labels, labelled = split_labels(np.array(["T cell", None, "B cell"], dtype=object))
    >>> labels[labelled].tolist()
    ['T cell', 'B cell']
    """
    return _split_labels(y, "y")


def _split_labels(y, name):
    """:func:`split_labels`, its messages naming the argument ``name``."""
    if isinstance(y, (pd.Series, pd.Categorical, pd.Index)):
        y = pd.Series(y)
        # numbers and booleans as numpy's (-1 / NaN still mark unlabelled cells); others, and pandas' NA, as objects
        y = (y.to_numpy() if y.dtype.kind in "iuf" or (y.dtype.kind == "b" and not y.hasnans) else
             y.astype(object).where(y.notna(), None).to_numpy())
    y = _one_column(y, name)
    if y.dtype.kind in "iub":
        return y, y != UNLABELLED
    if y.dtype.kind == "f":
        return y, ~(np.isnan(y) | (y == UNLABELLED))
    if y.dtype.kind in "US":
        _refuse_missing_as_text(y, name)
        return y, np.ones(len(y), dtype=bool)
    labelled = ~_missing(y)
    kinds = {"bool" if isinstance(value, (bool, np.bool_)) else "number" if isinstance(value, (Real, np.number))
             else type(value).__name__ for value in y[labelled]}
    if len(kinds) > 1:
        raise TypeError(f"{name} mixes labels of kinds {sorted(kinds)}: give one kind (e.g. all strings, with None or "
                        "NaN for unlabelled cells, or all integers, with -1).")
    if kinds == {"str"}:
        _refuse_missing_as_text(y[labelled], name)
    if kinds == {"number"}:  # numbers in an object array (an object column): as a numeric array
        numbers = np.asarray(y[labelled].tolist())
        y = np.full(len(y), UNLABELLED, dtype=numbers.dtype)
        y[labelled] = numbers
        labelled &= y != UNLABELLED
    if kinds == {"bool"}:  # a yes/no column (bool, pandas' nullable boolean, or bools with None): as a numpy bool array
        flags = np.zeros(len(y), dtype=bool)
        flags[labelled] = np.asarray(y[labelled].tolist(), dtype=bool)
        y = flags
    return y, labelled


#: a type counts as held by a batch where at least this many of the batch's cells are labelled with it
_HELD_CELLS = 3


def adversary_types(labels, batch, n_classes, n_batches):
    """Whether each cell type is held by a batch other than each batch: what the batch adversary may mix it with.

    A type is held by a batch where at least ``_HELD_CELLS`` (3) of the batch's cells are labelled with it; a batch
    with no labelled cell is taken to hold every type (its composition is unknown: a query of a reference).

    Parameters
    ----------
    labels : ndarray of shape (n_samples,), int
        Each cell's type (an index of the classes), -1 for an unlabelled cell.
    batch : ndarray of shape (n_samples,), int
        Each cell's batch (an index of the categories).
    n_classes, n_batches : int

    Returns
    -------
    ndarray of bool of shape (n_classes, n_batches)
        Row: a type; column: a batch; True where another batch holds the type.

    Examples
    --------
    >>> import numpy as np
    >>> from skvae.classifier import adversary_types
    >>> labels = np.array([0] * 3 + [1] * 3 + [0] * 3 + [-1] * 4)  # type 1 labelled in batch 0 only
    >>> batch = np.array([0] * 6 + [1] * 3 + [1] * 2 + [2] * 2)  # batch 2 is unlabelled
    >>> adversary_types(labels, batch, 2, 3).astype(int).tolist()
    [[1, 1, 1], [1, 1, 1]]
    >>> adversary_types(labels[:11], batch[:11], 2, 2).astype(int).tolist()
    [[1, 1], [0, 1]]
    """
    return _held_elsewhere(_labelled_counts(labels, batch, n_classes, n_batches))


def _labelled_counts(labels, batch, n_classes, n_batches):
    """The number of labelled cells of each type (row) in each batch (column)."""
    labelled = labels >= 0
    counts = np.zeros((n_classes, n_batches), dtype=np.int64)
    np.add.at(counts, (labels[labelled], batch[labelled]), 1)
    return counts


def _held(counts):
    """Whether each batch (column) holds each type (row), from the labelled cells' counts: on ``_HELD_CELLS`` of its
    cells or more; a batch with no labelled cell holds every type."""
    held = counts >= _HELD_CELLS
    held[:, counts.sum(axis=0) == 0] = True
    return held


def _held_elsewhere(counts):
    """:func:`adversary_types` from the labelled cells' counts of each type in each batch."""
    held = _held(counts)
    return (held.sum(axis=1, keepdims=True) - held) > 0


_CLASSIFIER_PARAMETERS = """\
    classification_weight : float, default=1.0
        How strongly the labels shape the code: the classifier's cross-entropy
        reaches the encoder with its gradient scaled by this weight times the
        size of the reconstruction's gradient per cell (as ``batch_adversary``),
        so the weight means the same at any depth and number of genes. 0: the
        labels do not shape the codes (an embedder, with the types' Gaussians
        fitted to its codes).

    batch_adversary_types : bool, default=True
        With ``batch_adversary`` and labels in two or more batches: the
        adversary mixes a cell with other batches only as far as its type is
        labelled in another batch too (on at least 3 cells; an unlabelled cell
        by the classifier's probabilities of the types), so that a type that
        one batch alone holds is not pushed into its relatives of the others.
        With three batches or more, where a type is held by some and not all,
        the adversary tells a cell's batch only among the batches that hold its
        type (and that its neighbourhood holds, as ``batch_adversary`` says), so
        that it is not pushed towards a batch that lacks it.
        A batch without labelled cells is taken to hold every type (a query:
        as False). False: the embedder's adversary, which judges by the
        neighbourhood alone.

    unknown_threshold : float, default=0.01
        A cell is of a type the reference lacks (:meth:`is_unknown`) when its
        :meth:`typicality` is below this. Each cell's own p-value asks whether
        fewer than this share of the labelled cells of the type it is called
        lie as far from the type's centre (after the query's calibration), or,
        in a model of counts, whether it holds fewer of the type's marker
        genes' counts, or spends its counts less like the type's cells, than
        about this share of the type's cells would; its
        typicality is the median of that over its neighbourhood
        (``unknown_neighbors``), or 0 where its population has no counterpart
        in the reference (``unknown_counterparts``). With that test the
        default fell from 0.02 to 0.01 (round 19): on six shifted uses (the
        PBMC pair both ways and a simulated deep query; joint, reference-only
        and mapped) 0.01 flagged 0.0-3.8 % of the known types' cells (0.0-1.4 %
        of those named right) against 0.0-6.2 % at 0.02, and 87-100 % of the
        absent types' against 88-100 % (the user guide gives the figures and
        how to choose it). A type of fewer than ``1 /
        unknown_threshold - 1`` labelled cells flags only cells beyond the
        farthest of them.

    unknown_neighbors : int, default=10
        The typicality is judged over neighbourhoods: a cell's is the median
        of its own p-value and those of its ``unknown_neighbors`` nearest cells
        (in the codes) of its batch called the same type, among the cells
        given together. A population the reference lacks is flagged as a
        whole, and a known type's cells that one test doubts here and there
        are not (on the PBMC pair and a deep shifted query, the known types'
        cells flagged at one threshold fell by 45-100 %; the user guide gives
        the figures). A population of fewer than ``unknown_neighbors // 2 + 1``
        cells called one type in a batch, or one cell unlike every type among
        known ones, is not flagged then: 0 judges each cell alone.

    unknown_counterparts : float or None, default=0.6
        A model of raw counts also asks, of the cells given together, whether
        their population has a counterpart in the reference: each batch's cells
        are clustered (about 150 cells a cluster, at least 8 clusters where a
        batch has 40 cells for each), each cluster's counts pooled and compared
        with the reference's labelled cells' (clustered by batch and type in
        ``fit``), a per-gene factor between the two batches removed (a
        technology moves each gene by its own factor: the comparison of
        ``batch_counterparts``). The cells of a cluster farther than this from
        every reference cluster (the root mean square log-fold change over the
        genes beyond noise) have typicality 0 (:meth:`is_unknown` flags them,
        whatever ``unknown_threshold``). Clusters of fewer than 20 cells are
        not judged, so neither is a call of fewer than 20 cells of a batch.
        None: the typicality of the three p-values alone. Learned in
        :meth:`fit` in one process (not from partial_fit chunks, which keep a
        fit's, nor under torchrun); a model of scaled data has no counts to
        compare."""


@_docstring(
    """Semi-supervised beta-VAE: embeds cells and names their types from a labelled reference.

    A :class:`~skvae.BetaVAEEmbedder` (every parameter the same) with a cell-type
    classifier on its code (a linear map to the types' logits), learned jointly
    from the cells whose label ``y`` gives: the loss per cell is the beta-VAE's,
    plus, for a labelled cell, the classifier's cross-entropy, which also shapes
    the code (``classification_weight``). Unlabelled cells (``-1``, or None / NaN
    for string labels, scikit-learn's semi-supervised convention) shape the code
    through the reconstruction alone, and with ``batch=`` the decoder's
    conditioning and ``batch_adversary`` mix batches as for the embedder. So a
    reference's labelled cells and a query's unlabelled ones can be fitted
    together (scANVI's route), or the query mapped onto a fitted model later
    (:meth:`map_query`).

    After training, each type's labelled cells' codes give it a Gaussian: their
    mean and their Ledoit-Wolf covariance. :meth:`predict_proba` is each
    type's posterior probability given a cell's code, every type equally
    likely a priori (quadratic discriminant analysis: the reference's type
    proportions need not be the query's); :meth:`predict` the most probable.
    :meth:`typicality` and :meth:`is_unknown` say which cells are of no type the
    reference has: a cell's typicality is the share of its predicted type's
    labelled cells that lie farther (in Mahalanobis distance) from the type's
    centre than it does; in a model of counts, it is also at most the
    p-value of the cell's shortfall of its type's marker genes (the genes its
    labelled cells express most above every other type), which tells a cell
    that lies among a type's codes without expressing what marks the type, and
    of its profile likelihood (its counts' mean log-probability under the
    type's expression profile), which tells one that expresses genes the type
    does not. The
    linear classifier that shapes the codes in
    training is not used to predict: on the PBMC pair, the Gaussians gave a
    higher macro-F1 (the user guide's "Label transfer").

    ``score`` is the accuracy (scikit-learn's classifier score), so a
    ``GridSearchCV`` over ``beta`` picks the best classifier;
    ``transform`` gives the codes.

    Parameters
    ----------
{shared}

    beta : float, default=1.0
        Weight of the KL term.

{classifier}

{warmup}

{training}

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        The cell types of ``y``, sorted.

    class_means_ : ndarray of shape (n_classes, n_components)
        The mean code of each type's labelled cells (NaN for a type no call's
        cells were labelled with: it is never predicted).

    class_precisions_ : ndarray of shape (n_classes, n_components, n_components)
        The inverse of each type's Ledoit-Wolf covariance of those codes.

    class_distance_quantiles_ : ndarray of shape (n_classes, 1001)
        Quantiles of each type's labelled cells' squared Mahalanobis distances to
        its centre, the reference of :meth:`typicality`.

    class_counts_ : ndarray of int of shape (n_classes,)
        How many labelled cells of each type gave its Gaussian (at most 20,000,
        evenly spaced): the ``n`` of :meth:`typicality`'s p-value.

    class_expression_ : ndarray of shape (n_classes, n_features)
        The mean log-normalised expression (``log1p`` of counts per 10,000) of
        each type's labelled cells (NaN for a type not labelled); no columns
        for a model of scaled data.

    class_shares_ : ndarray of shape (n_classes, n_features)
        The mean share of each gene in the counts of each type's labelled
        cells (NaN for a type not labelled; no columns for a model of scaled
        data): what a query batch's cells named the type are compared with to
        measure its technology's per-gene effects (the marker test's allowance).

    class_markers_ : ndarray of int of shape (n_classes, 20)
        Each type's marker genes (column indices, the most specific first, -1
        pads): genes its labelled cells express above every other labelled
        type's; no columns for a model of scaled data (no marker test).

    class_marker_shares_, class_marker_centres_, class_marker_spreads_ : ndarray of shape (n_classes,)
        Each type's mean share of a cell's counts on its markers, and the median
        and spread beyond counting noise of its labelled cells' log shortfall of
        them (NaN for a type of fewer than 50 labelled cells: not tested).

    class_profile_centres_, class_profile_spreads_ : ndarray of shape (n_classes,)
        The median and spread beyond counting noise of each type's labelled
        cells' profile likelihood (the mean log-probability of a cell's counts
        under the type's expression profile; NaN for a type of fewer than 50
        labelled cells, or a model of scaled data: not tested).

    class_profile_quantiles_ : ndarray of shape (n_classes, 1001)
        Quantiles of each type's labelled cells' standardised profile
        likelihoods: the third p-value of :meth:`typicality`. No columns for a
        model of scaled data.

    reference_cluster_genes_ : ndarray of shape (n_genes,)
        The genes the reference's clusters are compared on (``unknown_counterparts``):
        the 2,000 most variable within batches, or every gene where there are
        no more. Absent in a model of scaled data and where no fit learned them.

    reference_cluster_halves_ : ndarray of shape (2, n_clusters, n_genes)
        The summed counts of two random halves of each cluster of the
        reference's labelled cells (of one batch and type; 20 cells or more).

    reference_cluster_batches_ : ndarray of shape (n_clusters,)
        The batch (its code in ``batch_categories_``) of each of those clusters.

{fitted}

{activity}

    See Also
    --------
    BetaVAEEmbedder : The embedder it extends, which ignores ``y``.
    make_count_classifier : The recommended settings for raw counts.

    References
    ----------
    C. Xu, R. Lopez, E. Mehlman, J. Regier, M. I. Jordan, N. Yosef.
    "Probabilistic harmonization and annotation of single-cell transcriptomics
    data with deep generative models". Molecular Systems Biology 17, e9620 (2021).

    K. Lee, K. Lee, H. Lee, J. Shin. "A Simple Unified Framework for Detecting
    Out-of-Distribution Samples and Adversarial Attacks". NeurIPS 2018.

    Examples
    --------
    >>> import numpy as np
    >>> from skvae import BetaVAEClassifier
    >>> rng = np.random.RandomState(0)
    >>> types = rng.randint(3, size=300)
    >>> X = rng.normal(size=(3, 20))[types] * 3 + rng.normal(size=(300, 20))
    >>> y = np.array(["B", "NK", "T"], dtype=object)[types]
    >>> y[200:] = None  # unlabelled
    >>> model = BetaVAEClassifier(n_components=2, max_epochs=30, random_state=0).fit(X, y)
    >>> model.classes_.tolist()
    ['B', 'NK', 'T']
    >>> float((model.predict(X[200:]) == np.array(["B", "NK", "T"])[types[200:]]).mean())
    1.0
    >>> model.predict_proba(X[:2]).shape
    (2, 3)
    """.replace("{classifier}", _CLASSIFIER_PARAMETERS)
)
class BetaVAEClassifier(ClassifierMixin, BetaVAEEmbedder):
    _parameter_constraints = {
        **BetaVAEEmbedder._parameter_constraints,
        "classification_weight": [Interval(Real, 0, None, closed="left")],
        "unknown_threshold": [Interval(Real, 0, 1, closed="left")],
        "unknown_neighbors": [Interval(Integral, 0, None, closed="left")],
        "unknown_counterparts": [Interval(Real, 0, None, closed="neither"), None],
        "batch_adversary_types": ["boolean"],
    }
    _saved_attributes = (*BetaVAEEmbedder._saved_attributes, "classes_", "class_means_", "class_precisions_",
                         "class_distance_quantiles_", "class_counts_", "class_expression_", "class_markers_",
                         "class_marker_shares_", "class_marker_centres_", "class_marker_spreads_", "class_shares_",
                         "class_profile_centres_", "class_profile_spreads_", "class_profile_quantiles_",
                         *REFERENCE_ATTRIBUTES)

    def __init__(
        self,
        n_components=6,
        *,
        hidden_layer_sizes=(128, 32, 16),
        input_activation=False,
        likelihood="gaussian",
        batch_norm=False,
        dropout=0.0,
        encode_batch=False,
        continuous_covariates=None,
        dispersion="gene",
        batch_adversary=0.0,
        batch_model="layers",
        batch_counterparts=None,
        beta=1.0,
        classification_weight=1.0,
        batch_adversary_types=True,
        unknown_threshold=0.01,
        unknown_neighbors=10,
        unknown_counterparts=0.6,
        kl_warmup_epochs=0,
        batch_size=256,
        shuffle_block_size="auto",
        learning_rate=1e-3,
        max_epochs=200,
        early_stopping=False,
        validation_fraction=0.1,
        n_iter_no_change=10,
        tol=1e-4,
        random_state=None,
        algorithm="auto",
        device="auto",
        n_jobs=None,
        verbose=0,
    ):
        super().__init__(
            n_components,
            hidden_layer_sizes=hidden_layer_sizes,
            input_activation=input_activation,
            likelihood=likelihood,
            batch_norm=batch_norm,
            dropout=dropout,
            encode_batch=encode_batch,
            continuous_covariates=continuous_covariates,
            dispersion=dispersion,
            batch_adversary=batch_adversary,
            batch_model=batch_model,
            batch_counterparts=batch_counterparts,
            beta=beta,
            kl_warmup_epochs=kl_warmup_epochs,
            batch_size=batch_size,
            shuffle_block_size=shuffle_block_size,
            learning_rate=learning_rate,
            max_epochs=max_epochs,
            early_stopping=early_stopping,
            validation_fraction=validation_fraction,
            n_iter_no_change=n_iter_no_change,
            tol=tol,
            random_state=random_state,
            algorithm=algorithm,
            device=device,
            n_jobs=n_jobs,
            verbose=verbose,
        )
        self.classification_weight = classification_weight
        self.batch_adversary_types = batch_adversary_types
        self.unknown_threshold = unknown_threshold
        self.unknown_neighbors = unknown_neighbors
        self.unknown_counterparts = unknown_counterparts

    def _build_module(self, n_features, hidden_layer_sizes, **options):
        return VariationalAutoencoder(n_features, self.n_components, hidden_layer_sizes, n_classes=len(self.classes_),
                                      **options)

    def _training_config(self, incremental):
        # a weight set by set_params applies from the next call, as beta's does
        return replace(super()._training_config(incremental), classification_weight=self.classification_weight,
                       adversary_types=self._adversary_types, held_types=self._held_types)

    def fit(self, X, y=None, *, batch=None):
        """Train the model on ``X``, learning the cell types of its labelled cells.

        Parameters
        ----------
        X : {array-like, sparse matrix, anndata.abc.CSRDataset} of shape (n_samples, n_features)
            Training data, as for :meth:`skvae.BetaVAEEmbedder.fit`.
        y : array-like of shape (n_samples,)
            Each cell's type; an unlabelled cell is marked -1 (integer labels) or
            None / NaN (string labels, e.g. an ``obs`` column with missing
            values). At least two types must be labelled.
        batch : array-like of shape (n_samples,), DataFrame or dict, default=None
            Each cell's batch, as for :meth:`skvae.BetaVAEEmbedder.fit`.

        Returns
        -------
        self : object
            The fitted classifier.
        """
        return super().fit(X, y, batch=batch)

    def partial_fit(self, X, y=None, classes=None, *, batch=None):
        """Train one pass over ``X`` and its labels, continuing the model of earlier calls.

        As :meth:`skvae.BetaVAEEmbedder.partial_fit`; the first call needs
        ``classes`` (every type that any chunk will hold), as scikit-learn's
        classifiers. Each type's Gaussian (``predict`` and ``typicality``) comes
        from the latest call that labels cells of it; a type no call has
        labelled yet is never predicted. A ``classification_weight`` changed by
        ``set_params`` applies from the next call, as ``beta`` does.

        Parameters
        ----------
        X : {array-like, sparse matrix, anndata.abc.CSRDataset} of shape (n_samples, n_features)
        y : array-like of shape (n_samples,)
            Each cell's type, or -1 / None / NaN for an unlabelled one (see :meth:`fit`).
        classes : array-like of shape (n_classes,), default=None
            All the types; required at the first call, ignored later.
        batch : array-like of shape (n_samples,), DataFrame or dict, default=None

        Returns
        -------
        self : object
        """
        if classes is not None and not hasattr(self, "classes_"):
            self._first_classes = _checked_classes(classes)
        elif not hasattr(self, "classes_"):
            raise ValueError("partial_fit's first call needs classes=, every cell type that any chunk will hold "
                             "(e.g. classes=np.unique(all_labels)).")
        try:
            return super().partial_fit(X, y, batch=batch)
        finally:
            self.__dict__.pop("_first_classes", None)

    def _training_data(self, X, batch, first, y=None):
        if y is None:
            raise ValueError(f"{type(self).__name__} requires y to be passed, but the target y is None: give each "
                             "cell's type, -1 (or None) for unlabelled cells.")
        data, sizes = super()._training_data(X, batch, first, y)
        labels, labelled = split_labels(y)
        if len(labels) != data.n_rows:
            raise ValueError(f"y has {len(labels)} labels for {data.n_rows} cells of X.")
        if first:
            classes = getattr(self, "_first_classes", None)
            if classes is None:
                if not labelled.any():
                    raise ValueError("y labels no cell (all are -1, None or NaN): a classifier needs labelled cells "
                                     "of at least two types.")
                check_classification_targets(labels[labelled])
                classes = np.unique(labels[labelled])
            if len(classes) < 2:
                coded = (" -1 marks an unlabelled cell (scikit-learn's semi-supervised convention), and "
                         f"{int((~labelled).sum())} cells are -1: code two-class labels otherwise, e.g. 0 and 1, or "
                         "as strings." if labels.dtype.kind in "iuf" and (labels == UNLABELLED).any() else "")
                raise ValueError(f"y holds one class ({_plain(classes[0])!r}): a classifier needs labelled cells of at "
                                 f"least two types.{coded}")
            self.classes_ = classes
        given, known = _label_kinds(labels[labelled]), _label_kinds(self.classes_)
        if given and given != known:
            raise ValueError(f"y's labels are {' and '.join(sorted(given))} (e.g. {_plain(labels[labelled][0])!r}), but "
                             f"the classifier's classes are {' and '.join(sorted(known))} (e.g. "
                             f"{_plain(self.classes_[0])!r}): "
                             "give labels of the kind of fit's y (or partial_fit's classes=).")
        unseen = ~np.isin(labels[labelled], self.classes_)
        if unseen.any():
            raise ValueError(f"y holds labels never seen in fit (or partial_fit's classes): "
                             f"{sorted(map(str, set(labels[labelled][unseen].tolist())))[:5]}; the classifier knows "
                             f"{self.classes_.tolist()}.")
        codes = np.full(data.n_rows, UNLABELLED, dtype=np.int64)
        codes[labelled] = np.searchsorted(self.classes_, labels[labelled])
        gated = self.batch_adversary_types and self.batch_adversary > 0 and data.covariates is not None
        # this call's labelled cells of each type in each batch (this rank's); pooled before training (_pool_ranks)
        self._labelled_here = _labelled_counts(codes, data.covariates[:, 0], len(self.classes_),
                                               self.covariates_.n_categories[0]) if gated else None
        return data.with_labels(codes), sizes

    def _pool_ranks(self, parallel, first):
        """Count the labelled cells the types' gate reads (:attr:`_adversary_types`): this call's of every rank (a
        rank may label none of a batch's cells, which alone would read as a batch holding every type) and, in a
        partial_fit that continues a model, every earlier call's too (a chunk of one batch alone would gate nothing);
        None where the gate does not act."""
        counts = self.__dict__.pop("_labelled_here", None)  # handed over by _training_data, not kept after the call
        if counts is not None and parallel is not None:
            counts = np.rint(parallel.sum(counts.ravel().astype(np.float64).tolist())).astype(np.int64).reshape(
                counts.shape)
        earlier = None if first else getattr(self, "_labelled_seen", None)
        if counts is not None and earlier is not None:
            counts = counts + earlier
        self._labelled_seen = counts

    @property
    def _adversary_types(self):
        """:func:`adversary_types` of the labelled cells counted so far, as the training config takes them: None where
        every type is shared (or nothing is counted: no adversary acts, or ``batch_adversary_types`` is False)."""
        counts = getattr(self, "_labelled_seen", None)
        held = None if counts is None else _held_elsewhere(counts)
        return None if held is None or held.all() else tuple(map(tuple, held.tolist()))

    @property
    def _held_types(self):
        """Which batch holds which type, as the training config takes it, where some type is held by more than one
        batch and not by all (three batches or more): the adversary then asks a cell's batch among those that hold its
        type; None otherwise (:attr:`_adversary_types`' weights say all there is)."""
        counts = getattr(self, "_labelled_seen", None)
        if counts is None:
            return None
        held = _held(counts)
        holders = held.sum(axis=1)
        return tuple(map(tuple, held.tolist())) if ((holders > 1) & (holders < held.shape[1])).any() else None

    def _same_on_every_rank(self):
        remedy = ("each rank's labelled cells give the classes, so every rank needs labelled cells of every type; or "
                  "give them all with partial_fit(X, y, classes=np.unique(all_labels)) on every rank.")
        return {**super()._same_on_every_rank(), "the classes": Agreement(np.asarray(self.classes_).tolist(), remedy)}

    @classmethod
    def from_saved_state(cls, state, path):
        """The fitted classifier of a save, its types' statistics checked before the network is built.

        Parameters
        ----------
        state : dict
            What :meth:`saved_state` gave.
        path : str or path-like
            The file it was read from, for messages.

        Returns
        -------
        BetaVAEClassifier
            Fitted, on CPU.
        """
        if state.get("format") != SAVE_FORMAT:
            raise ValueError(f"{path} has the header {state.get('format')!r}, older than any {cls.__name__} (they are "
                             f"saved as {SAVE_FORMAT!r}): the file is damaged or not a classifier's.")
        attributes = saved_attributes(state, path)
        _check_type_statistics(attributes, state["params"].get("n_components"), path)
        _check_markers(attributes, state.get("n_features_in_"), path)
        _check_reference_clusters(attributes, state.get("n_features_in_"), path)
        return super().from_saved_state(state, path)

    def _fitted_on(self, data, incremental, parallel=None):
        labels = data.labels
        super()._fitted_on(data, incremental, parallel)
        # up to _CALIBRATION_ROWS labelled cells of each type, evenly spaced
        keep = np.concatenate([rows[np.unique(np.linspace(0, len(rows) - 1, min(len(rows), _CALIBRATION_ROWS))
                                              .astype(int))]
                               for rows in (np.flatnonzero(labels == c) for c in np.unique(labels[labels >= 0]))]
                              or [np.zeros(0, dtype=int)])
        keep = np.sort(keep)
        codes = self._map_rows("embed", data.take(keep)).astype(np.float64) if len(keep) else \
            np.zeros((0, self.n_components))
        if parallel is not None:  # every rank's labelled cells, the same Gaussians on every rank
            gathered = parallel.gather((codes, labels[keep]))
            codes = np.concatenate([part[0] for part in gathered])
            keep_labels = np.concatenate([part[1] for part in gathered])
        else:
            keep_labels = labels[keep]
        # with no labelled cell (a partial_fit chunk), every type keeps what earlier calls learned of it, if any
        self._calibrate(codes, keep_labels, incremental)
        self._learn_markers(data, keep, labels[keep], incremental, parallel)
        self._learn_reference_clusters(data, labels, incremental, parallel)

    def _learn_reference_clusters(self, data, labels, incremental, parallel):
        """The labelled cells' clusters a query's are compared with (``unknown_counterparts``): learned by a fit of
        counts in one process from all its labelled cells; a partial_fit keeps a fit's (counts do not move as the
        model trains), and none are learned from chunks or under torchrun (each process sees its own rows)."""
        if incremental:
            return
        for name in REFERENCE_ATTRIBUTES:
            self.__dict__.pop(name, None)
        if self._models_counts and parallel is None and (labels >= 0).any():
            batch = np.zeros(data.n_rows, dtype=np.int64) if data.covariates is None else \
                data.covariates[:, 0].astype(np.int64)
            self.__dict__.update(reference_clusters(data, labels, batch, self.random_state))

    def _learn_markers(self, data, keep, labels, incremental, parallel):
        """Each labelled type's marker genes, their share of its cells' counts, and its cells' shortfall of them; its
        expression profile and its cells' profile likelihoods.

        From the rows ``keep`` of ``data`` (``labels`` theirs). A model of counts only (a model of scaled data has no
        markers: its rows of ``class_markers_`` are empty and only the codes tell). A type a partial_fit call labels
        no cell of keeps what earlier calls learned of it.
        """
        n_classes, n_features = len(self.classes_), self.n_features_in_
        fresh = not (incremental and hasattr(self, "class_markers_"))
        if not self._models_counts:
            self.class_expression_ = np.zeros((n_classes, 0), dtype=np.float32)
            self.class_shares_ = np.zeros((n_classes, 0), dtype=np.float32)
            self.class_markers_ = np.zeros((n_classes, 0), dtype=np.int64)
            self.class_marker_shares_, self.class_marker_centres_, self.class_marker_spreads_, \
                self.class_profile_centres_, self.class_profile_spreads_ = (np.full(n_classes, np.nan)
                                                                            for _ in range(5))
            self.class_profile_quantiles_ = np.zeros((n_classes, 0))
            return
        data = data.take(keep)
        sums = _markers.expression_sums(data.row_blocks(), labels, n_classes, n_features)
        if parallel is not None:  # every rank's labelled cells: the same markers on every rank
            sums = [sum(parts) for parts in zip(*parallel.gather(sums), strict=True)]
        counts, log_sums, share_sums = sums
        present = np.flatnonzero(counts)
        names = ("class_expression_", "class_markers_", "class_marker_shares_", "class_marker_centres_",
                 "class_marker_spreads_", "class_profile_centres_", "class_profile_spreads_",
                 "class_profile_quantiles_")
        if fresh:
            expression = np.full((n_classes, n_features), np.nan, dtype=np.float32)
            markers = np.full((n_classes, _markers.N_MARKERS), -1, dtype=np.int64)
            shares, centres, spreads = (np.full(n_classes, np.nan) for _ in range(3))
        else:
            expression, markers, shares, centres, spreads = (getattr(self, name).copy() for name in names[:5])
        # a save from before the profile test learns every labelled type's anew; the others' stay untested (NaN)
        profile_centres, profile_spreads, profile_quantiles = (
            getattr(self, name).copy() if not fresh and hasattr(self, name) else np.full(shape, np.nan)
            for name, shape in zip(names[5:], ((n_classes,), (n_classes,), (n_classes, _QUANTILES)), strict=True))
        # a model saved before class_shares_ learns every labelled type's anew; the others' stay unknown (NaN)
        gene_shares = getattr(self, "class_shares_", None)
        gene_shares = np.full((n_classes, n_features), np.nan, dtype=np.float32) if fresh or gene_shares is None \
            else gene_shares.copy()
        expression[present] = log_sums[present] / counts[present, None]
        gene_shares[present] = share_sums[present] / counts[present, None]
        for c, genes in _markers.choose_markers(expression, present).items():
            markers[c] = -1
            markers[c, :len(genes)] = genes
            shares[c] = share_sums[c, genes].sum() / counts[c]
        profiles = _markers.log_profiles(gene_shares)
        scores = _markers.shortfalls(data.row_blocks(), labels, _markers.marker_indicator(markers, n_features), shares,
                                     profile_shares=gene_shares, leave_out=counts)
        scores = (*scores, labels)
        if parallel is not None:
            scores = [np.concatenate(parts) for parts in zip(*parallel.gather(scores), strict=True)]
        shortfall, expected, likelihood, totals, labels = scores
        new_centres, new_spreads = _markers.centres_and_spreads(shortfall, 1.0 / (expected + 0.5), labels, n_classes)
        centres[present], spreads[present] = new_centres[present], new_spreads[present]
        calibration = _markers.profile_calibration(likelihood, totals, labels, profiles, _QUANTILES)
        for old, new in zip((profile_centres, profile_spreads, profile_quantiles), calibration, strict=True):
            old[present] = new[present]
        self.class_expression_, self.class_markers_, self.class_shares_ = expression, markers, gene_shares
        self.class_marker_shares_, self.class_marker_centres_, self.class_marker_spreads_ = shares, centres, spreads
        self.class_profile_centres_, self.class_profile_spreads_, self.class_profile_quantiles_ = (
            profile_centres, profile_spreads, profile_quantiles)

    def _calibrate(self, codes, labels, incremental):
        """Each type's centre, precision and quantiles of its cells' squared Mahalanobis distances to it."""
        n_classes, k = len(self.classes_), self.n_components
        present = np.unique(labels)
        # a partial_fit chunk without a type keeps what earlier calls learned of it
        fresh = not (incremental and hasattr(self, "class_means_"))
        # a model loaded from a save before class_counts_ existed: its types' Gaussians came from many cells
        counts = np.zeros(n_classes, dtype=np.int64) if fresh else getattr(self, "class_counts_", np.where(
            np.isnan(self.class_means_[:, 0]), 0, _CALIBRATION_ROWS)).copy()
        means = np.full((n_classes, k), np.nan) if fresh else self.class_means_.copy()
        precisions = np.full((n_classes, k, k), np.nan) if fresh else self.class_precisions_.copy()
        quantiles = np.full((n_classes, _QUANTILES), np.nan) if fresh else self.class_distance_quantiles_.copy()
        for c in present:
            means[c] = codes[labels == c].mean(axis=0)
            counts[c] = np.sum(labels == c)
        # a type of one labelled cell, or whose cells share one code, borrows the within-type covariance of all
        pooled = ledoit_wolf(codes - means[labels])[0] if len(codes) > 1 else np.eye(k)
        if np.trace(pooled) <= 0:  # every labelled cell of every type on its type's one code: a unit spread
            pooled = np.eye(k)
        collapsed = []
        for c in present:
            own = codes[labels == c]
            covariance = ledoit_wolf(own)[0] if len(own) > 1 else pooled
            if np.trace(covariance) <= 1e-12 * np.trace(pooled):
                collapsed.append(self.classes_[c])
                covariance = pooled
            precisions[c] = np.linalg.pinv(covariance + 1e-6 * np.trace(covariance) / k * np.eye(k), hermitian=True)
            quantiles[c] = np.quantile(_squared_distances(own, means[c], precisions[c]),
                                       np.linspace(0.0, 1.0, _QUANTILES))
        if collapsed and len(codes) > 1:
            warnings.warn(f"The labelled cells of type(s) {[_plain(name) for name in collapsed]} share one code, so "
                          "their own spread is none: their Gaussians take the spread of all types' cells around their "
                          "centres. Check that these labels mark distinct cells (or that the model did not collapse).",
                          UserWarning, stacklevel=2)
        stale = [self.classes_[c] for c in np.flatnonzero(~np.isnan(means[:, 0])) if c not in present]
        if incremental and stale:
            warnings.warn(f"This partial_fit trained the model on cells without a label of type(s) "
                          f"{[_plain(name) for name in stale][:10]}: their Gaussians (predict, typicality) are those "
                          "of an earlier call's codes, which have moved since. Give each call labelled cells of every "
                          "type (or fit anew) to keep them current.", UserWarning, stacklevel=2)
        self.class_means_, self.class_precisions_, self.class_distance_quantiles_ = means, precisions, quantiles
        self.class_counts_ = counts

    @property
    def _tests_markers(self):
        # a model of scaled data has no markers; a save from before round 11 none either
        return getattr(self, "class_markers_", np.zeros((0, 0))).shape[1] > 0

    @property
    def _tests_profiles(self):
        # a save from before round 13 has no profile test
        return getattr(self, "class_profile_quantiles_", np.zeros((0, 0))).shape[1] > 0

    def _fitted_codes(self, X, batch):
        return self._map_rows("embed", self._fitted_data(X, batch)).astype(np.float64)

    def _scores(self, codes, groups=None, data=None):
        """Each cell's posterior probability of each type and its typicality of the most probable one.

        The probabilities are the types' Gaussian densities of the code, every type equally likely a priori; one
        squared Mahalanobis distance per cell and type serves both. ``groups``: each cell's batch (the typicality is
        calibrated within each, :meth:`_shift_scales`), or None (all cells one group). ``data``: the cells' counts
        (a RowData), whose shortfall of the called type's markers and profile likelihood give a second and third
        p-value (:mod:`skvae._markers`); the typicality is the smallest, its median over each cell's
        ``unknown_neighbors`` nearest cells of its group called the same type.
        """
        if np.isnan(self.class_means_).all():
            raise ValueError(f"This {type(self).__name__} has seen no labelled cell yet, so it knows no type to name: "
                             "call partial_fit (or fit) with cells whose label y gives.")
        distances = np.full((len(codes), len(self.classes_)), np.inf)
        log_density = np.full_like(distances, -np.inf)
        for c, (mean, precision) in enumerate(zip(self.class_means_, self.class_precisions_, strict=True)):
            if not np.isnan(mean).any():  # a type no call has labelled is never predicted
                distances[:, c] = _squared_distances(codes, mean, precision)
                log_density[:, c] = -0.5 * (distances[:, c] - np.linalg.slogdet(precision)[1])
        probabilities = softmax(log_density, axis=1)
        called = probabilities.argmax(axis=1)
        own = distances[np.arange(len(codes)), called]
        own = own / self._shift_scales(own, called, groups)
        typical = np.empty(len(codes))
        levels = np.linspace(0.0, 1.0, _QUANTILES)
        counts = getattr(self, "class_counts_", None)  # saves from before 0.5 have none: a large sample
        for c in np.unique(called):
            rows = called == c
            quantiles = self.class_distance_quantiles_[c]
            beyond = 1.0 - np.interp(own[rows], quantiles, levels, left=0.0, right=1.0)
            if counts is None:
                typical[rows] = beyond
                continue
            # the conformal p-value among the type's n labelled cells; past the farthest, the Gaussian's tail beyond
            # it (chi-square)
            typical[rows] = _markers.conformal_pvalues(
                beyond, own[rows] > quantiles[-1],
                chi2.logsf(own[rows], self.n_components) - chi2.logsf(quantiles[-1], self.n_components), counts[c])
        if data is not None and self._tests_markers:
            typical = np.minimum(typical, np.minimum(*self._count_pvalues(data, called, groups)))
        # neighbourhoods among the cells of a batch called the same type: a cell named a type apart from its
        # neighbours (a monocyte among the progenitors a population the reference lacks was named) is judged with
        # the cells named as it is
        within = called if groups is None else pd.MultiIndex.from_arrays([groups, called]).factorize()[0]
        typical = _neighbourhood_medians(codes, typical, within, self.unknown_neighbors)
        if data is None or self.unknown_counterparts is None:
            return probabilities, typical
        # a cell whose population has no counterpart among the reference's is of a type the reference lacks
        return probabilities, np.where(self._counterpart_distances(data, groups) > self.unknown_counterparts, 0.0,
                                       typical)

    def _counterpart_distances(self, data, groups):
        """Each cell's cluster's distance to the nearest cluster of the reference's labelled cells
        (:func:`~skvae._counterparts.query_distances`); NaN (never beyond the threshold) where not compared or where
        the model has no reference clusters."""
        if getattr(self, "reference_cluster_halves_", None) is None:
            return np.full(data.n_rows, np.nan)
        return query_distances(data, groups, self.reference_cluster_genes_, self.reference_cluster_halves_,
                               self.reference_cluster_batches_)

    def _count_pvalues(self, data, called, groups):
        """The marker and profile tests' p-values of the cells of ``data`` (a RowData) called ``called``, calibrated
        per group, the marker test's spread widened by what each group's technology moves a type's markers
        (``class_shares_``; a save from before it: not widened, and no profile test; a save from before the profile
        test: its p-values all 1)."""
        reference_shares = getattr(self, "class_shares_", None)
        profiles = None if reference_shares is None or not self._tests_profiles else \
            _markers.log_profiles(reference_shares)
        group_of, labels = pd.factorize(np.zeros(len(called)) if groups is None else groups)
        genes = np.zeros(0, dtype=np.int64) if reference_shares is None else _markers.tracked_genes(reference_shares)
        sums = np.zeros((len(labels), len(self.classes_), len(genes)))
        scores = _markers.shortfalls(
            data.row_blocks(), called, _markers.marker_indicator(self.class_markers_, self.n_features_in_),
            self.class_marker_shares_, profile_shares=None if profiles is None else reference_shares, sums=sums,
            group_of=group_of, genes=genes)
        added = None
        if reference_shares is not None:
            counts = np.zeros((len(labels), len(self.classes_)))
            np.add.at(counts, (group_of, called), 1)
            added = (_markers.technology_variances(sums, counts, reference_shares, genes)[group_of]
                     * _markers.marker_sensitivities(reference_shares, self.class_markers_)[called])
        markers = _markers.marker_pvalues(scores.shortfall, scores.expected, called, self.class_marker_centres_,
                                          self.class_marker_spreads_, groups, added)
        if profiles is None:
            return markers, np.ones(len(called))
        calibration = (self.class_profile_centres_, self.class_profile_spreads_, self.class_profile_quantiles_)
        labelled = getattr(self, "class_counts_", np.full(len(self.classes_), _CALIBRATION_ROWS))  # before 0.5: many
        return markers, _markers.profile_pvalues(scores.likelihood, scores.totals, called, profiles, calibration,
                                                 labelled, groups)

    def _groups(self, batch, n_cells):
        """Each cell's group, whose shift the typicality is calibrated within: its categorical covariates' labels."""
        if batch is None:
            return None
        covariates = getattr(self, "covariates_", None)
        return combined_labels(batch, n_cells) if covariates is None else covariates.group_labels(batch, n_cells)

    def _shift_scales(self, distances, called, groups):
        """Each cell's scale of its distance: how much farther the cells of its group lie from their types.

        The lower quartile of a group's distances (a batch of ``batch=``, or all the cells given), each relative to
        its type's labelled cells' lower quartile: above 1 where the group lies farther from the reference than the
        reference's own cells (a batch effect integration left), below where it lies closer (deeper cells); the
        group's distances are divided by it. At least ``_CALIBRATION_CELLS`` cells of types labelled on
        ``_CALIBRATION_CELLS`` cells or more make a group's own scale; a smaller group takes all the cells', and
        fewer cells than that in all take 1 (none).
        """
        quartiles = self.class_distance_quantiles_[:, _QUANTILES // 4]
        counts = getattr(self, "class_counts_", np.full(len(self.classes_), np.inf))
        reliable = (counts >= _CALIBRATION_CELLS) & (quartiles > 0)
        ratios = np.where(reliable[called], distances / np.where(reliable, quartiles, 1.0)[called], np.nan)
        scales = np.empty(len(distances))
        # a lower quartile of 0 calibrates nothing: the group takes all the cells' (or none)
        for rows, scale in _markers.group_calibrations(ratios, groups,
                                                       lambda values: float(np.quantile(values, 0.25)) or None):
            scales[rows] = scale or 1.0
        return scales

    def predict_proba(self, X, *, batch=None):
        """Each cell's probability of each type of ``classes_``, from its code.

        Parameters
        ----------
        X : {array-like, sparse matrix, anndata.abc.CSRDataset} of shape (n_samples, n_features)
            Data with the features seen in ``fit``.
        batch : array-like of shape (n_samples,), DataFrame or dict, default=None
            Read only when the encoder takes it (``encode_batch=True``), as for :meth:`transform`.

        Returns
        -------
        ndarray of shape (n_samples, n_classes)
        """
        return self._scores(self._fitted_codes(X, batch))[0]

    def predict_log_proba(self, X, *, batch=None):
        """The logarithm of :meth:`predict_proba`.

        Parameters
        ----------
        X : {array-like, sparse matrix, anndata.abc.CSRDataset} of shape (n_samples, n_features)
        batch : array-like of shape (n_samples,), DataFrame or dict, default=None

        Returns
        -------
        ndarray of shape (n_samples, n_classes)
        """
        with np.errstate(divide="ignore"):
            return np.log(self.predict_proba(X, batch=batch))

    def predict(self, X, *, batch=None):
        """Each cell's most probable type, one of ``classes_`` (:meth:`is_unknown` says which to distrust).

        Parameters
        ----------
        X : {array-like, sparse matrix, anndata.abc.CSRDataset} of shape (n_samples, n_features)
        batch : array-like of shape (n_samples,), DataFrame or dict, default=None

        Returns
        -------
        ndarray of shape (n_samples,)
        """
        probabilities = self.predict_proba(X, batch=batch)
        return self.classes_[probabilities.argmax(axis=1)]

    def typicality(self, X, *, batch=None):
        """How typical each cell is of the type it is called: a p-value of its distance among that type's cells.

        The squared Mahalanobis distance of the cell's code to the centre of its
        predicted type (``class_means_``, ``class_precisions_``), compared with the
        distances of the type's ``n`` labelled cells in ``fit``
        (``class_distance_quantiles_``, ``class_counts_``): (1 + the number of
        them farther away) / (n + 1), a conformal p-value, so about a share ``t``
        of the reference's own cells have one below ``t`` (before the
        neighbourhoods below, which lower that), and none of a type's labelled
        cells has one below 1 / (n + 1). Past the farthest of
        them it falls further with the type's Gaussian tail (chi-square), so a
        cell far from a type of few labelled cells is still told.

        Calibrated to the query: a batch other than the reference's lies farther
        from every type where integration left a batch effect, and would be
        flagged throughout. So the distances of the cells given together, each
        batch of ``batch`` apart (all the cells when ``batch`` is None), are
        first divided by how much farther (or closer) their lower quartile lies
        than the reference's own (relative to each called type's labelled
        cells; from 50 cells or more; fewer take all the cells', or none): a
        cell's typicality then depends on the other cells of its batch given
        with it. This assumes at least a quarter of a batch's cells are of types
        the reference has; the user guide gives the evidence.

        In a model of counts, the typicality is the smaller of that and a
        second p-value: whether the cell holds its called type's marker genes
        (``class_markers_``). Its shortfall, ``log((observed + 1/2) / (expected
        + 1/2))`` with ``expected`` its total count times the type's share
        on them, is compared with the type's labelled cells' (median and spread
        beyond counting noise, so deep and shallow cells are judged alike), each
        batch then centred on its own median and widened to its own spread
        (assuming most of a batch's cells are of types the reference has),
        and read in the normal's lower tail. A batch's technology moves each
        gene by its own factor, so each type's markers by a different amount:
        the spread is widened by that, the factors' spread measured per batch
        between the cells named each type and the type's labelled cells
        (``class_shares_``; the median over the types, so one population named
        a type it is not does not pass for a technology). A cell whose code
        lies among a type's but which lacks what marks the type (a population
        the reference lacks, folded onto its nearest type) is flagged by it.

        A third p-value asks whether the cell spends its counts as the type's
        cells do: its profile likelihood, the mean log-probability of its
        counts under the type's expression profile (``class_shares_``, each
        gene floored at one in a million), is compared with the type's
        labelled cells' (median and spread beyond counting noise; each labelled
        cell judged by the profile without itself), each type called on 50
        cells or more of a batch then centred on its own median (a technology
        moves each type's by its own amount; this assumes a population the
        reference lacks is fewer than half of the cells named any one type; a
        type called on fewer cells of a batch is not judged by it there) and
        the batch widened to its own spread; the p-value is the share of the
        type's labelled cells scoring lower (``class_profile_quantiles_``;
        their tails are heavier than the normal's). A population the reference
        lacks that holds a type's markers and more (CD34+ progenitors named T
        cells) is flagged by it.

        Last, each cell's p-value (the smallest of the three) is replaced by the
        median of its own and those of its ``unknown_neighbors`` nearest cells
        (Euclidean, in the codes) among the cells of its batch given with it
        and called the same type: a decision about populations, not single
        cells (0: each cell alone).

        Then, in a model of counts, the cells of a population with no
        counterpart in the reference get typicality 0
        (``unknown_counterparts``): the cells of each batch given together are
        clustered and each cluster's pooled counts compared with the clusters
        of the reference's labelled cells, a per-gene factor between the
        batches removed. A type the reference lacks is told there even where
        its cells' codes, markers and profile pass for a known type's
        (FCGR3A+ monocytes named CD14+ monocytes by a reference without them),
        and a known type in a new technology is not
        (its factor is removed). This assumes most of a batch's clusters are
        of types the reference has: the factor is estimated from the clusters
        that match.

        Parameters
        ----------
        X : {array-like, sparse matrix, anndata.abc.CSRDataset} of shape (n_samples, n_features)
        batch : array-like of shape (n_samples,), DataFrame or dict, default=None
            Each cell's batch: read by an encoder that takes it, as for
            :meth:`transform`, and the groups whose shift is calibrated.

        Returns
        -------
        ndarray of shape (n_samples,)
            In [0, 1].
        """
        data = self._fitted_data(X, batch)
        codes = self._map_rows("embed", data).astype(np.float64)
        return self._scores(codes, self._groups(batch, len(codes)), data)[1]

    def classify_codes(self, codes, *, X=None, batch=None):
        """:meth:`predict_proba` and :meth:`typicality` of codes already embedded (:meth:`transform`'s), in one pass.

        For a caller that has the cells' codes (e.g. :func:`skvae.tl.annotate`,
        which writes them too): the cells are not embedded again.

        Parameters
        ----------
        codes : array-like of shape (n_samples, n_components)
            The cells' codes, from this fitted model's :meth:`transform`.
        X : {array-like, sparse matrix, anndata.abc.CSRDataset} of shape (n_samples, n_features), default=None
            The same cells' data: a model of counts needs it for the typicality's
            marker test (None is refused then); a model of scaled data ignores it.
        batch : array-like of shape (n_samples,), DataFrame or dict, default=None
            Each cell's batch: the groups whose shift the typicality is
            calibrated within (all the cells together when None).

        Returns
        -------
        probabilities : ndarray of shape (n_samples, n_classes)
        typicality : ndarray of shape (n_samples,)

        Examples
        --------
        >>> import numpy as np
        >>> from skvae import BetaVAEClassifier
        >>> rng = np.random.RandomState(0)
        >>> X = rng.poisson(rng.gamma(0.5, 2.0, size=(2, 30))[np.arange(60) % 2]).astype(float)
        >>> model = BetaVAEClassifier(2, hidden_layer_sizes=(16,), likelihood="nb", max_epochs=5,
        ...                           random_state=0).fit(X, np.arange(60) % 2)
        >>> probabilities, typicality = model.classify_codes(model.transform(X), X=X)
        >>> np.allclose(probabilities, model.predict_proba(X)), np.allclose(typicality, model.typicality(X))
        (True, True)
        """
        check_is_fitted(self)
        codes = check_array(codes, dtype=np.float64)
        if codes.shape[1] != self.n_components:
            raise ValueError(f"codes has {codes.shape[1]} columns, but this {type(self).__name__} has "
                             f"{self.n_components} components: pass its transform's codes.")
        data = None
        if self._tests_markers:
            if X is None:
                raise ValueError(f"This {type(self).__name__} models counts, and its typicality also asks whether "
                                 "each cell holds its type's marker genes: pass X=, the cells' counts (what "
                                 "transform embedded into codes).")
            data = self._input(X, None, required=False)
            if data.n_rows != len(codes):
                raise ValueError(f"X has {data.n_rows} cells but codes {len(codes)}: pass the same cells' codes and "
                                 "data.")
        return self._scores(codes, self._groups(batch, len(codes)), data)

    def is_unknown(self, X, *, batch=None):
        """Whether each cell is of a type the reference lacks: its :meth:`typicality` is below ``unknown_threshold``.

        Parameters
        ----------
        X : {array-like, sparse matrix, anndata.abc.CSRDataset} of shape (n_samples, n_features)
        batch : array-like of shape (n_samples,), DataFrame or dict, default=None

        Returns
        -------
        ndarray of bool of shape (n_samples,)
        """
        return self.typicality(X, batch=batch) < self.unknown_threshold

    def score(self, X, y, sample_weight=None, *, batch=None):
        """The accuracy of :meth:`predict` on the labelled cells of ``y`` (scikit-learn's classifier score).

        Parameters
        ----------
        X : {array-like, sparse matrix, anndata.abc.CSRDataset} of shape (n_samples, n_features)
        y : array-like of shape (n_samples,)
            True types; unlabelled cells (-1, None, NaN) are left out.
        sample_weight : array-like of shape (n_samples,), default=None
        batch : array-like of shape (n_samples,), DataFrame or dict, default=None

        Returns
        -------
        score : float
        """
        labels, labelled = split_labels(y)
        n_cells = X.shape[0] if hasattr(X, "shape") else len(X)
        if len(labels) != n_cells:
            raise ValueError(f"y has {len(labels)} labels for {n_cells} cells of X: give one per cell.")
        if not labelled.any():
            raise ValueError("y labels no cell (all are -1, None or NaN): score is the accuracy on the labelled cells.")
        if sample_weight is not None:
            sample_weight = _one_column(sample_weight, "sample_weight")
            if len(sample_weight) != n_cells:
                raise ValueError(f"sample_weight has {len(sample_weight)} weights for {n_cells} cells of X: give one "
                                 "per cell.")
            sample_weight = sample_weight[labelled]
        return accuracy_score(labels[labelled], self.predict(X, batch=batch)[labelled], sample_weight=sample_weight)


def _neighbourhood_medians(codes, values, groups, n_neighbors):
    """Each cell's median of ``values`` over itself and its ``n_neighbors`` nearest cells of its group.

    Nearest in Euclidean distance between ``codes``; a group (a batch of
    ``groups``; all the cells one group when None) of ``n`` cells takes at most
    ``n - 1`` neighbours, so a lone cell keeps its own value, as every cell does
    with ``n_neighbors=0``.

    Parameters
    ----------
    codes : ndarray of shape (n_cells, n_components)
    values : ndarray of shape (n_cells,)
    groups : ndarray of shape (n_cells,) or None
    n_neighbors : int

    Returns
    -------
    ndarray of shape (n_cells,)

    Examples
    --------
    >>> import numpy as np
    >>> codes = np.array([[0.0], [0.1], [0.2], [5.0], [5.1], [5.2]])
    >>> values = np.array([0.5, 0.001, 0.6, 0.001, 0.002, 0.7])  # a population of low values, one high among them
    >>> _neighbourhood_medians(codes, values, None, 2).tolist()
    [0.5, 0.5, 0.5, 0.002, 0.002, 0.002]
    """
    medians = np.array(values, dtype=np.float64)
    if n_neighbors < 1:
        return medians
    for rows in map(np.flatnonzero, _markers.group_rows(groups, len(medians))):
        k = min(n_neighbors, len(rows) - 1)
        if k < 1:
            continue
        # each cell's k nearest others (kneighbors without X leaves the cell itself out), and the cell
        neighbours = NearestNeighbors(n_neighbors=k).fit(codes[rows]).kneighbors(return_distance=False)
        medians[rows] = np.median(values[rows][np.column_stack([np.arange(len(rows)), neighbours])], axis=1)
    return medians


def _squared_distances(codes, mean, precision):
    centred = codes - mean
    return np.einsum("ij,jk,ik->i", centred, precision, centred)


def _check_type_statistics(attributes, n_components, path):
    """A ValueError naming ``path`` unless a save's classes and types' Gaussians are whole and consistent.

    The classes are distinct and sorted (as ``fit`` makes them); each type's mean,
    precision and distance quantiles are all NaN (a type no call labelled) or finite,
    of the shapes the classes and the code's width give: a symmetric precision with no
    negative eigenvalue, quantiles non-negative and non-decreasing.
    """
    def damaged(what):
        return ValueError(f"{path} is damaged: its classifier's {what}.")

    names = ("classes_", "class_means_", "class_precisions_", "class_distance_quantiles_")
    missing = [name for name in names if not isinstance(attributes.get(name), np.ndarray)]
    if missing:
        raise damaged(f"fields {missing} are missing or malformed")
    classes, means, precisions, quantiles = (attributes[name] for name in names)
    counts = attributes.get("class_counts_")  # saves from before 0.5 have none
    if counts is not None and not (isinstance(counts, np.ndarray) and counts.shape == classes.shape
                                   and counts.dtype.kind in "iu" and (counts >= 0).all()):
        raise damaged("counts of labelled cells are not one non-negative integer per class")
    if classes.ndim != 1 or len(classes) < 2 or len(np.unique(classes)) != len(classes) or \
            not np.array_equal(np.unique(classes), classes):
        raise damaged("classes are not two or more distinct labels in order")
    n, k = len(classes), n_components
    if not (isinstance(k, int) and means.shape == (n, k) and precisions.shape == (n, k, k)
            and quantiles.shape == (n, _QUANTILES)) or any(a.dtype.kind != "f" for a in (means, precisions, quantiles)):
        raise damaged(f"types' statistics are not of the shapes of its {n} classes and {k} components")
    for c in range(n):
        parts = (means[c], precisions[c], quantiles[c])
        if all(np.isnan(part).all() for part in parts):
            continue  # a type no call has labelled
        if not all(np.isfinite(part).all() for part in parts):
            raise damaged(f"statistics of type {classes[c]!r} are not all finite numbers")
        if not np.allclose(precisions[c], precisions[c].T) or \
                np.linalg.eigvalsh(precisions[c]).min() < -1e-8 * max(1.0, np.abs(precisions[c]).max()):
            raise damaged(f"precision of type {classes[c]!r} is not a symmetric, positive semi-definite matrix")
        if quantiles[c][0] < 0 or (np.diff(quantiles[c]) < 0).any():
            raise damaged(f"distance quantiles of type {classes[c]!r} are negative or decreasing")


def _check_markers(attributes, n_features, path):
    """A ValueError naming ``path`` unless a save's marker genes and genes' shares fit its classes and genes (a save
    from before round 11 has none: its typicality is its codes' alone)."""
    names = ("class_expression_", "class_markers_", "class_marker_shares_", "class_marker_centres_",
             "class_marker_spreads_")
    if not any(name in attributes for name in names):
        return
    if not all(isinstance(attributes.get(name), np.ndarray) for name in names):
        raise ValueError(f"{path} is damaged: its classifier's marker fields are missing or malformed.")
    expression, markers, *per_type = (attributes[name] for name in names)
    n = len(attributes["classes_"])
    width = markers.shape[1] if markers.ndim == 2 else -1
    if not (markers.shape == (n, width) and width in (0, _markers.N_MARKERS) and markers.dtype.kind in "iu"
            and expression.shape == (n, n_features if width else 0) and expression.dtype.kind == "f"
            and all(values.shape == (n,) and values.dtype.kind == "f" for values in per_type)
            and (markers.size == 0 or (markers.min() >= -1 and markers.max() < n_features))):
        raise ValueError(f"{path} is damaged: its classifier's marker genes are not of the shapes of its {n} classes "
                         f"and {n_features} genes.")
    # a save from round 11 has markers but no genes' shares: its marker test allows for no technology
    shares = attributes.get("class_shares_")
    if shares is not None and not (isinstance(shares, np.ndarray) and shares.dtype.kind == "f"
                                   and shares.shape == expression.shape):
        raise ValueError(f"{path} is damaged: its classifier's class_shares_ are not of the shape of its "
                         f"class_expression_ {expression.shape}.")
    # a save from round 12 or before has no profile test
    profile = [attributes.get(name) for name in ("class_profile_centres_", "class_profile_spreads_",
                                                 "class_profile_quantiles_")]
    if any(value is not None for value in profile):
        centres, spreads, quantiles = profile
        if not (all(isinstance(value, np.ndarray) and value.dtype.kind == "f" for value in profile)
                and shares is not None and centres.shape == spreads.shape == (n,) and quantiles.ndim == 2
                and quantiles.shape == (n, _QUANTILES if width else 0)
                and not (np.diff(quantiles, axis=1) < 0).any()):
            raise ValueError(f"{path} is damaged: its classifier's profile test fields are missing or not of the "
                             f"shapes of its {n} classes.")


def _check_reference_clusters(attributes, n_features, path):
    """A ValueError naming ``path`` unless a save's reference clusters (``unknown_counterparts``) are all there and
    of consistent shapes, or all absent (a save from before round 19, or a model without them)."""
    genes, halves, batches = (attributes.get(name) for name in REFERENCE_ATTRIBUTES)
    if genes is None and halves is None and batches is None:
        return
    if not (all(isinstance(value, np.ndarray) for value in (genes, halves, batches))
            and genes.ndim == 1 and genes.dtype.kind in "iu" and (genes.size == 0 or (genes.min() >= 0 and
                                                                                      genes.max() < n_features))
            and halves.dtype.kind == "f" and halves.shape == (2, len(batches), len(genes))
            and batches.ndim == 1 and batches.dtype.kind in "iu"):
        raise ValueError(f"{path} is damaged: its classifier's reference clusters are missing or not of consistent "
                         "shapes.")
