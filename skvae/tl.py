"""Scanpy-style tools on AnnData objects: ``skvae.tl.embed``, ``skvae.tl.annotate`` and ``skvae.tl.decode``.

AnnData is an optional extra (``pip install -e ".[anndata]"`` in a clone, or ``pip install anndata``): it is
imported when a function here is called, never by ``import skvae``.
"""

import contextlib
import importlib
import warnings

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.exceptions import NotFittedError
from sklearn.feature_selection import SelectorMixin
from sklearn.utils import get_tags
from sklearn.utils.validation import check_is_fitted

from ._settings import settings
from ._validation import holds_raw_counts, is_on_disk
from .pipeline import _batch_for, _fit_transform_steps, _flat_steps, _takes_batch, _transform_steps


def embed(adata, estimator, *, layer=None, batch_key=None, use_highly_variable=None, key_added=None, copy=False):
    """Embed the cells of an AnnData object, scanpy-style.

    Fits ``estimator`` on the chosen matrix and embeds it, or, when ``estimator``
    is already fitted, embeds it only. The codes go to ``adata.obsm["X_skvae"]``,
    the estimator's parameters and training history to ``adata.uns["skvae"]``, as
    ``scanpy.tl.pca`` writes ``obsm["X_pca"]`` and ``uns["pca"]``. The codes are
    exactly those of the estimator's ``transform``, column for column, so codes
    written by any call (the training cells, a query embedded later, a saved and
    loaded copy of the model) are interchangeable: they go into one neighbour
    graph, a label-transfer classifier or ``inverse_transform`` as they are.
    ``uns["skvae"]["variance"]`` holds each column's variance over these cells.
    The estimator passed in is fitted in place: the caller holds it, and needs it
    to embed more cells or to decode (:func:`decode`).

    Parameters
    ----------
    adata : anndata.AnnData
        Cells in rows. It may be backed (``anndata.read_h5ad(path, backed="r")``):
        a sparse CSR matrix on disk is then trained on and embedded a few
        minibatches at a time, without loading it; the gene selection of
        :func:`skvae.make_count_embedder` streams over it in two passes of
        bounded blocks of rows and selects the genes it would in memory.
    estimator : scikit-learn transformer or Pipeline
        E.g. the result of :func:`skvae.make_count_embedder`, or
        ``BetaVAEEmbedder(likelihood="nb")``; fitted or not.
    layer : str, default=None
        The matrix to embed: ``adata.layers[layer]``, or ``adata.X`` when None.
        Count likelihoods need raw counts, commonly kept in ``layers["counts"]``.
    batch_key : str or list of str, default=None
        Column of ``adata.obs`` with each cell's batch (sample, donor,
        technology): the model is fitted conditioned on it, which integrates the
        batches (see the estimators' ``batch``); in a Pipeline, every step whose
        ``fit`` (or, when fitted, ``transform``) takes a ``batch`` gets it
        (:func:`skvae.make_count_embedder`'s gene selection ranks genes within
        each batch), without scikit-learn's metadata routing. Read once, also for
        a backed object. None: no batches. A fitted estimator must have been
        fitted with batches. A list of columns conditions on each of them
        (e.g. ``["sample", "technology"]``, scVI's ``batch_key`` plus
        ``categorical_covariate_keys``); a gene selection then ranks genes
        within each combination of their values.
    use_highly_variable : bool, default=None
        Embed only the genes flagged in ``adata.var["highly_variable"]`` (by
        ``scanpy.pp.highly_variable_genes``). None: use them when that column
        exists, unless the estimator selects its genes itself (a Pipeline with a
        feature-selection step, such as :func:`skvae.make_count_embedder`'s
        ``HighlyVariableGenes``), which then gets every gene. True with such an
        estimator warns: two selections are made, one after the other. A backed
        file cannot be subset by gene on the fly: write the selected genes to
        their own file first.
    key_added : str, default=None
        Key of the codes in ``adata.obsm`` and of the record in ``adata.uns``
        (both); None: ``obsm["X_skvae"]`` and ``uns["skvae"]``.
    copy : bool, default=False
        Return a modified copy of ``adata`` instead of writing into it (an
        object in memory only).

    Returns
    -------
    adata : anndata.AnnData or None
        The modified copy with ``copy=True``, else None. The estimator passed in
        is fitted: when fitted here, its (first step's) ``feature_names_in_``
        holds the genes' names. A later call with the fitted estimator takes
        those genes from ``adata`` by name, in the estimator's order (another
        AnnData may hold more genes, in any order; ``use_highly_variable`` is
        then not used). Called directly, the estimator checks the genes'
        names of a DataFrame (``adata.to_df()``) and, as every scikit-learn
        estimator fitted with names does, warns that a bare matrix's columns
        cannot be checked: the warning is kept on purpose, since a matrix
        with its genes in another order gives wrong codes without an error.

    Raises
    ------
    ValueError
        A missing layer or ``highly_variable`` column; genes the fitted estimator
        knows that ``adata`` lacks; a layer that is not raw counts (negative or
        non-integer values) for a count likelihood; a backed matrix with a step
        that needs it in memory (anything but skvae's estimators and
        :class:`~skvae.preprocessing.HighlyVariableGenes`); a ``batch_key`` that
        no step reads, or none for a model that reads each cell's batch to embed
        it (``encode_batch=True``, or after ``map_query``).
    TypeError
        ``adata`` is not an AnnData object.

    Notes
    -----
    While a model trains, its progress shows where a person watches (a
    terminal or a notebook), as ``skvae.settings.verbosity`` says (scanpy's
    ``settings.verbosity``: 0 silences it, 2 shows it in scripts too); the
    estimators themselves stay silent unless their ``verbose`` asks.

    Another ``random_state`` gives another embedding, and clusters found on it
    move with it: over 9 seeds of :func:`~skvae.make_count_embedder`, Leiden's ARI
    ranged 0.58-0.64 on PBMC3k and 0.67-0.71 on purified blood cells (the user
    guide's scanpy section). Pass a ``random_state`` to reproduce a result, and
    trust clusters that persist across a few seeds.

    Examples
    --------
    >>> import anndata
    >>> import numpy as np
    >>> import skvae
    >>> rng = np.random.RandomState(0)
    >>> counts = rng.poisson(rng.gamma(0.3, 2.0, size=(3, 300))[rng.randint(3, size=200)]).astype(np.float32)
    >>> adata = anndata.AnnData(np.log1p(counts), layers={"counts": counts})
    >>> estimator = skvae.BetaVAEEmbedder(n_components=4, likelihood="nb", max_epochs=5, random_state=0)
    >>> skvae.tl.embed(adata, estimator, layer="counts")
    >>> adata.obsm["X_skvae"].shape, adata.uns["skvae"]["params"]["likelihood"]
    ((200, 4), 'nb')
    """
    _require_anndata(adata)
    _check_arguments(estimator, key_added, use_highly_variable)
    adata = _copied(adata, copy)
    run = _Run(adata, estimator, layer, batch_key, use_highly_variable)
    codes = run.transform() if run.fitted else run.fit()
    keys = ("X_skvae", "skvae") if key_added is None else (key_added, key_added)
    _write(adata, **_records(run, codes, estimator, layer, batch_key, keys))
    return adata if copy else None


def annotate(adata, estimator, *, labels_key=None, layer=None, batch_key=None, use_highly_variable=None,
             map_query=False, key_added=None, copy=False):
    """Name the cells of an AnnData object with a cell-type classifier, scanpy-style.

    With an unfitted :class:`~skvae.BetaVAEClassifier` (or
    :func:`skvae.make_count_classifier`), fits it on ``adata``, learning from the
    cells ``obs[labels_key]`` labels (the others, None / NaN, are named: a
    reference and a query fitted together), then names every cell. With a
    fitted one, names the cells only; ``map_query=True`` first maps the cells of
    batches the model has not seen onto it (:meth:`~skvae.BetaVAEClassifier.map_query`,
    the reference frozen). Writes, with ``prefix`` ``key_added`` or "skvae":

    - ``obsm[f"X_{prefix}"]`` the codes and ``uns[prefix]`` the record, as :func:`embed`;
    - ``obs[f"{prefix}_prediction"]``: the most probable type (categorical);
    - ``obs[f"{prefix}_probability"]``: its probability;
    - ``obs[f"{prefix}_typicality"]``: :meth:`~skvae.BetaVAEClassifier.typicality`;
    - ``obs[f"{prefix}_unknown"]``: whether the cell is of no type the reference
      has (:meth:`~skvae.BetaVAEClassifier.is_unknown`);
    - ``obs[f"{prefix}_label"]``: the prediction, or "unknown" for those cells;
    - ``obsm[f"{prefix}_probabilities"]``: every type's probability (a DataFrame,
      one column per type).

    Parameters
    ----------
    adata : anndata.AnnData
        Cells in rows; may be backed, as for :func:`embed`.
    estimator : BetaVAEClassifier or Pipeline ending with one
        Fitted or not.
    labels_key : str, default=None
        Column of ``adata.obs`` with each cell's type, None / NaN (or -1) for
        the cells to name; required to fit, ignored by a fitted estimator.
    layer, batch_key, use_highly_variable
        As for :func:`embed`.
    map_query : bool, default=False
        With a fitted estimator and ``batch_key``: map the cells of batches it
        lacks onto it first (nothing to map when it knows them all). The
        estimator passed in learns them (in place): save it to keep them.
    key_added : str, default=None
        The prefix of every key written; None: "skvae" (codes in ``obsm["X_skvae"]``).
    copy : bool, default=False
        Return a modified copy of ``adata`` instead of writing into it.

    Returns
    -------
    adata : anndata.AnnData or None
        The modified copy with ``copy=True``, else None.

    Raises
    ------
    ValueError
        As :func:`embed`; also a missing ``labels_key`` for an unfitted
        estimator, ``map_query`` without ``batch_key`` or on an unfitted one,
        or a cell type named "unknown" (the label of flagged cells), refused
        before anything is fitted or written. Whatever fails, ``adata`` is left
        as it was: every entry is written at the end, together.
    TypeError
        ``adata`` is not an AnnData object, or the estimator does not name cells.

    Examples
    --------
    >>> import anndata
    >>> import numpy as np
    >>> import pandas as pd
    >>> import skvae
    >>> rng = np.random.RandomState(0)
    >>> types = rng.randint(3, size=300)
    >>> counts = rng.poisson(rng.gamma(0.3, 2.0, size=(3, 200))[types]).astype(np.float32)
    >>> cell_type = pd.Series(np.array(["B", "NK", "T"])[types]).where(np.arange(300) < 200)  # 100 to name
    >>> obs = pd.DataFrame({"cell_type": cell_type.to_numpy()}, index=[f"cell{i}" for i in range(300)])
    >>> adata = anndata.AnnData(counts, obs=obs)
    >>> model = skvae.BetaVAEClassifier(likelihood="nb", max_epochs=50, random_state=0)
    >>> skvae.tl.annotate(adata, model, labels_key="cell_type")
    >>> adata.obs[["skvae_prediction", "skvae_unknown"]].shape
    (300, 2)
    """
    _require_anndata(adata)
    _check_arguments(estimator, key_added, use_highly_variable)
    final = (_flat_steps(estimator) or [None])[-1]
    if not hasattr(final, "predict_proba") or not hasattr(final, "typicality"):
        raise TypeError(f"annotate names cells with a skvae BetaVAEClassifier (or a Pipeline ending with one, e.g. "
                        f"make_count_classifier()), not {type(final).__name__}: embed with skvae.tl.embed.")
    if map_query and (batch_key is None or not _is_fitted(final)):
        raise ValueError("map_query=True maps the batches of batch_key onto a fitted classifier: pass batch_key and "
                         "a fitted estimator (or fit with labels_key and map_query=False).")
    prefix = "skvae" if key_added is None else key_added
    if _is_fitted(final):
        _refuse_unknown_as_a_type(final.classes_, prefix, "the classifier's classes_")
    elif labels_key is None or labels_key not in adata.obs.columns:
        raise ValueError(f"annotate fits an unfitted classifier from adata.obs[labels_key]: give labels_key, a "
                         f"column of adata.obs (its columns are {list(adata.obs.columns)}), with None or NaN for "
                         "the cells to name.")
    else:
        _refuse_unknown_as_a_type(adata.obs[labels_key].dropna().unique(), prefix, f"adata.obs[{labels_key!r}]")
    adata = _copied(adata, copy)
    run = _Run(adata, estimator, layer, batch_key, use_highly_variable)
    if run.fitted:
        inputs = run.final_input()  # what the classifier reads: mapped, embedded and tested from one pass of the steps
        if map_query and _has_new_categories(final, run.batch):
            with _unnamed_matrix(), _progress_shown(run.steps):
                final.map_query(inputs, batch=run.batch)
        with _unnamed_matrix():
            codes = _transform_steps([final], inputs, run.batch)
    else:
        codes = run.fit(y=adata.obs[labels_key])
        inputs = run.final_input()
    # the classifier's predictions and typicality are of these codes (its predict_proba would embed the cells again)
    # (the typicality calibrated within each batch, as the classifier's typicality(X, batch=) does)
    with _unnamed_matrix():
        probabilities, typicality = final.classify_codes(codes, X=inputs, batch=run.batch)
    records = _records(run, codes, estimator, layer, batch_key, (f"X_{prefix}", prefix))
    called = final.classes_[probabilities.argmax(axis=1)]
    unknown = typicality < final.unknown_threshold
    label = np.where(unknown, UNKNOWN_LABEL, called.astype(str)).astype(object)
    obs = {f"{prefix}_prediction": pd.Categorical(called, categories=final.classes_),
           f"{prefix}_probability": probabilities.max(axis=1),
           f"{prefix}_typicality": typicality,
           f"{prefix}_unknown": unknown,
           f"{prefix}_label": pd.Categorical(label, categories=[*map(str, final.classes_), UNKNOWN_LABEL])}
    records["obsm"][f"{prefix}_probabilities"] = pd.DataFrame(probabilities, index=adata.obs_names,
                                                              columns=[str(name) for name in final.classes_])
    _write(adata, obs=obs, **records)
    return adata if copy else None


#: The label :func:`annotate` gives the cells of no type the reference has
UNKNOWN_LABEL = "unknown"


def _refuse_unknown_as_a_type(types, prefix, where):
    """A ValueError, before anything is written, for a cell type named as :func:`annotate`'s flag."""
    if any(str(name) == UNKNOWN_LABEL for name in types):
        raise ValueError(f"{where} holds a cell type named {UNKNOWN_LABEL!r}, the label annotate writes to "
                         f"obs['{prefix}_label'] for cells of no type the reference has: the two could not be told "
                         f"apart. Rename that type first (e.g. adata.obs[key] = adata.obs[key].replace("
                         f"{UNKNOWN_LABEL!r}, 'unknown type')), or mark its cells unlabelled (None).")


_ABSENT = object()


def _write(adata, *, obs=None, obsm=None, uns=None):
    """Write these entries into ``adata.obs``, ``obsm`` and ``uns`` together: on any failure, put back what was there."""
    written = []
    try:
        for slot, entries in (("obs", obs), ("obsm", obsm), ("uns", uns)):
            place = getattr(adata, slot)
            for key, value in (entries or {}).items():
                written.append((place, key, place[key] if key in place else _ABSENT))
                place[key] = value
    except BaseException:
        for place, key, before in reversed(written):
            if before is _ABSENT:
                if key in place:
                    del place[key]
            else:
                place[key] = before
        raise


def _has_new_categories(estimator, batch):
    """Whether ``batch`` holds categories the fitted estimator lacks (True for one fitted without batches: its
    ``map_query`` says why it cannot map)."""
    covariates = getattr(estimator, "covariates_", None)
    return covariates is None or any(len(new) for new in covariates.extended(batch, len(batch))[1])


def _copied(adata, copy):
    if copy:
        if adata.isbacked:
            raise ValueError("copy=True copies adata in memory, but it is backed by a file: work in place "
                             "(copy=False), or load it first with adata.to_memory().")
        return adata.copy()
    return adata


class _Run:
    """The matrix, genes and batches of one call on an AnnData, checked; fits or transforms through the steps."""

    def __init__(self, adata, estimator, layer, batch_key, use_highly_variable):
        self.steps = steps = _flat_steps(estimator)
        if not steps:
            raise TypeError(f"estimator {estimator!r} has no step that embeds: every step is None or 'passthrough'.")
        final = steps[-1]
        self.fitted = fitted = _is_fitted(final)
        X = _matrix(adata, layer)
        backed = is_on_disk(X)
        known_genes = getattr(steps[0], "feature_names_in_", None) if fitted else None
        if backed:
            _refuse_steps_off_disk(steps)
        if known_genes is not None:
            # a fitted model that knows its genes takes them from adata by name, in its order
            genes = _genes_by_name(adata.var_names, known_genes, backed=backed)
        else:
            genes = _gene_mask(adata, use_highly_variable, backed=backed, selects_genes=_selects_genes(estimator))
        if genes is not None:
            X = X[:, genes]
        self.var_names = np.asarray(adata.var_names if genes is None else adata.var_names[genes], dtype=object)
        _refuse_duplicate_names(self.var_names)
        # skvae's models of raw counts (a count likelihood) take non-negative input only (their tag), and whole numbers
        if isinstance(getattr(final, "likelihood", None), str) and isinstance(final, BaseEstimator) and \
                get_tags(final).input_tags.positive_only:
            _require_raw_counts(X, layer, final.likelihood)
        self.batch = _batch(adata, batch_key)
        if self.batch is not None:
            _check_batch_is_read(steps, fitted)
        elif fitted and getattr(getattr(final, "module_", None), "encode_batch", False):
            # the fitted network's encoder reads covariates (encode_batch=True, or offsets map_query added): what
            # the estimator's transform itself requires
            raise ValueError(f"This {type(final).__name__} reads each cell's batch to embed it (it was fitted with "
                             "encode_batch=True, or map_query added batches to it): pass batch_key=, the obs "
                             "column(s) of each cell's batch, as when it was fitted or mapped.")
        self.X = X
        self.selected_here = genes is not None and known_genes is None

    def fit(self, y=None):
        """Fit every step (``y`` to each, as a Pipeline), record the genes' names; the codes."""
        with _unnamed_matrix(), _progress_shown(self.steps):
            codes = _fit_transform_steps(self.steps, self.X, self.batch, y=y)
        self.steps[0].feature_names_in_ = self.var_names
        self.fitted = True
        return codes

    def transform(self):
        with _unnamed_matrix():
            return _transform_steps(self.steps, self.X, self.batch)

    def final_input(self):
        """The matrix the last step takes: the others' transform of the cells."""
        with _unnamed_matrix():
            return _transform_steps(self.steps[:-1], self.X, self.batch)


@contextlib.contextmanager
def _progress_shown(steps):
    """Within the block, skvae's steps left at ``verbose=0`` show their progress where ``skvae.settings`` says."""
    from .base import BaseEmbedder

    quiet = [step for step in steps if isinstance(step, BaseEmbedder) and not step.verbose]
    if not settings.shows_progress():
        quiet = []
    for step in quiet:
        step.set_params(verbose=1)
    try:
        yield
    finally:
        for step in quiet:
            step.set_params(verbose=0)


@contextlib.contextmanager
def _unnamed_matrix():
    # the estimator knows the genes' names, the matrix passed to it carries none
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="X does not have valid feature names")
        yield


def _records(run, codes, estimator, layer, batch_key, keys):
    """What :func:`embed` writes: the codes for ``obsm[keys[0]]`` and the record for ``uns[keys[1]]``."""
    obsm_key, uns_key = keys
    # the columns are transform's, in its order: codes from any call, copy or process are interchangeable
    codes = np.asarray(codes, dtype=np.float32)
    return {"obsm": {obsm_key: codes}, "uns": {uns_key: {
        "estimator": type(estimator).__name__,
        "params": _storable(estimator.get_params(deep=False) if not hasattr(estimator, "steps") else
                            {name: _step_params(step) for name, step in estimator.steps}),
        "layer": "X" if layer is None else layer,
        "batch_key": "None" if batch_key is None else (batch_key if isinstance(batch_key, str) else list(batch_key)),
        "use_highly_variable": run.selected_here,
        "obsm_key": obsm_key,
        "variance": codes.var(axis=0).astype(np.float64),
        "history": {key: np.asarray(values, dtype=np.float64)
                    for key, values in getattr(run.steps[-1], "history_", {}).items()},
    }}}


def _step_params(step):
    return step.get_params(deep=False) if hasattr(step, "get_params") else {"step": "None" if step is None else step}


def _refuse_steps_off_disk(steps):
    """A ValueError for a step that cannot read a matrix on disk (all but skvae's embedders and gene selection)."""
    from .base import BaseEmbedder
    from .preprocessing import HighlyVariableGenes

    foreign = [step for step in steps if not isinstance(step, (BaseEmbedder, HighlyVariableGenes))]
    if foreign:
        name = type(foreign[0]).__name__
        raise ValueError(
            f"The matrix is on disk (backed), which skvae's embedders and HighlyVariableGenes read a few rows at a "
            f"time, but {name} needs it in memory. Load it first (adata.to_memory()), or use skvae's steps alone "
            "(e.g. skvae.make_count_embedder(), whose gene selection streams over the file)."
        )


def _check_batch_is_read(steps, fitted):
    """A ValueError for a batch_key that no step would read: the batches would silently not be integrated."""
    if fitted:
        if not any(getattr(step, "batch_categories_", None) is not None for step in steps):
            raise ValueError(f"batch_key was given, but {type(steps[-1]).__name__} was fitted without batches, so it "
                             "cannot integrate them: embed without batch_key, or fit a new (unfitted) estimator "
                             "with batch_key.")
    elif not any(_takes_batch(step.fit) for step in steps):
        raise ValueError(f"batch_key was given, but {type(steps[-1]).__name__} takes no batch: use a skvae estimator "
                         "(or a Pipeline with one) to integrate batches, or leave batch_key out.")


def _genes_by_name(var_names, known, *, backed):
    """Positions in ``var_names`` of the genes a fitted model knows, in its order (None: already so)."""
    var_names = pd.Index(var_names)
    known = pd.Index(np.asarray(known, dtype=object))
    if var_names.equals(known):
        return None
    if var_names.has_duplicates:
        _refuse_duplicate_names(var_names)
    positions = var_names.get_indexer(known)
    missing = known[positions < 0]
    if len(missing):
        raise ValueError(f"adata lacks {len(missing)} of the {len(known)} genes the estimator was fitted on, e.g. "
                         f"{missing[:5].tolist()}: embed data that measures them (the same gene names, e.g. "
                         "Ensembl ids or symbols throughout).")
    if backed:
        raise ValueError("adata's genes are those the estimator was fitted on, but in another order or among others, "
                         "and a backed file cannot be reordered on the fly: write adata[:, estimator genes] to a file "
                         "of its own first.")
    return positions


def _batch(adata, batch_key):
    """``adata.obs[batch_key]``: one column's labels, or a DataFrame of several columns (a list of keys)."""
    if batch_key is None:
        return None
    several = isinstance(batch_key, (list, tuple))
    keys = list(batch_key) if several else [batch_key]
    if several and (not keys or not all(isinstance(key, str) for key in keys) or len(set(keys)) < len(keys)):
        raise ValueError(f"batch_key must be a column name or a list of distinct column names, got {batch_key!r}.")
    missing = [key for key in keys if key not in adata.obs.columns]
    if missing:
        raise ValueError(f"adata.obs has no column {missing[0]!r} for batch_key; its columns are "
                         f"{list(adata.obs.columns)}.")
    return adata.obs[keys].copy() if several else adata.obs[batch_key].to_numpy()


def _require_anndata(adata):
    """The anndata module, once ``adata`` is checked to be one of its AnnData objects (a TypeError otherwise)."""
    anndata = _import_anndata()
    if not isinstance(adata, anndata.AnnData):
        raise TypeError(f"adata must be an anndata.AnnData object, not {type(adata).__name__}.")
    return anndata


def _import_anndata():
    try:
        return importlib.import_module("anndata")
    except ImportError:
        raise ImportError("skvae.tl needs anndata, an optional extra: pip install anndata (or, in a clone of "
                          "skvae, pip install -e '.[anndata]').") from None


def _matrix(adata, layer):
    if layer is None:
        if adata.X is None:
            raise ValueError("adata.X is empty: pass layer=, e.g. layer='counts'.")
        return adata.X
    if layer not in adata.layers:
        raise ValueError(f"adata has no layer {layer!r}; its layers are {sorted(adata.layers.keys())}.")
    if adata.isbacked:
        # a backed object's layers are read into memory when accessed; train from the file instead
        from anndata.io import sparse_dataset

        group = adata.file[f"layers/{layer}"]
        if hasattr(group, "keys") and "indptr" in group:
            return sparse_dataset(group)
    return adata.layers[layer]


def _selects_genes(estimator):
    return any(isinstance(step, SelectorMixin) for step in _flat_steps(estimator))


def _gene_mask(adata, use_highly_variable, *, backed, selects_genes):
    has_flags = "highly_variable" in adata.var.columns
    if use_highly_variable is None:
        use_highly_variable = has_flags and not selects_genes
    if not use_highly_variable:
        return None
    if selects_genes:
        warnings.warn("use_highly_variable=True with an estimator that selects its genes itself: it selects among "
                      "the flagged genes only. Leave use_highly_variable out to give it every gene.",
                      UserWarning, stacklevel=3)
    if not has_flags:
        raise ValueError("use_highly_variable=True, but adata.var has no 'highly_variable' column: run "
                         "scanpy.pp.highly_variable_genes first, or pass use_highly_variable=False.")
    flags = adata.var["highly_variable"]
    if flags.dtype != bool:
        raise ValueError(f"adata.var['highly_variable'] holds {flags.dtype} values, not booleans (the strings "
                         "'True'/'False' would select every gene): store booleans, e.g. "
                         "adata.var['highly_variable'] = adata.var['highly_variable'] == 'True'.")
    if backed:
        raise ValueError(
            "Embedding the genes flagged in adata.var['highly_variable'] needs the matrix in memory: it is on disk "
            "(backed), where genes cannot be selected on the fly. Pass use_highly_variable=False to embed every "
            "gene, or write the selected genes to their own file first: "
            "adata[:, adata.var.highly_variable].copy(filename='hvg.h5ad')."
        )
    return adata.var["highly_variable"].to_numpy(dtype=bool)


def _check_arguments(estimator, key_added, use_highly_variable):
    """What can be refused before any data is read: an estimator that cannot embed, a key h5ad cannot store, a flag."""
    if isinstance(estimator, type) or not (hasattr(estimator, "fit_transform") and hasattr(estimator, "transform")):
        raise TypeError(f"estimator must be a scikit-learn transformer instance (with fit_transform and transform), "
                        f"such as skvae.make_count_embedder() or sklearn's PCA(), not {estimator!r}.")
    if use_highly_variable is not None and not isinstance(use_highly_variable, (bool, np.bool_)):
        raise TypeError(f"use_highly_variable must be True, False or None, not {use_highly_variable!r}.")
    if key_added is not None and not isinstance(key_added, str):
        raise TypeError(f"key_added must be a string (the key in adata.obsm and adata.uns), not {key_added!r}.")
    if key_added is not None and (not key_added or "/" in key_added):
        raise ValueError(f"key_added={key_added!r} cannot be written to an h5ad file: use a non-empty name without "
                         "'/', such as 'skvae_counts'.")


def _refuse_duplicate_names(var_names):
    names = pd.Index(var_names)
    if names.has_duplicates:
        repeated = names[names.duplicated()].unique()[:5].tolist()
        raise ValueError(f"adata.var_names has duplicates (e.g. {repeated}): genes must be told apart to check "
                         "them against a fitted model. Call adata.var_names_make_unique() first.")


def _require_raw_counts(X, layer, likelihood):
    """Refuse a matrix that is not raw counts, whole or streamed from disk."""
    where = "adata.X" if layer is None else f"layer {layer!r}"
    if not holds_raw_counts(X):
        raise ValueError(
            f"{where} does not hold raw counts (it has negative or non-integer values), but likelihood="
            f"{likelihood!r} models raw UMI counts. Pass the layer that holds them, e.g. layer='counts', or use "
            "likelihood='gaussian' for normalised data."
        )


def _is_fitted(estimator):
    try:
        check_is_fitted(estimator)
    except NotFittedError:
        return False
    return True


def _storable(params):
    """Parameters as values an h5ad file stores: None and objects as strings, sequences as arrays."""
    stored = {}
    for name, value in params.items():
        if isinstance(value, dict):
            stored[name] = _storable(value)
        elif isinstance(value, (bool, int, float, str, np.number, np.bool_)):
            stored[name] = value
        elif isinstance(value, (list, tuple, np.ndarray)) and np.asarray(value).dtype.kind in "biuf":
            stored[name] = np.asarray(value)
        else:
            stored[name] = "None" if value is None else repr(value)
    return stored


def decode(adata, estimator, *, batch=None, obsm_key="X_skvae"):
    """Decode the codes in ``adata.obsm`` into expression: batch-corrected with ``batch``, scanpy-style.

    Decoding every cell as measured in one batch removes the batch effect from
    the expression itself (scVI's ``transform_batch``): the result is a new
    AnnData of the genes the model reconstructs (for
    :func:`skvae.make_count_embedder`, the selected ones), with ``adata``'s cells,
    ``obs`` and ``obsm`` (so ``scanpy.pl.umap(decoded, color="CD14")`` plots it
    on the same embedding).

    Parameters
    ----------
    adata : anndata.AnnData
        Cells whose codes :func:`embed` wrote with ``estimator`` (in any call,
        by this estimator or a saved copy of it).
    estimator : fitted estimator or Pipeline
        The model that wrote the codes.
    batch : label, array-like of shape (n_cells,), DataFrame or dict, default=None
        The batch to decode as: one label for every cell (corrected expression)
        or one per cell (e.g. ``adata.obs["sample"]``: each cell in its own batch,
        the model's reconstruction). For a model of several ``batch_key``
        columns: a dict of one label per column, or ``adata.obs[keys]``.
        Required for a model fitted with batches, ignored otherwise.
    obsm_key : str, default="X_skvae"
        Where the codes are (``embed``'s ``key_added``).

    Returns
    -------
    decoded : anndata.AnnData of shape (n_cells, n_genes_modelled)
        ``X`` holds the decoded expression, float32: for count likelihoods the
        expected expression per 10,000 counts (normalised, before a log), for the
        Gaussian likelihood the (scaled) values it was fitted on. ``var_names``
        are the modelled genes' names; ``uns["skvae_decode"]`` records the batch.

    Raises
    ------
    ValueError
        No codes under ``obsm_key``, codes of another width, a batch the model
        does not know or none for a model fitted with batches.

    Examples
    --------
    >>> import anndata
    >>> import numpy as np
    >>> import skvae
    >>> rng = np.random.RandomState(0)
    >>> counts = rng.poisson(rng.gamma(0.3, 2.0, size=(3, 300))[rng.randint(3, size=200)]).astype(np.float32)
    >>> adata = anndata.AnnData(counts, obs={"sample": np.repeat(["a", "b"], 100)})
    >>> adata.var_names = [f"g{i}" for i in range(300)]
    >>> model = skvae.make_count_embedder(n_top_genes=50, max_epochs=3, random_state=0)
    >>> skvae.tl.embed(adata, model, batch_key="sample")
    >>> corrected = skvae.tl.decode(adata, model, batch="a")
    >>> corrected.shape, list(corrected.var_names) == list(model[:-1].get_feature_names_out())
    ((200, 50), True)
    """
    anndata = _require_anndata(adata)
    steps = _flat_steps(estimator)
    if not steps or not _is_fitted(steps[-1]):
        raise ValueError("decode needs the fitted estimator that wrote the codes (fit it with skvae.tl.embed first).")
    final = steps[-1]
    if not isinstance(obsm_key, str) or obsm_key not in adata.obsm:
        raise ValueError(f"adata.obsm has no codes under {obsm_key!r} (it has {sorted(adata.obsm.keys())}): run "
                         "skvae.tl.embed first, or pass obsm_key= (embed's key_added).")
    codes = np.asarray(adata.obsm[obsm_key])
    if isinstance(batch, pd.Series):
        batch = batch.to_numpy()
    if getattr(final, "batch_categories_", None) is None:
        batch = None  # the decoder reads no batch
    expression = final.inverse_transform(codes, **_batch_for(final.inverse_transform, batch))
    names = _modelled_genes(steps, expression.shape[1])
    decoded = anndata.AnnData(np.asarray(expression, dtype=np.float32), obs=adata.obs.copy(),
                              var=pd.DataFrame(index=pd.Index(names, dtype=str)))
    for key, value in adata.obsm.items():
        decoded.obsm[key] = value
    decoded.uns["skvae_decode"] = {"obsm_key": obsm_key,
                                   "batch": "None" if batch is None else (str(batch) if np.ndim(batch) == 0
                                                                          else "per cell")}
    return decoded


def differential_expression(adata, estimator, *, groupby, group1=None, group2=None, sample_key=None, batch_key=None,
                            layer=None, fdr=0.05, shrinkage="upward", key_added="skvae_de"):
    """Genes that differ between groups of cells, tested over samples: :func:`skvae.analysis.differential_expression`
    on an AnnData, written where scanpy's ``rank_genes_groups`` writes.

    Each group of ``adata.obs[groupby]`` (``group1``, or every group in turn,
    one against the rest) is compared with ``group2`` (or all other cells) by
    pseudobulk PyDESeq2 over the samples of ``adata.obs[sample_key]``, after the
    fitted model removed the batches of ``batch_key`` it learned. The result is
    returned as a DataFrame and stored in ``adata.uns[key_added]`` in
    ``rank_genes_groups``' layout, so ``scanpy.get.rank_genes_groups_df(adata,
    group, key=key_added)`` and scanpy's plots of ranked genes read it.

    Parameters
    ----------
    adata : anndata.AnnData
        The cells, with raw counts in ``layer`` (or ``X``).
    estimator : fitted estimator or Pipeline
        A model of raw counts fitted on these genes (e.g. by :func:`embed` or
        :func:`annotate`); the genes tested are the ones it models.
    groupby : str
        Column of ``adata.obs`` with each cell's group (cluster, cell type,
        condition).
    group1 : label, default=None
        The group tested; None: every group, each against the rest.
    group2 : label, default=None
        The group compared with; None: every other cell.
    sample_key : str, default=None
        Column of ``adata.obs`` with each cell's sample (donor): the unit the test
        counts. None: effect sizes only, no p-values (the result says why).
    batch_key : str or list of str, default=None
        The batch column(s) the model was fitted with.
    layer : str, default=None
        The layer of raw counts; ``X`` when None.
    fdr : float, default=0.05
        The false discovery rate of ``is_de``.
    shrinkage : {"upward", "deseq2"}, default="upward"
        How each gene's dispersion is taken
        (:func:`skvae.analysis.differential_expression`).
    key_added : str, default="skvae_de"
        Where the result goes in ``adata.uns``.

    Returns
    -------
    DataFrame
        The columns of :func:`skvae.analysis.differential_expression`, one row per
        group and gene (a ``group`` column first), each group's genes by p-value.

    Raises
    ------
    ValueError
        An unfitted estimator, a ``groupby`` or ``sample_key`` that is not a
        column of ``adata.obs``, and what
        :func:`skvae.analysis.differential_expression` refuses.

    Examples
    --------
    >>> import anndata
    >>> import numpy as np
    >>> import skvae
    >>> rng = np.random.RandomState(0)
    >>> donor = np.repeat(np.arange(6), 40)
    >>> counts = rng.poisson(rng.gamma(1.0, 2.0, size=30) * np.where((donor >= 3)[:, None] & (np.arange(30) < 3), 4.0,
    ...                                                                1.0)).astype(np.float32)
    >>> adata = anndata.AnnData(counts, obs={"donor": donor.astype(str),
    ...                                      "condition": np.where(donor >= 3, "treated", "control")})
    >>> adata.var_names = [f"g{i}" for i in range(30)]
    >>> model = skvae.BetaVAEEmbedder(2, hidden_layer_sizes=(16,), likelihood="nb", max_epochs=5, random_state=0)
    >>> skvae.tl.embed(adata, model)
    >>> table = skvae.tl.differential_expression(adata, model, groupby="condition", group1="treated",
    ...                                          sample_key="donor")
    >>> sorted(table.loc[table["is_de"], "gene"]), adata.uns["skvae_de"]["params"]["reference"]
    (['g0', 'g1', 'g2'], 'rest')
    """
    from .analysis import differential_expression as tested

    _require_anndata(adata)
    steps = _flat_steps(estimator)
    if not steps or not _is_fitted(steps[-1]):
        raise ValueError("differential_expression reads a fitted model: fit it first (e.g. skvae.tl.embed).")
    for name, key in (("groupby", groupby), ("sample_key", sample_key)):
        if key is not None and (not isinstance(key, str) or key not in adata.obs.columns):
            raise ValueError(f"{name}={key!r} is not a column of adata.obs (its columns are {list(adata.obs.columns)}).")
    if groupby is None:
        raise ValueError("differential_expression needs groupby=, the obs column of each cell's group.")
    if not isinstance(key_added, str) or not key_added:
        raise ValueError(f"key_added must be a non-empty string, got {key_added!r}.")
    run = _Run(adata, estimator, layer, batch_key, None)
    groups = adata.obs[groupby].to_numpy()
    samples = None if sample_key is None else adata.obs[sample_key].to_numpy()
    labels = [group1] if group1 is not None else [label for label in pd.unique(groups) if not pd.isna(label)
                                                  and label != group2]
    results = {}
    with _unnamed_matrix(), warnings.catch_warnings():
        if len(labels) > 1:  # the note of no p-values once for all the groups, below; other warnings each time
            warnings.filterwarnings("ignore", message="No samples were given", category=UserWarning)
        for label in labels:
            result = tested(estimator, run.X, groups, label, group2, samples=samples, batch=run.batch, fdr=fdr,
                            shrinkage=shrinkage)
            result.index = pd.Index(_modelled_genes(steps, len(result)), name="gene")
            # by p-value, then by the size of the effect (all of them, without p-values)
            order = np.lexsort((-result["log2FoldChange"].abs().fillna(0).to_numpy(),
                                result["pvalue"].fillna(np.inf).to_numpy()))
            results[label] = result.iloc[order]
    if samples is None and len(labels) > 1:
        warnings.warn(next(iter(results.values())).attrs["note"], UserWarning, stacklevel=2)
    fields = {"names": None, "scores": "stat", "logfoldchanges": "log2FoldChange", "pvals": "pvalue",
              "pvals_adj": "padj"}
    record = {"params": {"groupby": groupby, "reference": "rest" if group2 is None else str(group2),
                         "method": "skvae pseudobulk PyDESeq2" if samples is not None else "skvae effect sizes",
                         "sample_key": "None" if sample_key is None else sample_key, "fdr": fdr,
                         "shrinkage": shrinkage,
                         "layer": "None" if layer is None else layer}}
    for field, column in fields.items():
        record[field] = np.rec.fromarrays(
            [np.asarray(result.index if column is None else result[column], dtype=object if column is None
                        else np.float64) for result in results.values()],
            names=[str(label) for label in results])
    _write(adata, uns={key_added: record})
    return pd.concat([result.reset_index().assign(group=label) for label, result in results.items()],
                     ignore_index=True)[["group", "gene", *next(iter(results.values())).columns]]


def _modelled_genes(steps, n_genes):
    """The names of the genes the final step reconstructs: the first step's genes through the steps before it."""
    names = getattr(steps[0], "feature_names_in_", None)
    if names is None:
        return [f"gene{i}" for i in range(n_genes)]
    for step in steps[:-1]:
        names = step.get_feature_names_out(names)
    return [str(name) for name in names]
