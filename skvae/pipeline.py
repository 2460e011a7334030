"""A Pipeline that carries each cell's batch to the steps that read it, and saves itself without pickle.

:class:`EmbeddingPipeline` is what :func:`skvae.make_count_embedder` returns. The
functions :func:`_fit_transform_steps` and :func:`_transform_steps` are the walk over a
Pipeline's steps that it and :func:`skvae.tl.embed` share: every step whose method takes a
``batch`` gets it, under scikit-learn's metadata routing or without it.
"""

import inspect

from sklearn.pipeline import Pipeline
from sklearn.utils.metaestimators import available_if
from sklearn.utils.validation import check_is_fitted

from ._persistence import SAVEABLE, Saveable, atomic_torch_save, read_save


def _flat_steps(estimator):
    """The estimators a Pipeline (nested ones too) applies, in order, without ``None`` and ``"passthrough"``.

    Parameters
    ----------
    estimator : estimator or Pipeline

    Returns
    -------
    list of estimators

    Examples
    --------
    >>> from sklearn.pipeline import Pipeline, make_pipeline
    >>> from sklearn.decomposition import PCA
    >>> from sklearn.preprocessing import StandardScaler
    >>> nested = Pipeline([("none", "passthrough"), ("inner", make_pipeline(StandardScaler(), PCA()))])
    >>> [type(step).__name__ for step in _flat_steps(nested)]
    ['StandardScaler', 'PCA']
    """
    if not hasattr(estimator, "steps"):
        return [] if estimator is None or (isinstance(estimator, str) and estimator == "passthrough") else [estimator]
    return [step for _, inner in estimator.steps for step in _flat_steps(inner)]


def _final_step_has(name):
    """For ``available_if``: whether the pipeline's last applied step has the method ``name``."""
    return lambda pipeline: hasattr((_flat_steps(pipeline) or [None])[-1], name)


def _final_step_method(name, summary, returns):
    """A pipeline method that applies the last step's ``name`` to the other steps' transform, ``batch`` to each step."""

    def method(self, X, *, batch=None):
        return self._final_call(name, X, batch)

    method.__name__ = method.__qualname__ = name
    method.__doc__ = f"""{summary}

        Parameters
        ----------
        X : {{array-like, sparse matrix}} of shape (n_samples, n_features)
        batch : array-like of shape (n_samples,), DataFrame or dict, default=None
            Given to every step that takes it, with or without scikit-learn's
            metadata routing.

        Returns
        -------
        {returns}
        """
    return available_if(_final_step_has(name))(method)


def _takes_batch(method):
    """Whether ``method`` (an estimator's fit, transform, ...) has a ``batch`` parameter."""
    return method is not None and "batch" in inspect.signature(method).parameters


def _batch_for(method, batch):
    return {"batch": batch} if batch is not None and _takes_batch(method) else {}


def _fit_transform_steps(steps, X, batch=None, params=None, y=None):
    """Fit each step on the output of the one before, and return the last one's output.

    Each step whose ``fit`` takes a ``batch`` is given ``batch``; the others are fitted on
    ``X`` alone. No metadata routing is involved, so it works whether or not
    ``sklearn.set_config(enable_metadata_routing=True)`` is on.

    Parameters
    ----------
    steps : list of estimators
        From :func:`_flat_steps`.
    X : matrix
    batch : array-like of shape (n_samples,), DataFrame or dict, default=None
    params : list of dict, default=None
        More ``fit`` keywords for each step.
    y : array-like of shape (n_samples,), default=None
        Given to every step's ``fit``, as a Pipeline does (a classifier learns from it; the others ignore it).

    Returns
    -------
    X_new : matrix
    """
    for step, extra in zip(steps, params or [{}] * len(steps), strict=True):
        kwargs = {**_batch_for(step.fit, batch), **extra}
        X = step.fit_transform(X, y, **kwargs) if hasattr(step, "fit_transform") else step.fit(X, y, **kwargs).transform(X)
    return X


def _transform_steps(steps, X, batch=None, *, method="transform"):
    """Apply each fitted step's ``method`` in turn (``"inverse_transform"``: in reverse order), with ``batch`` where taken."""
    for step in steps if method == "transform" else steps[::-1]:
        call = getattr(step, method)
        X = call(X, **_batch_for(call, batch))
    return X


class EmbeddingPipeline(Pipeline):
    """A scikit-learn Pipeline whose methods take each cell's ``batch`` and give it to the steps that read it.

    :func:`skvae.make_count_embedder` returns one. It is a
    :class:`~sklearn.pipeline.Pipeline` in every other way (``get_params``,
    ``set_params``, ``clone``, indexing by step name, grid search), and adds:

    - ``batch=`` on :meth:`fit`, :meth:`fit_transform`, :meth:`transform`,
      :meth:`inverse_transform` and :meth:`score`, and, for a pipeline ending in a
      classifier (:func:`skvae.make_count_classifier`), on :meth:`predict`,
      :meth:`predict_proba`, :meth:`predict_log_proba`, :meth:`typicality`,
      :meth:`is_unknown` and :meth:`map_query`: given to every step whose method
      takes it, with or without scikit-learn's metadata routing (a plain Pipeline
      needs ``embedder__batch=`` in ``fit`` and cannot pass it to ``transform`` or
      ``inverse_transform`` without global metadata routing);
    - :meth:`save` and :meth:`load`: the whole pipeline (gene selection with the
      genes' names, and the embedder) in one file read without unpickling.

    Parameters
    ----------
    steps : list of (str, estimator) tuples
        As :class:`~sklearn.pipeline.Pipeline`'s. For :meth:`save`, skvae's
        estimators and :class:`~skvae.preprocessing.HighlyVariableGenes`.
    transform_input, memory, verbose
        As :class:`~sklearn.pipeline.Pipeline`'s. ``fit`` fits the steps one after
        the other itself, so ``memory`` caches nothing and ``transform_input`` is
        not used.

    Attributes
    ----------
    named_steps : :class:`~sklearn.utils.Bunch`
        The steps by name, as :class:`~sklearn.pipeline.Pipeline`'s.

    Examples
    --------
    >>> import numpy as np
    >>> from skvae import BetaVAEEmbedder
    >>> from skvae.pipeline import EmbeddingPipeline
    >>> from skvae.preprocessing import HighlyVariableGenes
    >>> rng = np.random.RandomState(0)
    >>> counts = rng.poisson(rng.gamma(0.3, 2.0, size=(3, 300))[rng.randint(3, size=200)]).astype(float)
    >>> batch = np.repeat(["a", "b"], 100)
    >>> pipe = EmbeddingPipeline([("genes", HighlyVariableGenes(n_top_genes=100)),
    ...                           ("embedder", BetaVAEEmbedder(n_components=4, likelihood="nb", max_epochs=20,
    ...                                                        random_state=0))])
    >>> pipe.fit_transform(counts, batch=batch).shape
    (200, 4)
    >>> pipe.inverse_transform(pipe.transform(counts), batch="a").shape  # unselected genes are 0
    (200, 300)
    """

    def fit(self, X, y=None, *, batch=None, **params):
        """Fit every step, giving ``batch`` to each whose ``fit`` takes it.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
        y : array-like of shape (n_samples,), default=None
            Given to every step's ``fit``, as a Pipeline does: a classifier
            (:func:`skvae.make_count_classifier`) learns the cell types from it,
            the other steps ignore it.
        batch : array-like of shape (n_samples,), DataFrame or dict, default=None
            Each cell's batch (see :meth:`skvae.BetaVAEEmbedder.fit`).
        **params
            ``step__parameter`` keywords for one step's ``fit``, as a Pipeline takes
            them without metadata routing (``embedder__batch=`` is ``batch=`` for that
            step alone).

        Returns
        -------
        self : EmbeddingPipeline
        """
        self.fit_transform(X, y, batch=batch, **params)
        return self

    def fit_transform(self, X, y=None, *, batch=None, **params):
        """Fit every step and return the last step's output (the codes).

        Steps are fitted one after the other on the previous step's output (the
        Pipeline's ``memory`` caches nothing here).

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
        y : array-like of shape (n_samples,), default=None
            Given to every step's ``fit``, as in :meth:`fit`.
        batch : array-like of shape (n_samples,), DataFrame or dict, default=None
        **params
            ``step__parameter`` keywords, as in :meth:`fit`.

        Returns
        -------
        X_new : ndarray of shape (n_samples, n_components)
        """
        self._validate_steps()
        by_step = {}
        for key, value in params.items():
            name, _, parameter = key.partition("__")
            if not parameter or name not in self.named_steps:
                raise TypeError(f"{type(self).__name__}.fit got {key}=: pass batch=, or step__parameter= with a step "
                                f"of {list(self.named_steps)}.")
            by_step.setdefault(name, {})[parameter] = value
        steps, extra = [], []
        for name, outer in self.steps:
            inner = _flat_steps(outer)
            if name in by_step and len(inner) != 1:
                raise TypeError(f"{type(self).__name__}.fit cannot pass {sorted(by_step[name])} to step {name!r}, "
                                "which is a Pipeline or passthrough: pass batch= instead.")
            steps += inner
            extra += [by_step.get(name, {})] * len(inner)
        return _fit_transform_steps(steps, X, batch, extra, y)

    def transform(self, X, *, batch=None):
        """Apply every step's ``transform``, giving ``batch`` to each that takes it.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
        batch : array-like of shape (n_samples,), DataFrame or dict, default=None

        Returns
        -------
        X_new : ndarray of shape (n_samples, n_components)
        """
        return _transform_steps(_flat_steps(self), X, batch)

    def inverse_transform(self, X, *, batch=None):
        """Decode codes back through every step, last first, giving ``batch`` to each that takes it.

        The embedder decodes the selected genes; a gene selection step then puts
        them back among all genes, with zeros for the genes it did not select
        (scikit-learn's convention). For the selected genes alone, named, use
        ``pipeline[-1].inverse_transform`` with ``pipeline[:-1].get_feature_names_out()``,
        or :func:`skvae.tl.decode`.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_components)
        batch : label, array-like of shape (n_samples,), DataFrame or dict, default=None
            The batch to decode as (see :meth:`skvae.BetaVAEEmbedder.inverse_transform`).

        Returns
        -------
        X_original : ndarray of shape (n_samples, n_features)
        """
        return _transform_steps(_flat_steps(self), X, batch, method="inverse_transform")

    def score(self, X, y=None, sample_weight=None, *, batch=None):
        """The last step's ``score`` of the other steps' output, as a Pipeline scores.

        For a classifier (:func:`skvae.make_count_classifier`) the accuracy on the
        labelled cells of ``y``, so that ``GridSearchCV`` and ``cross_val_score``
        over the recipe compare classifiers; for skvae's embedders, minus the loss
        per cell (``y`` is ignored).

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
        y : array-like of shape (n_samples,), default=None
            The true labels, for a pipeline ending in a classifier.
        sample_weight : array-like of shape (n_samples,), default=None
            Given to the last step's ``score`` when not None.
        batch : array-like of shape (n_samples,), DataFrame or dict, default=None

        Returns
        -------
        score : float
        """
        weights = {} if sample_weight is None else {"sample_weight": sample_weight}
        return self._final_call("score", X, batch, y, **weights)

    def _final_call(self, method, X, batch, *args, **kwargs):
        """The last step's ``method`` of the other steps' transform of ``X``, ``batch`` given to each that takes it."""
        check_is_fitted(self)
        steps = _flat_steps(self)
        call = getattr(steps[-1], method)
        return call(_transform_steps(steps[:-1], X, batch), *args, **_batch_for(call, batch), **kwargs)

    predict = _final_step_method("predict", "The last step's ``predict`` (a classifier's cell types) of the other "
                                 "steps' output.", "ndarray of shape (n_samples,)")
    predict_proba = _final_step_method("predict_proba", "The last step's ``predict_proba`` of the other steps' output.",
                                       "ndarray of shape (n_samples, n_classes)")
    predict_log_proba = _final_step_method("predict_log_proba", "The last step's ``predict_log_proba`` of the other "
                                           "steps' output.", "ndarray of shape (n_samples, n_classes)")
    typicality = _final_step_method("typicality", "The classifier's :meth:`~skvae.BetaVAEClassifier.typicality` of "
                                    "the other steps' output.", "ndarray of shape (n_samples,)")
    is_unknown = _final_step_method("is_unknown", "The classifier's :meth:`~skvae.BetaVAEClassifier.is_unknown` of "
                                    "the other steps' output.", "ndarray of bool of shape (n_samples,)")

    @available_if(_final_step_has("map_query"))
    def map_query(self, X, *, batch, max_epochs="auto"):
        """Map cells of new batches onto the fitted last step (:meth:`skvae.BetaVAEEmbedder.map_query`).

        The other steps transform ``X`` (the gene selection keeps its genes); the
        last step learns the new categories of ``batch`` with the reference frozen.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
        batch : array-like of shape (n_samples,), DataFrame or dict
        max_epochs : int or "auto", default="auto"

        Returns
        -------
        self : EmbeddingPipeline
        """
        self._final_call("map_query", X, batch, max_epochs=max_epochs)
        return self

    def save(self, path):
        """Save the fitted pipeline to ``path``: each step's parameters and fitted state, in one file.

        The file holds only tensors, numbers and strings, with a checksum of all of
        it, and is written beside ``path`` and moved into place (see
        :meth:`skvae.BetaVAEEmbedder.save`). Steps must be skvae's embedders or
        :class:`~skvae.preprocessing.HighlyVariableGenes`.

        Parameters
        ----------
        path : str or path-like
        """
        check_is_fitted(self)
        steps = []
        for name, step in self.steps:
            if not isinstance(step, Saveable):
                raise TypeError(f"EmbeddingPipeline.save saves skvae's estimators and HighlyVariableGenes; step "
                                f"{name!r} is a {type(step).__name__}: save the pipeline with joblib instead.")
            steps.append({"name": name, **step.saved_state()})
        atomic_torch_save({"estimator": type(self).__name__, "steps": steps}, path)

    @classmethod
    def load(cls, path):
        """Load a pipeline written by :meth:`save`.

        Parameters
        ----------
        path : str or path-like

        Returns
        -------
        pipeline : EmbeddingPipeline
            Fitted, on CPU.
        """
        state = read_save(path, fields={"estimator": str, "steps": list}, reader=cls.__name__)
        steps = []
        for step in state["steps"]:
            if not (isinstance(step, dict) and isinstance(step.get("name"), str) and step.get("estimator") in SAVEABLE):
                raise ValueError(f"{path} is damaged: a step is not one EmbeddingPipeline saves.")
            # a step is of its pipeline's save format
            steps.append((step["name"], SAVEABLE[step["estimator"]].from_saved_state({**step, "format": state["format"]},
                                                                                     path)))
        return cls(steps)

