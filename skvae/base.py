"""The base estimator shared by every skvae embedder.

It owns what the models have in common: parameters and their constraints, input
validation, seeding, the call to the training loop, transform / inverse_transform /
score, scikit-learn tags, feature names and saving. A subclass adds only the torch
module it trains (``_build_module``) and, for variational models, the KL weight.
"""

import contextlib
import copy
import os
import warnings
from abc import ABCMeta, abstractmethod
from numbers import Integral, Real

import numpy as np
import pandas as pd
import torch
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin, _fit_context
from sklearn.utils import check_array, check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data

from ._persistence import ESTIMATOR_FIELDS, atomic_torch_save, check_fields, read_save, to_builtins
from ._threads import limited_threads
from ._validation import (
    ValueCheck,
    batch_labels,
    refuse_boolean_numbers,
    refuse_foreign_input,
    summed_duplicates,
)
from .nn.likelihoods import LIKELIHOODS, make_likelihood
from .train.data import RowData, iter_minibatches
from .train.distributed import data_parallel
from .train.loop import TrainingConfig, TrainingState, epochs_for, mean_loss, train
from .train.rows import DenseRowSource

# Rows per forward pass at inference: large enough to amortise the per-call overhead,
# small enough that a dense block of 10^4-10^5 genes stays well under a GB.
_INFERENCE_BATCH_SIZE = 2048
# |log theta| of the NB dispersions beyond which a loaded save is damaged: exp(50) is a Poisson, exp(-50) nothing
_LOG_DISPERSION_LIMIT = 50.0
# Consecutive rows shuffled together when training from disk ("auto"): a file stores values in chunks of
# tens of thousands, so a row read alone costs a whole chunk; 16 rows share their chunks.
DISK_SHUFFLE_BLOCK = 16
# old parameter name -> new one, for saves written before a rename
_RENAMED_PARAMETERS = {"prior_sparsity": "prior_activity"}


class BaseEmbedder(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator, metaclass=ABCMeta):
    """Base class for the neural embedders; not for direct use.

    A subclass implements ``_build_module(n_features, hidden_layer_sizes, likelihood)``,
    returning a model of :mod:`skvae.nn.models`, and, for variational models,
    ``_kl_weight()``. Parameters are documented on the public estimators.

    Parameters
    ----------
    n_components : int, default=6
    hidden_layer_sizes : array-like of int, default=(128, 32, 16)
    input_activation : bool, default=False
    likelihood : {"gaussian", "poisson", "nb", "zinb"}, default="gaussian"
    batch_norm : bool, default=False
    dropout : float, default=0.0
    encode_batch : bool, default=False
    dispersion : {"gene", "gene-batch"}, default="gene"
    batch_adversary : float, default=0.0
    batch_size : int, default=256
    shuffle_block_size : int or "auto", default="auto"
    learning_rate : float, default=1e-3
    max_epochs : int or "auto", default=200
    early_stopping : bool, default=False
    validation_fraction : float, default=0.1
    n_iter_no_change : int, default=10
    tol : float, default=1e-4
    random_state : int, RandomState instance or None, default=None
    algorithm : {"auto", "sparse", "dense"}, default="auto"
    device : {"auto", "cpu", "cuda"} or torch.device, default="auto"
    n_jobs : int, default=None
    verbose : int, default=0

    Attributes
    ----------
    module_ : torch.nn.Module
    history_ : dict of list of float
    n_iter_ : int
    algorithm_ : {"sparse", "dense"}
    n_features_in_ : int
    feature_names_in_ : ndarray of shape (`n_features_in_`,)
    batch_categories_ : ndarray of shape (n_batches,) or None

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
        "dispersion": [StrOptions({"gene", "gene-batch"})],
        "batch_adversary": [Interval(Real, 0, None, closed="left")],
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
        dispersion="gene",
        batch_adversary=0.0,
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
        self.dispersion = dispersion
        self.batch_adversary = batch_adversary
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
        same way: ``likelihood``, ``input_activation``, ``batch_norm``, ``dropout``, ``n_batches``,
        ``encode_batch`` and ``batch_adversary``.
        """

    def _make_module(self, n_features, hidden_layer_sizes):
        categories = getattr(self, "batch_categories_", None)
        n_batches = 0 if categories is None else len(categories)
        likelihood = make_likelihood(self.likelihood, n_features,
                                     dispersion_batches=n_batches if self.dispersion == "gene-batch" else 0)
        return self._build_module(n_features, hidden_layer_sizes, likelihood=likelihood,
                                  input_activation=self.input_activation, batch_norm=self.batch_norm,
                                  dropout=self.dropout, n_batches=n_batches, encode_batch=self.encode_batch,
                                  batch_adversary=self.batch_adversary)

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
        refuse_boolean_numbers(self)

    def _architecture(self):
        """The parameters that shape the torch module: fixed once it is built."""
        return {"n_components": self.n_components, "hidden_layer_sizes": self._validated_hidden_layer_sizes(),
                "input_activation": self.input_activation, "likelihood": self.likelihood,
                "batch_norm": self.batch_norm, "dropout": self.dropout, "encode_batch": self.encode_batch,
                "dispersion": self.dispersion, "batch_adversary": self.batch_adversary}

    def _check_architecture(self, doing):
        """Refuse to continue or save a model whose shaping parameters were changed by set_params since it was built."""
        built = getattr(self, "_built_architecture", None)
        if built is None:
            return
        changed = {name: value for name, value in self._architecture().items() if built.get(name) != value}
        if changed:
            listing = ", ".join(f"{name}={value!r} (the model has {built[name]!r})" for name, value in changed.items())
            raise ValueError(f"set_params changed {listing} after the model was built, which the fitted network "
                             f"cannot follow, so {type(self).__name__} cannot {doing}: set them back, or call fit to "
                             "build a new model.")

    def _check_fitted(self, doing):
        """Refuse a model that is not fitted, or whose shaping parameters set_params changed since it was built."""
        check_is_fitted(self)
        self._check_architecture(doing)

    def _validated_hidden_layer_sizes(self):
        sizes = self.hidden_layer_sizes
        try:
            items = list(sizes) if np.ndim(sizes) == 1 else None
        except ValueError:  # numpy refuses ragged nesting
            items = None
        if not items or not all(isinstance(s, Integral) and not isinstance(s, (bool, np.bool_)) and s >= 1 for s in items):
            raise ValueError(
                "hidden_layer_sizes must be a non-empty 1-D sequence of positive integers, "
                f"got {self.hidden_layer_sizes!r}."
            )
        return tuple(int(s) for s in items)

    def _training_device(self):
        if isinstance(self.device, str) and self.device == "auto":
            if not torch.cuda.is_available():
                return torch.device("cpu")
            # torchrun starts one process per GPU and tells each its own
            return torch.device("cuda", int(os.environ["LOCAL_RANK"])) if "LOCAL_RANK" in os.environ else torch.device("cuda")
        try:
            device = torch.device(self.device)
        except RuntimeError as exc:
            raise ValueError(f"device={self.device!r} is not a torch device: {exc}") from None
        if device.type not in ("cpu", "cuda"):
            raise ValueError(f"device={self.device!r}: skvae trains on 'cpu' or 'cuda' (or 'auto'), not {device.type!r}.")
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device={self.device!r} was requested but CUDA is not available; use 'cpu' or 'auto'.")
        return device

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None, *, batch=None):
        """Train the model on ``X``.

        Parameters
        ----------
        X : {array-like, sparse matrix, anndata.abc.CSRDataset} of shape (n_samples, n_features)
            Training data, e.g. log-normalised and scaled expression, cells in rows.
            Sparse input is densified one minibatch at a time; a CSR matrix on disk
            (a backed AnnData's ``X``) is read one minibatch at a time.
        y : Ignored
            Not used, present for API consistency by convention.
        batch : array-like of shape (n_samples,), default=None
            Each cell's batch (sample, donor, technology): any hashable labels,
            such as strings, integers or a pandas categorical. The decoder is
            conditioned on it, so the codes need not keep batches apart
            (integration, as scVI's ``batch_key``). Its categories are recorded
            in ``batch_categories_``. None: no batches.

        Returns
        -------
        self : object
            The fitted estimator.
        """
        with limited_threads(self.n_jobs):
            return self._fit(X, batch, incremental=False)

    def fit_transform(self, X, y=None, *, batch=None):
        """Fit the model on ``X`` and return its codes.

        Parameters
        ----------
        X : {array-like, sparse matrix, anndata.abc.CSRDataset} of shape (n_samples, n_features)
        y : Ignored
        batch : array-like of shape (n_samples,), default=None
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

        Between calls, ``set_params`` may change how training goes on (a new
        ``learning_rate``, ``beta``, ``batch_size`` applies from the next call);
        a parameter that shapes the network (``n_components``,
        ``hidden_layer_sizes``, ``likelihood``, ``batch_norm``, ``dropout``,
        ``encode_batch``, the beta-VSC's prior) cannot follow, and the next call
        raises a ValueError: call :meth:`fit` to build a new model.

        Parameters
        ----------
        X : {array-like, sparse matrix, anndata.abc.CSRDataset} of shape (n_samples, n_features)
            A chunk of training data, e.g. rows read from a file larger than
            memory, with the features of the first call.
        y : Ignored
            Not used, present for API consistency by convention.
        batch : array-like of shape (n_samples,), default=None
            Each cell's batch, as in :meth:`fit`. The first call fixes the
            categories: later chunks may hold any of them, but no new one.

        Returns
        -------
        self : object
            The estimator, trained one pass further.
        """
        with limited_threads(self.n_jobs):
            return self._fit(X, batch, incremental=True)

    def _fit(self, X, batch, *, incremental):
        """The one training path: ``fit`` (a new model, ``max_epochs``) or ``partial_fit`` (continue, one pass).

        Nothing is changed when it fails: the estimator keeps the attributes, weights and
        training state it had before the call.
        """
        with self._unchanged_on_failure(incremental):
            first = not (incremental and hasattr(self, "module_"))
            device = self._training_device()
            parallel = data_parallel(device)
            # every rank validates before any collective, and all stop if one fails: none waits alone
            error = None
            try:
                data = self._validated_rows(X, reset=first, training=True)
                data = self._with_batch(data, batch, reset=first, required=True)
                hidden_layer_sizes = self._validated_hidden_layer_sizes()
            except Exception as exc:  # re-raised below, once the ranks agreed
                if parallel is None:
                    raise
                error = exc
            if parallel is not None:
                parallel.raise_if_any_failed(error)
            if first:
                self._refuse_networks_beyond_memory(data.n_features, hidden_layer_sizes)
                self._warn_if_code_wider_than(hidden_layer_sizes[-1])
            if not first:
                self._check_architecture("continue it with partial_fit")
            state = None if first else getattr(self, "_training_state", None)
            if state is not None:
                state.set_learning_rate(self.learning_rate)  # a learning rate set since applies from now on
            if state is None:  # a new model, or one loaded from a file: a new optimiser, shuffling and noise
                rng, seed = self._seeds(parallel)
                with torch.random.fork_rng(devices=_cuda_indices(device)):
                    torch.manual_seed(seed)  # the initialisation and dropout draw from a local seed
                    module = self._make_module(data.n_features, hidden_layer_sizes) if first else self.module_
                    torch_rng = _torch_rng_state(device)
                state = TrainingState(module, device=device, seed=seed, rng=rng, learning_rate=self.learning_rate,
                                      torch_rng=torch_rng)
            module = self.module_ if not first else module
            train_data, val_data = data.shard(parallel), None
            if self.early_stopping and not incremental:
                # a rank splits its rows with its own generator: the shuffling rng stays the same on every rank
                split_rng = state.rng if parallel is None else np.random.RandomState([seed, parallel.rank])
                train_data, val_data = train_data.split(self.validation_fraction, split_rng)
            n_cells = train_data.n_rows if parallel is None else sum(parallel.gather(train_data.n_rows))
            self._resolve_budget(n_cells, keep=incremental and not first)
            self.shuffle_block_size_ = (
                (DISK_SHUFFLE_BLOCK if data.on_disk else 1) if self.shuffle_block_size == "auto" else self.shuffle_block_size
            )
            center = not self._models_counts
            algorithm = self.algorithm if first or not incremental else self.algorithm_
            train_rows = train_data.source(algorithm=algorithm, center=center, device=device, with_transpose=True)
            # the validation rows take the representation "auto" chose for the training rows
            algorithm = _algorithm_of(train_rows)
            val_rows = None if val_data is None else val_data.source(algorithm=algorithm, center=center, device=device)
            fingerprint = data.fingerprint() if data.on_disk else None
            module.to(device)
            state.train_on(device)
            with torch.random.fork_rng(devices=_cuda_indices(device)):
                _set_torch_rng_state(state.torch_rng, device)
                history = train(module, train_rows, val_rows, config=self._training_config(incremental), state=state,
                                device=device, parallel=parallel, start_epoch=0 if first or not incremental else self.n_iter_)
                state.torch_rng = _torch_rng_state(device)
            state.to(torch.device("cpu"))
            if fingerprint is not None and data.fingerprint() != fingerprint:
                raise ValueError(f"{data.filename} was modified while skvae trained on it: the model saw a mix of "
                                 "old and new values, so it is not kept. Train on a file nothing writes to.")
            if incremental and not first:
                history = {key: self.history_.get(key, []) + values for key, values in history.items()}
            self._set_fitted(module.cpu(), history)
            self._built_architecture = self._architecture()
            self.algorithm_ = algorithm
            # what partial_fit needs to continue as more epochs of this fit would
            self._training_state = state
            self._check_active_components(data, warn=not incremental)
        return self

    @contextlib.contextmanager
    def _unchanged_on_failure(self, incremental):
        """Undo every change to the estimator when the block raises: attributes, and weights trained in place."""
        attributes = dict(self.__dict__)
        module, state = getattr(self, "module_", None), getattr(self, "_training_state", None)
        in_place = incremental and module is not None
        weights = {key: value.clone() for key, value in module.state_dict().items()} if in_place else None
        training = state.snapshot() if in_place and state is not None else None
        try:
            yield
        except BaseException:
            self.__dict__.clear()
            self.__dict__.update(attributes)
            if weights is not None:
                module.cpu().load_state_dict(weights)
            if training is not None:
                state.restore(training)
            raise

    def _refuse_networks_beyond_memory(self, n_features, hidden_layer_sizes):
        """A ValueError, before anything is allocated, for a network whose genes-wide tables exceed the memory."""
        n_heads = len(LIKELIHOODS[self.likelihood].heads)
        categories = getattr(self, "batch_categories_", None)
        n_batches = 0 if categories is None else len(categories)
        # per weight: itself, its gradient and Adam's two moments, in float32
        weights = n_features * hidden_layer_sizes[0] * (1 + n_heads)  # the input layer and the output heads
        # one-hot batches into every decoder layer (and the encoder's first), a dispersion per gene and batch
        weights += n_batches * (sum(hidden_layer_sizes) + hidden_layer_sizes[0] * self.encode_batch)
        weights += n_batches * n_features * (self.dispersion == "gene-batch")
        needed = 4 * 4 * weights
        memory = _physical_memory()
        if memory and needed > memory:
            what = f"X has {n_features} features" + (f" and batch {n_batches} categories" if n_batches else "")
            raise ValueError(f"{what}: the network's layers over them would take {needed / 2**30:.3g} GiB, more than "
                             f"this machine's {memory / 2**30:.3g} GiB. Select genes first (e.g. HighlyVariableGenes), "
                             "check the matrix's shape" + (", and check that batch holds batches (samples, donors), "
                                                           "not one label per cell" if n_batches else "") + ".")

    def _warn_if_code_wider_than(self, last_hidden):
        if self.n_components > last_hidden:
            widened = tuple(max(size, self.n_components) for size in self._validated_hidden_layer_sizes())
            warnings.warn(
                f"n_components={self.n_components} is larger than the last hidden layer ({last_hidden}): "
                f"the code is computed from, and decoded through, {last_hidden} units, so it carries at "
                f"most that many independent directions. Widen the network, e.g. hidden_layer_sizes={widened}.",
                UserWarning,
                stacklevel=5,
            )

    def _resolve_budget(self, n_cells, *, keep):
        """Record ``max_epochs_``: "auto" follows the number of training cells (:func:`~skvae.train.loop.epochs_for`).

        ``keep``: a partial_fit that continues a model keeps the "auto" budget resolved at its first call.
        """
        if not (keep and self.max_epochs == "auto" and hasattr(self, "max_epochs_")):
            self.max_epochs_ = epochs_for(n_cells) if self.max_epochs == "auto" else self.max_epochs

    def _training_config(self, incremental):
        return TrainingConfig(
            kl_weight=self._kl_weight(),
            kl_warmup_epochs=self._kl_warmup_epochs(),
            batch_size=self.batch_size,
            shuffle_block_size=self.shuffle_block_size_,
            max_epochs=1 if incremental else self.max_epochs_,
            n_iter_no_change=self.n_iter_no_change,
            tol=self.tol,
            verbose=self.verbose,
        )

    def _seeds(self, parallel):
        """The RandomState that shuffles (the same on every rank) and the integer seed of torch's draws."""
        # None draws fresh entropy rather than from numpy's global RandomState, which stays untouched
        rng = np.random.RandomState() if self.random_state is None else check_random_state(self.random_state)
        if parallel is not None:
            parallel.check_same("the estimator", repr(self))
            parallel.check_same("the number of features", self.n_features_in_)
            parallel.check_same("the feature names", getattr(self, "feature_names_in_", np.array([])).tolist())
            categories = getattr(self, "batch_categories_", None)
            parallel.check_same("the batch categories", None if categories is None else categories.tolist())
            if self.random_state is None:
                rng = np.random.RandomState(parallel.broadcast_seed(rng.randint(np.iinfo(np.int32).max)))
        return rng, rng.randint(np.iinfo(np.int32).max)

    def _validated_rows(self, X, *, reset, training, float32_range=None):
        """``X`` checked and decided once, as a :class:`~skvae.train.data.RowData`.

        For training (``training=True``) at least 2 rows, values within float32's range,
        and rows in memory cast to float32; for a fitted model, the features it was fitted
        on, in float32 or float64. The values get the same checks in memory and on disk.
        """
        refuse_foreign_input(X)
        dtype = [np.float32, np.float64] if training else [np.float64, np.float32]
        min_rows = 2 if training else 1
        data = RowData.from_input(X, check_in_memory=lambda X: summed_duplicates(validate_data(
            self, X, accept_sparse="csr", dtype=dtype, ensure_min_samples=min_rows, reset=reset)))
        if data.on_disk:
            self._check_file(data, reset=reset, min_rows=min_rows)
        check = ValueCheck(counts=self._models_counts, whom=self._whom(), check_finite=data.on_disk,
                           float32_range=training or data.on_disk if float32_range is None else float32_range)
        for values in data.value_blocks():
            check.update(values)
        check.finish(stacklevel=4)
        return data.astype(np.float32) if training else data

    def _check_file(self, data, *, reset, min_rows):
        """What ``validate_data`` checks in memory, for a matrix on disk: layout, features, rows."""
        if data.format != "csr":
            raise TypeError(f"X is a {data.format.upper()} matrix on disk: skvae reads cells (rows), which a CSC file "
                            "stores scattered. Write the matrix as CSR (cells x genes), e.g. adata.X = "
                            "adata.X.tocsr() before adata.write_h5ad.")
        if data.n_features < 1:
            raise ValueError(f"{data.filename} holds a matrix of 0 genes: there is nothing to embed.")
        data.check_layout()
        if reset:
            self.n_features_in_ = data.n_features
            if hasattr(self, "feature_names_in_"):
                del self.feature_names_in_
        elif data.n_features != self.n_features_in_:
            raise ValueError(f"X has {data.n_features} features, but {type(self).__name__} is expecting "
                             f"{self.n_features_in_} features as input.")
        if data.n_rows < min_rows:
            raise ValueError(f"Found array with {data.n_rows} sample(s) while a minimum of {min_rows} is required.")

    def _with_batch(self, data, batch, *, reset, required, one_for_all=False):
        """``data`` with each row's batch as a covariate: its index into ``batch_categories_``.

        ``reset`` records the categories of ``batch`` (None: no batches). Otherwise the
        labels must be among those recorded, and must be given (``required``) to a model
        fitted with batches; ``one_for_all`` takes a single label for every row.
        """
        name = type(self).__name__
        if reset:
            labels = None if batch is None else batch_labels(batch, data.n_rows)
            self.batch_categories_ = None if labels is None else _categories(labels)
        categories = getattr(self, "batch_categories_", None)
        if categories is None:
            if batch is not None:
                raise ValueError(f"batch was passed, but this {name} was fitted without batches: fit it with "
                                 "batch=... to condition it on them, or leave batch out.")
            return data
        if batch is None:
            if required:
                raise ValueError(f"This {name} was fitted with batches ({len(categories)}: "
                                 f"{_listing(categories)}): pass each cell's batch= as well.")
            return data
        labels = batch_labels(batch, data.n_rows, one_for_all=one_for_all)
        codes = pd.Categorical(labels, categories=categories).codes
        if (codes < 0).any():
            unseen = pd.unique(labels[codes < 0])
            raise ValueError(f"batch has categories not seen in fit: {_listing(unseen)}; the model knows "
                             f"{_listing(categories)}.")
        return data.with_covariates({"batch": codes.astype(np.int64)})

    def _check_active_components(self, data, warn=True):
        """Variational models: count the active latent dimensions of the codes of ``data``'s rows and warn of a collapse."""

    # fitted attributes beyond the module and history that save keeps, as lists
    _saved_attributes = ("max_epochs_", "shuffle_block_size_")

    def _set_fitted(self, module, history):
        self.module_ = module.eval()
        self.history_ = history
        self.n_iter_ = len(history.get("loss", []))
        self._n_features_out = self.n_components
        return self

    @torch.no_grad()
    def _map_rows(self, method, data):
        """Apply ``self.module_.<method>`` to the rows of ``data`` (a RowData) in their float precision.

        Sparse rows go through the encoder's sparse first layer; dense rows through dense
        products, so that each row's result does not depend on the others.
        """
        dtype = np.float32 if data.dtype == np.float32 else np.float64
        module = self.module_ if dtype == np.float32 else copy.deepcopy(self.module_).double()
        module.eval()
        source = data.source(algorithm="sparse" if data.stored_sparse else "dense", center=False, dtype=dtype)
        with limited_threads(self.n_jobs):
            return np.concatenate([getattr(module, method)(minibatch.x, **minibatch.covariates).numpy()
                                   for minibatch in iter_minibatches(source, _INFERENCE_BATCH_SIZE)])

    def _fitted_rows(self, X, batch):
        """The rows of ``X`` for a fitted model's encoder: its features, in float32 or float64, with batches if it reads them."""
        self._check_fitted("embed cells")
        data = self._validated_rows(X, reset=False, training=False)
        if not (self.encode_batch and getattr(self, "batch_categories_", None) is not None):
            return data  # the encoder sees expression only: codes do not depend on the batch
        return self._with_batch(data, batch, reset=False, required=True)

    def transform(self, X, *, batch=None):
        """Embed ``X``: the deterministic latent code of each cell.

        Parameters
        ----------
        X : {array-like, sparse matrix, anndata.abc.CSRDataset} of shape (n_samples, n_features)
            Data with the features seen in ``fit``.
        batch : array-like of shape (n_samples,), default=None
            Each cell's batch, read only when the encoder takes it
            (``encode_batch=True``, fitted with batches); otherwise ignored, and
            cells of any batch, seen in ``fit`` or not, embed as they are.

        Returns
        -------
        X_new : ndarray of shape (n_samples, n_components)
            Latent codes, float32 for float32 input, else float64.
        """
        return self._map_rows("embed", self._fitted_rows(X, batch))

    def inverse_transform(self, X, *, batch=None):
        """Decode latent codes back to feature space.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_components)
            Latent codes, e.g. from :meth:`transform`.
        batch : label or array-like of shape (n_samples,), default=None
            For a model fitted with batches: the batch to decode each code as
            measured in, one label for all codes or one per code. Decoding every
            cell as one batch gives batch-corrected expression (scVI's
            ``transform_batch``). Required for such a model.

        Returns
        -------
        X_original : ndarray of shape (n_samples, n_features)
            Reconstructed data, float32 for float32 input, else float64. For count
            likelihoods: the expected normalised expression, per-gene proportions
            times 1e4 (the scale of :class:`~skvae.preprocessing.LogNormalizer`
            before its log).
        """
        self._check_fitted("decode codes")
        X = check_array(X, dtype=[np.float64, np.float32])
        if X.shape[1] != self.n_components:
            raise ValueError(f"X has {X.shape[1]} columns, but {type(self).__name__} decodes codes of {self.n_components}.")
        codes = self._with_batch(RowData.from_input(X), batch, reset=False, required=True, one_for_all=True)
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
        batch : array-like of shape (n_samples,), default=None
            Each cell's batch, from those seen in ``fit``; required for a model
            fitted with batches.

        Returns
        -------
        score : float
        """
        self._check_fitted("score cells")
        # the loss is computed in float32, as in training
        data = self._validated_rows(X, reset=False, training=False, float32_range=True)
        data = self._with_batch(data, batch, reset=False, required=True)
        rows = data.source(algorithm=self.algorithm_, center=not self._models_counts)
        with limited_threads(self.n_jobs):
            return -mean_loss(self.module_, rows, kl_weight=1.0, batch_size=_INFERENCE_BATCH_SIZE)

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
        self._check_fitted("save it")
        atomic_torch_save(self._saved_state(), path)

    def _saved_state(self):
        """Parameters, weights and fitted attributes as builtins and tensors: what :meth:`save` writes."""
        params = self.get_params()
        params["device"] = str(params["device"])
        if not isinstance(params["random_state"], Integral):
            params["random_state"] = None
        params = {name: to_builtins(value, name) for name, value in params.items()}
        feature_names = getattr(self, "feature_names_in_", None)
        return {
            "estimator": type(self).__name__,
            "params": params,
            "state_dict": self.module_.state_dict(),
            "n_features_in_": int(self.n_features_in_),
            "feature_names_in_": None if feature_names is None else [str(name) for name in feature_names],
            "history_": {key: [float(v) for v in values] for key, values in self.history_.items()},
            "algorithm_": self.algorithm_,
            "batch_categories_": _saved_categories(getattr(self, "batch_categories_", None)),
            "attributes": {name: np.asarray(getattr(self, name)).tolist() for name in self._saved_attributes
                           if hasattr(self, name)},
        }

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
        state = read_save(path)
        if state["estimator"] != cls.__name__:
            raise ValueError(f"{path} holds {state['estimator']}, not {cls.__name__}: load it with "
                             f"{state['estimator']}.load.")
        return cls._from_saved_state(state, path)

    @classmethod
    def _from_saved_state(cls, state, path):
        """The fitted estimator of :meth:`_saved_state`'s dictionary, every field checked; ``path`` names the file."""
        check_fields(state, ESTIMATOR_FIELDS, path)
        # parameters renamed since (the old name in a save still loads)
        params = {_RENAMED_PARAMETERS.get(name, name): value for name, value in state["params"].items()}
        try:
            estimator = cls(**params)
            estimator._validate_params()
            hidden_layer_sizes = estimator._validated_hidden_layer_sizes()
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path} is not a skvae save (or it is damaged): its parameters are invalid: {exc}") from None
        n_features = state["n_features_in_"]
        estimator.batch_categories_ = _loaded_categories(state.get("batch_categories_"), path)
        # saves from before the decoder had named heads call its one output "decoder.output"
        weights = {key.replace("decoder.output.", "decoder.heads.mean.", 1): value for key, value in state["state_dict"].items()}
        # the stated sizes are checked against the stored tensors on the meta device, before any memory is taken
        with torch.device("meta"):
            module = estimator._make_module(n_features, hidden_layer_sizes)
        expected = {key: tuple(value.shape) for key, value in module.state_dict().items()}
        if expected != {key: tuple(value.shape) for key, value in weights.items()}:
            raise ValueError(f"{path} is not a skvae save (or it is damaged): its weights do not match its parameters.")
        # batch normalisation counts its batches in an integer buffer; everything else is a float
        if not all(torch.isfinite(value).all() for value in weights.values()) or any(
            value.is_floating_point() != expected.is_floating_point()
            for value, expected in zip(weights.values(), module.state_dict().values(), strict=True)
        ):
            raise ValueError(f"{path} is damaged: its weights are not all finite numbers.")
        dispersion = weights.get("likelihood.log_theta")
        if dispersion is not None and dispersion.abs().max() > _LOG_DISPERSION_LIMIT:
            raise ValueError(f"{path} is damaged: its log dispersions reach {dispersion.abs().max():.3g}, beyond "
                             f"+-{_LOG_DISPERSION_LIMIT:g}, which training never gives.")
        module = module.to_empty(device="cpu")
        module.load_state_dict(weights)
        estimator.n_features_in_ = n_features
        names = state["feature_names_in_"]
        if names is not None:
            if len(names) != n_features:
                raise ValueError(f"{path} is damaged: {len(names)} feature names for {n_features} features.")
            estimator.feature_names_in_ = np.asarray(names, dtype=object)
        estimator.algorithm_ = state.get("algorithm_", estimator.algorithm)
        for name, value in state.get("attributes", {}).items():  # saves from before 0.2 have none
            if name in estimator._saved_attributes:
                setattr(estimator, name, value if isinstance(value, (int, float)) else np.asarray(value))
        estimator._built_architecture = estimator._architecture()
        return estimator._set_fitted(module, state["history_"])

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        tags.input_tags.positive_only = self.likelihood in LIKELIHOODS and self._models_counts
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags


def _physical_memory():
    """This machine's memory in bytes, or None where the system does not say."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else None


def _algorithm_of(source):
    return "dense" if isinstance(source.rows, DenseRowSource) else "sparse"


def _cuda_indices(device):
    """The CUDA device whose random generator training draws from, as ``fork_rng`` takes it."""
    if device.type != "cuda":
        return []
    return [torch.cuda.current_device() if device.index is None else device.index]


def _torch_rng_state(device):
    """torch's global random states that training draws from (dropout): the CPU's, and the GPU's on CUDA."""
    return torch.get_rng_state(), (torch.cuda.get_rng_state(device) if device.type == "cuda" else None)


def _set_torch_rng_state(states, device):
    cpu, cuda = states
    torch.set_rng_state(cpu)
    if cuda is not None and device.type == "cuda":
        torch.cuda.set_rng_state(cuda, device)


def _categories(labels):
    """The distinct labels, sorted (in order of appearance where they cannot be compared)."""
    distinct = pd.unique(labels)
    try:
        distinct = sorted(distinct)
    except TypeError:
        distinct = list(distinct)
    return np.asarray(distinct, dtype=object)


def _listing(values, most=5):
    values = list(values)
    return ", ".join(map(repr, values[:most])) + (f" and {len(values) - most} more" if len(values) > most else "")


def _loaded_categories(categories, path):
    """The batch categories of a save (None in saves from before batches), checked: distinct strings or numbers."""
    if categories is None:
        return None
    if not isinstance(categories, list) or len(categories) < 1 or not all(
            isinstance(value, (str, int, float, bool)) and value == value for value in categories):
        raise ValueError(f"{path} is damaged: its batch categories are not a list of strings and numbers.")
    loaded = np.empty(len(categories), dtype=object)
    loaded[:] = categories
    if pd.Index(loaded).has_duplicates:
        raise ValueError(f"{path} is damaged: its batch categories repeat a label ({_listing(categories)}).")
    return loaded


def _saved_categories(categories):
    """Batch categories as Python numbers and strings, which a weights-only load reads; None stays None."""
    if categories is None:
        return None
    saved = [value.item() if isinstance(value, np.generic) else value for value in categories]
    if not all(isinstance(value, (str, int, float, bool)) for value in saved):
        raise ValueError(f"The batch categories {_listing(categories)} cannot be saved: save needs strings or "
                         "numbers as batch labels.")
    return saved
