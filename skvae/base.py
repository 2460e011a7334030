"""The base estimator shared by every skvae embedder: the scikit-learn face of the models.

It owns the parameters and their constraints, the fitted attributes (it alone writes
them) and the shape of every method. ``fit``, ``partial_fit`` and ``map_query`` are one
training path: the input checked once (:func:`~skvae._validation.validated_input`: the
rows, and the covariates of :mod:`skvae._covariates`; a query's by :mod:`skvae._query`),
then the same steps of a :class:`~skvae.train.session.TrainingSession` (every rank's
agreement, a start or continuation of the training state, a rank's share of the rows,
training), with the loss weights of this call in its
:class:`~skvae.train.loop.TrainingConfig`. ``transform`` / ``inverse_transform`` /
``score`` map rows through the fitted module; ``save`` / ``load`` read and write what
:mod:`skvae._persistence` checks. Those modules take values and return values; none
reads the estimator's private members. A subclass adds only the torch module it
trains (``_build_module``) and, for variational models, the KL weight.
"""

from abc import ABCMeta, abstractmethod
from dataclasses import replace
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin, _fit_context
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from ._counterparts import COUNTERPART_ATTRIBUTES, check_whole_data, counterpart_table, labelled_by_clusters
from ._covariates import network_sizes, with_covariates
from ._persistence import Saveable, SavedEmbedder, atomic_torch_save, embedder_state, read_save, unchanged_on_failure
from ._query import check_query, grown_module, only_new_categories, query_covariates
from ._threads import limited_threads
from ._validation import (
    check_architecture,
    check_network_fits_memory,
    checked_codes,
    continuous_names,
    hidden_layer_sizes,
    refuse_boolean_numbers,
    validated_input,
    validated_rows,
    warn_if_code_wider,
)
from .nn.likelihoods import LIKELIHOODS, make_likelihood
from .train.data import map_minibatches
from .train.loop import TrainingConfig, epochs_for, mean_loss
from .train.session import TrainingSession, training_device

# Rows per forward pass at inference: large enough to amortise the per-call overhead,
# small enough that a dense block of 10^4-10^5 genes stays well under a GB.
_INFERENCE_BATCH_SIZE = 2048
# Consecutive rows shuffled together when training from disk ("auto"): a file stores values in chunks of
# tens of thousands, so a row read alone costs a whole chunk; 16 rows share their chunks.
DISK_SHUFFLE_BLOCK = 16


class BaseEmbedder(Saveable, ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator, metaclass=ABCMeta):
    """Base class for the neural embedders; not for direct use.

    A subclass implements ``_build_module(n_features, hidden_layer_sizes, **options)``,
    returning a model of :mod:`skvae.nn.models`, and, for variational models,
    ``_kl_weight()``. Parameters are documented on the public estimators.

    Parameters
    ----------
    n_components, hidden_layer_sizes, input_activation, likelihood, batch_norm, dropout, encode_batch, \
continuous_covariates, dispersion, batch_adversary, batch_model, batch_counterparts, batch_size, shuffle_block_size, learning_rate, max_epochs, \
early_stopping, validation_fraction, n_iter_no_change, tol, random_state, algorithm, device, n_jobs, verbose
        As documented on the public estimators, e.g. :class:`~skvae.AutoencoderEmbedder`.

    Attributes
    ----------
    module_ : torch.nn.Module
    history_ : dict of list of float
    n_iter_ : int
    algorithm_ : {"sparse", "dense"}
    n_features_in_ : int
    feature_names_in_ : ndarray of shape (`n_features_in_`,)
    batch_categories_ : ndarray of shape (n_batches,), dict of str to ndarray, or None

    Examples
    --------
    >>> from skvae import AutoencoderEmbedder
    >>> from skvae.base import BaseEmbedder
    >>> issubclass(AutoencoderEmbedder, BaseEmbedder)
    True
    """

    _parameter_constraints = {
        "n_components": [Interval(Integral, 1, None, closed="left")],
        "hidden_layer_sizes": ["array-like"],
        "input_activation": ["boolean"],
        "likelihood": [StrOptions(set(LIKELIHOODS))],
        "batch_norm": ["boolean"],
        "dropout": [Interval(Real, 0, 1, closed="left")],
        "encode_batch": ["boolean"],
        "continuous_covariates": ["array-like", str, None],
        "dispersion": [StrOptions({"gene", "gene-batch"})],
        "batch_adversary": [Interval(Real, 0, None, closed="left")],
        "batch_model": [StrOptions({"layers", "genes"})],
        "batch_counterparts": [Interval(Real, 0, None, closed="neither"), None],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "shuffle_block_size": [Interval(Integral, 1, None, closed="left"), StrOptions({"auto"})],
        "learning_rate": [Interval(Real, 0, None, closed="neither")],
        "max_epochs": [Interval(Integral, 1, None, closed="left"), StrOptions({"auto"})],
        "early_stopping": ["boolean"],
        "validation_fraction": [Interval(Real, 0, 1, closed="neither")],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left")],
        "tol": [Interval(Real, 0, None, closed="left")],
        "random_state": ["random_state"],
        "algorithm": [StrOptions({"auto", "dense", "sparse"})],
        "device": [str, torch.device],
        "n_jobs": [Interval(Integral, 1, None, closed="left"), Interval(Integral, None, -1, closed="right"), None],
        "verbose": ["verbose"],
    }

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
        self.n_components = n_components
        self.hidden_layer_sizes = hidden_layer_sizes
        self.input_activation = input_activation
        self.likelihood = likelihood
        self.batch_norm = batch_norm
        self.dropout = dropout
        self.encode_batch = encode_batch
        self.continuous_covariates = continuous_covariates
        self.dispersion = dispersion
        self.batch_adversary = batch_adversary
        self.batch_model = batch_model
        self.batch_counterparts = batch_counterparts
        self.batch_size = batch_size
        self.shuffle_block_size = shuffle_block_size
        self.learning_rate = learning_rate
        self.max_epochs = max_epochs
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.tol = tol
        self.random_state = random_state
        self.algorithm = algorithm
        self.device = device
        self.n_jobs = n_jobs
        self.verbose = verbose

    @abstractmethod
    def _build_module(self, n_features, hidden_layer_sizes, **options):
        """Return a fresh, randomly initialised model of :mod:`skvae.nn.models`.

        ``options`` are the model's keyword arguments that every estimator sets the
        same way: ``likelihood``, ``input_activation``, ``batch_norm``, ``dropout``, ``n_categories``,
        ``n_continuous``, ``encode_batch``, ``gene_factors`` (``batch_model="genes"``) and ``adversary`` (whether the
        model has an adversarial batch classifier; its weight comes with each training call, :meth:`_training_config`).
        """

    def _make_module(self, n_features, hidden_layer_sizes):
        sizes = network_sizes(self.covariates_, self.dispersion, self.batch_model, self.likelihood)
        likelihood = make_likelihood(self.likelihood, n_features, dispersion_categories=sizes.pop("dispersion_categories"))
        mapped = hasattr(self, "n_reference_categories_")  # map_query added query categories
        return self._build_module(n_features, hidden_layer_sizes, likelihood=likelihood, **sizes,
                                  input_activation=self.input_activation, batch_norm=self.batch_norm,
                                  dropout=self.dropout, encode_batch=self.encode_batch or mapped,
                                  adversary=self.batch_adversary > 0)

    @property
    def _models_counts(self):
        return LIKELIHOODS[self.likelihood].counts

    def _whom(self):
        return f"{type(self).__name__}(likelihood={self.likelihood!r}), which models raw counts"

    def _kl_weight(self):
        """Weight of the KL term in the training loss."""
        return 0.0

    def _kl_warmup_epochs(self):
        """Epochs of the KL weight's linear warm-up."""
        return 0

    def _validate_params(self):
        super()._validate_params()
        refuse_boolean_numbers(self, self._parameter_constraints)

    def _architecture(self):
        """The parameters that shape the torch module: fixed once it is built (of ``batch_adversary``, whether > 0)."""
        return {"n_components": self.n_components, "hidden_layer_sizes": hidden_layer_sizes(self.hidden_layer_sizes),
                "input_activation": self.input_activation, "likelihood": self.likelihood,
                "batch_norm": self.batch_norm, "dropout": self.dropout, "encode_batch": self.encode_batch,
                "continuous_covariates": continuous_names(self.continuous_covariates), "dispersion": self.dispersion,
                "batch_adversary": self.batch_adversary > 0, "batch_model": self.batch_model}

    def _check_architecture(self, doing):
        """Refuse to continue or save a model whose shaping parameters were changed by set_params since it was built."""
        check_architecture(getattr(self, "_built_architecture", None), self._architecture(), self.get_params(),
                           reader=type(self).__name__, doing=doing)

    def _check_fitted(self, doing):
        """Refuse a model that is not fitted, or whose shaping parameters set_params changed since it was built."""
        check_is_fitted(self)
        self._check_architecture(doing)

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None, *, batch=None):
        """Train the model on ``X``.

        Parameters
        ----------
        X : {array-like, sparse matrix, anndata.abc.CSRDataset} of shape (n_samples, n_features)
            Training data, e.g. log-normalised and scaled expression, cells in rows.
            Sparse input stays sparse (``algorithm="auto"`` computes on its
            stored entries; ``algorithm="dense"`` densifies it one minibatch at a
            time); a CSR matrix on disk (a backed AnnData's ``X``) is read one
            minibatch at a time.
        y : Ignored
            Not used, present for API consistency by convention.
        batch : array-like of shape (n_samples,), DataFrame or dict, default=None
            Each cell's batch (sample, donor, technology): any hashable labels,
            such as strings, integers or a pandas categorical. The decoder is
            conditioned on it, so the codes need not keep batches apart
            (integration, as scVI's ``batch_key``). Several covariates at once: a
            DataFrame or a dict of named columns of labels (e.g.
            ``adata.obs[["sample", "technology"]]``, scVI's ``batch_key`` plus
            ``categorical_covariate_keys``), each one-hot into the decoder; the
            first column is the batch that the adversary and
            ``dispersion="gene-batch"`` follow (put the finest first, e.g. the
            sample before its technology). Its categories are recorded in
            ``batch_categories_``. None: no batches.

        Returns
        -------
        self : object
            The fitted estimator.
        """
        with limited_threads(self.n_jobs):
            return self._fit(X, batch, incremental=False, y=y)

    def fit_transform(self, X, y=None, *, batch=None):
        """Fit the model on ``X`` and return its codes.

        Parameters
        ----------
        X : {array-like, sparse matrix, anndata.abc.CSRDataset} of shape (n_samples, n_features)
        y : Ignored
        batch : array-like of shape (n_samples,), DataFrame or dict, default=None
            Each cell's batch, as in :meth:`fit`.

        Returns
        -------
        X_new : ndarray of shape (n_samples, n_components)
        """
        return self.fit(X, y, batch=batch).transform(X, batch=batch)

    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X, y=None, *, batch=None):
        """Train one pass over the rows of ``X``, continuing the model of earlier calls.

        The first call (or the first after :meth:`fit` was never called) creates
        the model from ``X``'s features; each later call continues it, with the
        same optimiser state, shuffling and noise: ``E`` calls on the same data
        give the model of ``fit`` with ``max_epochs=E``. A call after :meth:`fit`
        continues the fitted model. The KL warm-up counts the passes of every call
        (``n_iter_``). Early stopping does not apply (``early_stopping`` is
        ignored), and a collapse is recorded in ``active_components_`` but not
        warned of: early passes are expected to have few active dimensions.

        Between calls, ``set_params`` may change how training goes on: a new
        ``learning_rate``, ``batch_size`` or loss weight (``beta``, the
        strength of ``batch_adversary``, a classifier's
        ``classification_weight``) applies from the next call, each the same
        way; a parameter that shapes the network (``n_components``,
        ``hidden_layer_sizes``, ``input_activation``, ``likelihood``,
        ``batch_norm``, ``dropout``, ``encode_batch``,
        ``continuous_covariates``, ``dispersion``, ``batch_adversary`` turned
        on or off, ``batch_model``, the beta-VSC's prior) cannot follow, and the next call
        raises a ValueError: call :meth:`fit` to build a new model.

        Parameters
        ----------
        X : {array-like, sparse matrix, anndata.abc.CSRDataset} of shape (n_samples, n_features)
            A chunk of training data, e.g. rows read from a file larger than
            memory, with the features of the first call.
        y : Ignored
            Not used, present for API consistency by convention.
        batch : array-like of shape (n_samples,), DataFrame or dict, default=None
            Each cell's batch, as in :meth:`fit`. The first call fixes the
            categories: later chunks may hold any of them, but no new one.

        Returns
        -------
        self : object
            The estimator, trained one pass further.
        """
        with limited_threads(self.n_jobs):
            return self._fit(X, batch, incremental=True, y=y)

    def _fit(self, X, batch, *, incremental, y=None):
        """The one training path: ``fit`` (a new model, ``max_epochs``) or ``partial_fit`` (continue, one pass).

        Nothing is changed when it fails: the estimator keeps the attributes, weights and
        training state it had before the call.
        """
        trained = (getattr(self, "module_", None), getattr(self, "_training_state", None)) if incremental else ()
        with unchanged_on_failure(self, *trained):
            first = not (incremental and hasattr(self, "module_"))
            if first:  # a new model: the categories an earlier model mapped are gone with it
                self.__dict__.pop("n_reference_categories_", None)
            session = TrainingSession(training_device(self.device))
            check_whole_data(self.batch_counterparts, incremental, session.parallel)
            data, sizes = session.agree(lambda: self._training_data(X, batch, first, y))
            # a new model, or one loaded from a file, gets a new optimiser, shuffling and noise
            module = session.start(lambda: self._make_module(data.n_features, sizes) if first else self.module_,
                                   state=None if first else getattr(self, "_training_state", None),
                                   random_state=self.random_state, learning_rate=self.learning_rate,
                                   same=self._same_on_every_rank)
            self._pool_ranks(session.parallel, first)
            train_data, val_data = session.split(data, self.validation_fraction if self.early_stopping and not
                                                 incremental else None)
            self._resolve_budget(session.count(train_data), keep=incremental and not first)
            self.shuffle_block_size_ = ((DISK_SHUFFLE_BLOCK if data.on_disk else 1) if self.shuffle_block_size == "auto"
                                        else self.shuffle_block_size)
            history, self.algorithm_ = session.train(
                module, train_data, val_data, config=self._training_config(incremental),
                algorithm=self.algorithm if first or not incremental else self.algorithm_,
                center=not self._models_counts, start_epoch=0 if first or not incremental else self.n_iter_)
            if incremental and not first:
                history = {key: self.history_.get(key, []) + values for key, values in history.items()}
            self._set_fitted(module, history)
            self._built_architecture = self._architecture()
            self._training_state = session.state  # what partial_fit needs to continue as more epochs of this fit would
            self._fitted_on(data, incremental, session.parallel)
        return self

    def _pool_ranks(self, parallel, first):
        """Pool what this call's training needs from every rank's rows (``parallel``: the rank group, or None for one
        process), once the ranks agree on the estimator; ``first``: a new model (else a partial_fit that continues
        one). An embedder needs nothing."""

    def _training_data(self, X, batch, first, y=None):
        """The checked rows with their covariates, and the hidden layer sizes; a new model's network checked too.

        ``y`` is ignored: an embedder learns from the expression alone (a classifier adds the labels).
        """
        data = self._input(X, batch, reset=first, training=True)
        if first:
            data = self._with_counterparts(data)
        sizes = hidden_layer_sizes(self.hidden_layer_sizes)
        if first:
            check_network_fits_memory(data.n_features, sizes, likelihood=self.likelihood, encode_batch=self.encode_batch,
                                      **network_sizes(self.covariates_, self.dispersion, self.batch_model, self.likelihood))
            warn_if_code_wider(self.n_components, sizes)
        else:
            self._check_architecture("continue it with partial_fit")
        return data, sizes

    def _with_counterparts(self, data):
        """``data`` with each cell's group of clusters as its label where ``batch_counterparts`` gates the adversary, and
        its fitted attributes (:func:`~skvae._counterparts.labelled_by_clusters`); ``data`` unchanged where it does not."""
        data, attributes = labelled_by_clusters(self, data)
        for name in COUNTERPART_ATTRIBUTES:
            self.__dict__.pop(name, None)
        self.__dict__.update(attributes)
        return data

    def _input(self, X, batch, *, reset=False, training=False, **options):
        """:func:`~skvae._validation.validated_input` of this model; ``reset`` (fit) records the covariates of ``batch``."""
        data, covariates = validated_input(self, X, batch, covariates=getattr(self, "covariates_", None), reset=reset,
                                           training=training, counts=self._models_counts, whom=self._whom(),
                                           continuous=self.continuous_covariates, **options)
        if reset:
            self._set_covariates(covariates)
        return data

    def _same_on_every_rank(self):
        covariates = getattr(self, "covariates_", None)
        return {"the estimator": repr(self), "the number of features": self.n_features_in_,
                "the feature names": getattr(self, "feature_names_in_", np.array([])).tolist(),
                "the batch categories": None if covariates is None else covariates.listed()}

    def _resolve_budget(self, n_cells, *, keep):
        """Record ``max_epochs_``: "auto" follows the number of training cells (:func:`~skvae.train.loop.epochs_for`).

        ``keep``: a partial_fit that continues a model keeps the "auto" budget resolved at its first call.
        """
        if not (keep and self.max_epochs == "auto" and hasattr(self, "max_epochs_")):
            self.max_epochs_ = epochs_for(n_cells) if self.max_epochs == "auto" else self.max_epochs

    def _training_config(self, incremental):
        """The settings the loop reads, this call's weights among them (a weight set_params changed applies now)."""
        return TrainingConfig(kl_weight=self._kl_weight(), kl_warmup_epochs=self._kl_warmup_epochs(),
                              batch_size=self.batch_size, shuffle_block_size=self.shuffle_block_size_,
                              max_epochs=1 if incremental else self.max_epochs_, n_iter_no_change=self.n_iter_no_change,
                              tol=self.tol, verbose=self.verbose, adversary_weight=self.batch_adversary,
                              held_types=counterpart_table(self))

    def _set_covariates(self, covariates):
        """Record the covariates of ``batch=`` (a :class:`~skvae._covariates.Covariates`, or None)."""
        self.covariates_ = covariates
        self.batch_categories_ = None if covariates is None else covariates.categories

    def _check_active_components(self, data, warn=True):
        """Variational models: count the active latent dimensions of the codes of ``data``'s rows and warn of a collapse."""

    def _fitted_on(self, data, incremental, parallel=None):
        """What a fit learns from its training rows after the training itself (the codes' active dimensions).

        ``parallel``: the rank group of a data-parallel run (each rank holds its own rows), or None.
        """
        self._check_active_components(data, warn=not incremental)

    # fitted attributes beyond the module and history that save keeps, as lists
    _saved_attributes = ("max_epochs_", "shuffle_block_size_", "n_reference_categories_", *COUNTERPART_ATTRIBUTES)

    def _set_fitted(self, module, history):
        self.module_ = module.eval()
        self.history_ = history
        self.n_iter_ = len(history.get("loss", []))
        self._n_features_out = self.n_components
        return self

    def _map_rows(self, method, data):
        """``self.module_.<method>`` of the rows of ``data`` (:func:`~skvae.train.data.map_minibatches`)."""
        with limited_threads(self.n_jobs):
            return map_minibatches(self.module_, method, data, _INFERENCE_BATCH_SIZE)

    def _fitted_data(self, X, batch):
        """The rows of ``X`` for a fitted model's encoder: its features, in float32 or float64, with batches if it reads them."""
        self._check_fitted("embed cells")
        # an encoder that sees expression only ignores the batch: codes do not depend on it (until map_query)
        reads = self.module_.encode_batch
        return self._input(X, batch if reads else None, required=reads)

    def transform(self, X, *, batch=None):
        """Embed ``X``: the deterministic latent code of each cell.

        Parameters
        ----------
        X : {array-like, sparse matrix, anndata.abc.CSRDataset} of shape (n_samples, n_features)
            Data with the features seen in ``fit``.
        batch : array-like of shape (n_samples,), DataFrame or dict, default=None
            Each cell's batch (as in :meth:`fit`), read only when the encoder takes it
            (``encode_batch=True``, fitted with batches); otherwise ignored, and
            cells of any batch, seen in ``fit`` or not, embed as they are.

        Returns
        -------
        X_new : ndarray of shape (n_samples, n_components)
            Latent codes, float32 for float32 input, else float64.
        """
        return self._map_rows("embed", self._fitted_data(X, batch))

    def map_query(self, X, *, batch, max_epochs="auto"):
        """Map cells of new batches onto this fitted reference without moving it (scArches' surgery).

        The model learns the new categories of ``batch`` from the cells of ``X``:
        rows for them are added to the decoder's tables of batch offsets and to
        the encoder's, and, with ``dispersion="gene-batch"``, to the table of
        dispersions; only those rows are trained, on these cells, every other
        weight frozen, batch normalisation (and the standardisation of
        continuous covariates) on the reference's statistics, and the batch
        adversary off (its classes are the reference's batches). The
        reference's codes, decoding and predictions stay the same to the bit.
        An encoder that reads no batch (``encode_batch=False``) is not trained:
        it gets a table of zeros at its input layer, so the query's codes are
        those :meth:`transform` gave before mapping, never farther from the
        reference (scArches leaves scVI's default encoder so); the decoder
        learns to draw them in their own batch. With ``encode_batch=True`` (or
        ``batch_model="genes"``) the query's codes move to where the
        reference's decoder, given their batch's own rows, explains them.
        Afterwards :meth:`transform` (and a classifier's ``predict``)
        reads ``batch=`` for every cell, and knows the new categories; the
        reference's cells are embedded with their own. Under ``torchrun`` it
        trains as ``fit`` does: every rank checks its cells (one rank's error
        stops all), a matrix on disk is shared out between the ranks.

        Parameters
        ----------
        X : {array-like, sparse matrix, anndata.abc.CSRDataset} of shape (n_samples, n_features)
            The query's cells, with the features seen in ``fit``.
        batch : array-like of shape (n_samples,), DataFrame or dict
            Each query cell's batch (the columns of ``fit``'s ``batch=``); at least
            one category the model lacks. Cells of known categories may be among
            them (they teach the new rows nothing).
        max_epochs : int or "auto", default="auto"
            Passes over the query's cells; "auto" as the estimator's
            ``max_epochs="auto"`` for that many cells (200 up to 20,000).

        Returns
        -------
        self : object
            The estimator, with the new categories in ``batch_categories_`` (the
            counts of ``fit``'s in ``n_reference_categories_``).
        """
        self._check_fitted("map a query onto it")
        check_query(self.covariates_, batch, max_epochs, reader=type(self).__name__)
        with limited_threads(self.n_jobs), unchanged_on_failure(self):
            session = TrainingSession(training_device(self.device))
            data, before = session.agree(lambda: self._query_data(X, batch))
            module = session.start(lambda: grown_module(self.module_, lambda: self._make_module(
                data.n_features, hidden_layer_sizes(self.hidden_layer_sizes)), before),
                random_state=self.random_state, learning_rate=self.learning_rate, same=self._same_on_every_rank)
            train_data, _ = session.split(data)
            config = replace(self._training_config(incremental=False), kl_warmup_epochs=0, adversary_weight=0.0,
                             max_epochs=epochs_for(session.count(train_data)) if max_epochs == "auto" else max_epochs)
            # an encoder that reads no batch stays as it was: mapping never moves a query from where transform puts it
            with only_new_categories(module, before, encoder=self.encode_batch):
                session.train(module, train_data, config=config, algorithm=self.algorithm_,
                              center=not self._models_counts)
            self.module_ = module.eval()
            # partial_fit would continue the reference's optimiser, which knows none of the new weights
            self.__dict__.pop("_training_state", None)
        return self

    def _query_data(self, X, batch):
        """A query's checked rows with its covariates, the model's grown by its new categories; and the sizes before."""
        rows = validated_rows(self, X, reset=False, training=True, counts=self._models_counts, whom=self._whom())
        extended, before = query_covariates(self.covariates_, batch, rows.n_rows, reader=type(self).__name__)
        self.n_reference_categories_ = getattr(self, "n_reference_categories_", np.asarray(before))
        self._set_covariates(extended)
        return with_covariates(rows, extended, batch, reader=type(self).__name__, required=True), before

    def inverse_transform(self, X, *, batch=None):
        """Decode latent codes back to feature space.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_components)
            Latent codes, e.g. from :meth:`transform`.
        batch : label, array-like of shape (n_samples,), DataFrame or dict, default=None
            For a model fitted with batches: the batch to decode each code as
            measured in, one label for all codes or one per code (for several
            columns: a dict of one label per column, or a DataFrame of a row per
            code). Decoding every cell as one batch gives batch-corrected
            expression (scVI's ``transform_batch``). Required for such a model.

        Returns
        -------
        X_original : ndarray of shape (n_samples, n_features)
            Reconstructed data, float32 for float32 input, else float64. For count
            likelihoods: the expected normalised expression, per-gene proportions
            times 1e4 (the scale of :class:`~skvae.preprocessing.LogNormalizer`
            before its log).
        """
        self._check_fitted("decode codes")
        codes = self._input(checked_codes(X, self.n_components, reader=type(self).__name__), batch, one_for_all=True)
        return self._map_rows("decode", codes)

    def score(self, X, y=None, *, batch=None):
        """Negative mean loss per cell: higher is better.

        The loss is the negative log-likelihood of the cell given the
        deterministic code (the summed squared error for ``likelihood="gaussian"``)
        plus, for variational models, the KL divergence with weight 1 (the negative
        evidence lower bound, up to constants), whatever ``beta`` was used in
        training. Scores compare across ``beta`` and other training settings, but
        not across likelihoods: each likelihood measures its own kind of data.

        Parameters
        ----------
        X : {array-like, sparse matrix, anndata.abc.CSRDataset} of shape (n_samples, n_features)
            Data with the features seen in ``fit``.
        y : Ignored
            Not used, present for API consistency by convention.
        batch : array-like of shape (n_samples,), DataFrame or dict, default=None
            Each cell's batch (as in :meth:`fit`), from those seen in ``fit``;
            required for a model fitted with batches.

        Returns
        -------
        score : float
        """
        self._check_fitted("score cells")
        # the loss is computed in float32, as in training
        data = self._input(X, batch, float32_range=True)
        source = data.source(algorithm=self.algorithm_, center=not self._models_counts)
        with limited_threads(self.n_jobs):
            return -mean_loss(self.module_, source, kl_weight=1.0, batch_size=_INFERENCE_BATCH_SIZE)

    def save(self, path):
        """Save parameters and weights to ``path``, readable by :meth:`load`.

        The file holds only tensors, numbers and strings, so :meth:`load` reads it
        with ``torch.load(weights_only=True)`` and never unpickles arbitrary objects.
        A ``random_state`` that is a RandomState instance is saved as None; numpy
        numbers and arrays among the parameters are saved as Python numbers and
        lists. The file is written beside ``path`` and moved into place, so a
        failed save leaves the previous file intact. A model whose shaping
        parameters (``n_components``, ``hidden_layer_sizes``, ``likelihood``, ...)
        were changed by ``set_params`` after fit is refused: its file could not be
        loaded.

        Parameters
        ----------
        path : str or path-like
            Destination file.
        """
        atomic_torch_save(self.saved_state(), path)

    def saved_state(self):
        """What :meth:`save` writes, as a dictionary of builtins and tensors (also a pipeline's step).

        Returns
        -------
        dict
            Parameters, weights and fitted attributes (:func:`~skvae._persistence.embedder_state`).
        """
        self._check_fitted("save it")
        return embedder_state(self, self._saved_attributes)

    @classmethod
    def load(cls, path):
        """Load an estimator written by :meth:`save`.

        Parameters
        ----------
        path : str or path-like
            File written by :meth:`save` of this class.

        Returns
        -------
        estimator : object
            A fitted estimator, on CPU.
        """
        return cls.from_saved_state(read_save(path, reader=cls.__name__), path)

    @classmethod
    def from_saved_state(cls, state, path):
        """The fitted estimator of :meth:`saved_state`'s dictionary, every field checked.

        Parameters
        ----------
        state : dict
        path : str or path-like
            The file it was read from, for messages.

        Returns
        -------
        estimator : object
            Fitted, on CPU.
        """
        saved = SavedEmbedder.read(state, path)
        estimator = saved.estimator(cls, validate=cls._validate_params)
        estimator._set_covariates(saved.covariates)
        estimator.__dict__.update(saved.attributes_among(cls._saved_attributes))
        module = saved.module(lambda: estimator._make_module(saved.n_features,
                                                             hidden_layer_sizes(estimator.hidden_layer_sizes)))
        estimator.n_features_in_, estimator.algorithm_ = saved.n_features, saved.algorithm or estimator.algorithm
        if saved.feature_names is not None:
            estimator.feature_names_in_ = saved.feature_names
        estimator._built_architecture = estimator._architecture()
        return estimator._set_fitted(module, saved.history)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        tags.input_tags.positive_only = self.likelihood in LIKELIHOODS and self._models_counts
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags
