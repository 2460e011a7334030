"""Scanpy-style tools on AnnData objects: ``skvae.tl.embed``.

AnnData is an optional extra (``pip install -e ".[anndata]"`` in a clone, or ``pip install anndata``): it is
imported when a function here is called, never by ``import skvae``.
"""

import importlib
import inspect
import warnings

import numpy as np
import pandas as pd
from sklearn.exceptions import NotFittedError
from sklearn.feature_selection import SelectorMixin
from sklearn.utils.validation import check_is_fitted

from ._validation import is_integer_valued
from .nn.likelihoods import LIKELIHOODS
from .recipes import _final_step
from .train.data import RowData


def embed(adata, estimator, *, layer=None, batch_key=None, use_highly_variable=None, key_added=None, copy=False):
    """Embed the cells of an AnnData object, scanpy-style.

    Fits ``estimator`` on the chosen matrix and embeds it, or, when ``estimator``
    is already fitted, embeds it only. The codes go to ``adata.obsm["X_skvae"]``,
    the estimator's parameters and training history to ``adata.uns["skvae"]``, as
    ``scanpy.tl.pca`` writes ``obsm["X_pca"]`` and ``uns["pca"]``. The code's
    dimensions are stored in order of decreasing variance across the cells (the
    informative ones first, as principal components are), so
    ``scanpy.pp.neighbors(adata, use_rep="X_skvae", n_pcs=k)`` keeps the ``k``
    most informative; ``uns["skvae"]["components_order"]`` says which column of
    the estimator's ``transform`` each one is. The estimator passed in is fitted
    in place: the caller holds it.

    Parameters
    ----------
    adata : anndata.AnnData
        Cells in rows. It may be backed (``anndata.read_h5ad(path, backed="r")``):
        a sparse CSR matrix on disk is then trained on and embedded a few
        minibatches at a time, without loading it.
    estimator : scikit-learn transformer or Pipeline
        E.g. the result of :func:`skvae.make_count_embedder`, or
        ``BetaVAEEmbedder(likelihood="nb")``; fitted or not.
    layer : str, default=None
        The matrix to embed: ``adata.layers[layer]``, or ``adata.X`` when None.
        Count likelihoods need raw counts, commonly kept in ``layers["counts"]``.
    batch_key : str, default=None
        Column of ``adata.obs`` with each cell's batch (sample, donor,
        technology): the model is fitted conditioned on it, which integrates the
        batches (see the estimators' ``batch``); in a Pipeline, every step whose
        ``fit`` takes a ``batch`` gets it (:func:`skvae.make_count_embedder`'s gene
        selection ranks genes within each batch). Read once, also for a backed
        object. None: no batches.
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
        holds the genes' names, which a later call on another AnnData object
        checks.

    Raises
    ------
    ValueError
        A missing layer or ``highly_variable`` column; genes that do not match
        those the estimator was fitted on; a layer that is not raw counts (negative
        or non-integer values) for a count likelihood.
    TypeError
        ``adata`` is not an AnnData object.

    Notes
    -----
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
    anndata = _import_anndata()
    if not isinstance(adata, anndata.AnnData):
        raise TypeError(f"adata must be an anndata.AnnData object, not {type(adata).__name__}.")
    _check_arguments(estimator, key_added, use_highly_variable)
    if copy:
        if adata.isbacked:
            raise ValueError("copy=True copies adata in memory, but it is backed by a file: embed it in place "
                             "(copy=False), or load it first with adata.to_memory().")
        adata = adata.copy()
    obsm_key, uns_key = ("X_skvae", "skvae") if key_added is None else (key_added, key_added)
    X = _matrix(adata, layer)
    data = RowData.from_input(X)
    genes = _gene_mask(adata, use_highly_variable, backed=data.on_disk, selects_genes=_selects_genes(estimator))
    if genes is not None:
        X = X[:, genes]
        data = RowData.from_input(X)
    var_names = np.asarray(adata.var_names if genes is None else adata.var_names[genes], dtype=object)
    _refuse_duplicate_names(var_names)
    final = _final_step(estimator)
    likelihood = getattr(final, "likelihood", None)
    if isinstance(likelihood, str) and likelihood in LIKELIHOODS and LIKELIHOODS[likelihood].counts:
        _require_raw_counts(data, layer, likelihood)
    batch = _batch(adata, batch_key)
    batch_param = {} if batch is None else _batch_fit_params(estimator, batch)
    with warnings.catch_warnings():
        # the estimator knows the genes' names, the matrix passed to it carries none
        warnings.filterwarnings("ignore", message="X does not have valid feature names")
        if _is_fitted(estimator):
            _check_genes(estimator, var_names, X.shape[1])
            # a Pipeline takes no batch in transform unless metadata routing is on: only an estimator that reads it
            reads_batch = batch is not None and not hasattr(estimator, "steps") and _takes_batch(estimator.transform)
            codes = estimator.transform(X, **({"batch": batch} if reads_batch else {}))
        else:
            codes = estimator.fit_transform(X, **batch_param)
            first = estimator.steps[0][1] if hasattr(estimator, "steps") else estimator
            first.feature_names_in_ = var_names
    codes = np.asarray(codes, dtype=np.float32)
    order = np.argsort(-codes.var(axis=0), kind="stable")
    adata.obsm[obsm_key] = codes[:, order]
    adata.uns[uns_key] = {
        "estimator": type(estimator).__name__,
        "params": _storable(estimator.get_params(deep=False) if not hasattr(estimator, "steps") else
                            {name: step.get_params(deep=False) for name, step in estimator.steps}),
        "layer": "X" if layer is None else layer,
        "batch_key": "None" if batch_key is None else batch_key,
        "use_highly_variable": genes is not None,
        "obsm_key": obsm_key,
        "components_order": order,
        "history": {key: np.asarray(values, dtype=np.float64)
                    for key, values in getattr(final, "history_", {}).items()},
    }
    return adata if copy else None


def _batch(adata, batch_key):
    if batch_key is None:
        return None
    if batch_key not in adata.obs.columns:
        raise ValueError(f"adata.obs has no column {batch_key!r} for batch_key; its columns are "
                         f"{list(adata.obs.columns)}.")
    return adata.obs[batch_key].to_numpy()


def _batch_fit_params(estimator, batch):
    """``fit`` keywords that give ``batch`` to the estimator, or to each step of a Pipeline whose ``fit`` takes it."""
    if not hasattr(estimator, "steps"):
        params = {"batch": batch} if _takes_batch(estimator.fit) else {}
    else:
        params = {f"{name}__batch": batch for name, step in estimator.steps
                  if step not in (None, "passthrough") and _takes_batch(step.fit)}
    if not params:
        raise ValueError(f"batch_key was given, but {type(estimator).__name__} takes no batch: use a skvae estimator "
                         "(or a Pipeline with one) to integrate batches, or leave batch_key out.")
    return params


def _takes_batch(method):
    return "batch" in inspect.signature(method).parameters


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
    steps = [step for _, step in estimator.steps] if hasattr(estimator, "steps") else [estimator]
    return any(isinstance(step, SelectorMixin) for step in steps)


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


def _require_raw_counts(data, layer, likelihood):
    """Refuse a matrix that is not raw counts, whole or streamed from disk."""
    where = "adata.X" if layer is None else f"layer {layer!r}"
    if any((values.size and values.min() < 0) or not is_integer_valued(values) for values in data.value_blocks()):
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


def _check_genes(estimator, var_names, n_genes):
    expected = getattr(estimator, "feature_names_in_", None)
    if expected is None:
        return  # the estimator checks the number of genes itself
    if len(expected) != n_genes or not np.array_equal(np.asarray(expected, dtype=object), var_names):
        present = set(var_names)
        missing = [name for name in expected if name not in present][:5]
        raise ValueError(
            f"The genes of adata ({n_genes}) do not match the {len(expected)} genes the estimator was fitted on, "
            f"in the same order" + (f"; missing, e.g.: {missing}" if missing else "") + ". Subset and order adata "
            "like the training data: adata[:, estimator.feature_names_in_]."
        )


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
