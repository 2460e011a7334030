"""The base estimator shared by every skvae embedder.

It owns what the models have in common: parameters and their constraints, input
validation, seeding, the call to the training loop, transform / inverse_transform /
score, scikit-learn tags, feature names and saving. A subclass adds only the torch
module it trains (``_build_module``) and, for variational models, the KL weight.
"""

import copy
import os
import warnings
from abc import ABCMeta, abstractmethod
from numbers import Integral, Real

import numpy as np
import scipy.sparse as sp
import torch
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin, _fit_context
from sklearn.model_selection import train_test_split
from sklearn.utils import check_array, check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, check_non_negative, validate_data

from ._persistence import SAVE_FORMAT, atomic_torch_save, read_save, to_builtins
from ._threads import limited_threads
from .nn.likelihoods import LIKELIHOODS
from .preprocessing import _is_integer_valued
from .train.distributed import data_parallel
from .train.loop import adam, mean_loss, train
from .train.rows import (
    BackedSparseRowSource,
    DenseRowSource,
    is_backed_sparse,
    iter_batches,
    make_row_source,
    stored_value_blocks,
)

# Rows per forward pass at inference: large enough to amortise the per-call overhead,
# small enough that a dense block of 10^4-10^5 genes stays well under a GB.
_INFERENCE_BATCH_SIZE = 2048
_FLOAT32_MAX = float(np.finfo(np.float32).max)


class BaseEmbedder(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator, metaclass=ABCMeta):
    """Base class for the neural embedders; not for direct use.

    A subclass implements ``_build_module(n_features, hidden_layer_sizes, likelihood)``,
    returning a model of :mod:`skvae.nn.models`, and, for variational models,
    ``_kl_weight()``. Parameters are documented on the public estimators.

    Parameters
    ----------
    n_components : int, default=6
    hidden_layer_sizes : array-like of int, default=(128, 32, 16)
    likelihood : {"gaussian", "poisson", "nb", "zinb"}, default="gaussian"
    batch_norm : bool, default=False
    dropout : float, default=0.0
    batch_size : int, default=256
    learning_rate : float, default=1e-3
    max_epochs : int, default=200
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
        "likelihood": [StrOptions(set(LIKELIHOODS))],
        "batch_norm": ["boolean"],
        "dropout": [Interval(Real, 0, 1, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "learning_rate": [Interval(Real, 0, None, closed="neither")],
        "max_epochs": [Interval(Integral, 1, None, closed="left")],
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
        likelihood="gaussian",
        batch_norm=False,
        dropout=0.0,
        batch_size=256,
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
        self.likelihood = likelihood
        self.batch_norm = batch_norm
        self.dropout = dropout
        self.batch_size = batch_size
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
        same way: ``likelihood``, ``batch_norm`` and ``dropout``.
        """

    def _make_module(self, n_features, hidden_layer_sizes):
        likelihood = LIKELIHOODS[self.likelihood](n_features)
        return self._build_module(
            n_features, hidden_layer_sizes, likelihood=likelihood, batch_norm=self.batch_norm, dropout=self.dropout
        )

    @property
    def _models_counts(self):
        return LIKELIHOODS[self.likelihood].counts

    def _check_counts(self, X):
        """Count likelihoods: refuse negative values and warn of non-integer ones. Gaussian: warn of raw counts."""
        if not self._models_counts:
            if _looks_like_raw_counts(X):
                warnings.warn(
                    "X looks like raw counts (non-negative integers), but likelihood='gaussian' reconstructs its "
                    "input with a squared error, which suits log-normalised, scaled expression: normalise it first "
                    "(LogNormalizer, then ClippedStandardScaler), or model the counts with likelihood='nb'.",
                    UserWarning,
                    stacklevel=3,
                )
            return
        check_non_negative(X, self._whom())
        if not _is_integer_valued(X):
            self._warn_non_integer()

    def _whom(self):
        return f"{type(self).__name__}(likelihood={self.likelihood!r}), which models raw counts"

    def _warn_non_integer(self):
        warnings.warn(
            f"X has non-integer values, but likelihood={self.likelihood!r} models raw counts. Normalised or "
            "log-transformed data (such as LogNormalizer's output) is the likely cause: pass the raw UMI "
            "counts of QC'd cells, or use likelihood='gaussian' for normalised and scaled data.",
            UserWarning,
            stacklevel=4,
        )

    def _kl_weight(self):
        """Weight of the KL term in the training loss."""
        return 0.0

    def _kl_warmup_epochs(self):
        """Epochs of the KL weight's linear warm-up."""
        return 0

    def _validated_hidden_layer_sizes(self):
        sizes = self.hidden_layer_sizes
        items = list(sizes) if np.ndim(sizes) == 1 else None
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
    def fit(self, X, y=None):
        """Train the model on ``X``.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Training data, e.g. log-normalised and scaled expression, cells in rows.
            Sparse input is densified one minibatch at a time.
        y : Ignored
            Not used, present for API consistency by convention.

        Returns
        -------
        self : object
            The fitted estimator.
        """
        with limited_threads(self.n_jobs):
            return self._fit(X)

    def _fit(self, X):
        device = self._training_device()
        parallel = data_parallel(device)
        X = self._validate_training_data(X, reset=True)
        hidden_layer_sizes = self._validated_hidden_layer_sizes()
        if self.n_components > hidden_layer_sizes[-1]:
            warnings.warn(
                f"n_components={self.n_components} is larger than the last hidden layer ({hidden_layer_sizes[-1]}): "
                f"the code is computed from, and decoded through, {hidden_layer_sizes[-1]} units, so it carries at "
                f"most that many independent directions. Widen the network, e.g. hidden_layer_sizes="
                f"{tuple(max(size, self.n_components) for size in hidden_layer_sizes)}.",
                UserWarning,
                stacklevel=3,
            )
        rng, seed = self._seeds(parallel)
        train_rows, val_rows, activity_rows = self._training_rows(X, rng, seed, device, parallel)
        generator = torch.Generator(device).manual_seed(seed)
        # torch's global generators are forked: the initialisation and dropout draw from a local seed
        with torch.random.fork_rng(devices=_cuda_indices(device)):
            torch.manual_seed(seed)
            module = self._make_module(X.shape[1], hidden_layer_sizes).to(device)
            optimizer = adam(module, self.learning_rate)
            history = self._train(module, train_rows, val_rows, rng=rng, generator=generator, optimizer=optimizer,
                                  device=device, parallel=parallel, max_epochs=self.max_epochs)
            torch_state = torch.get_rng_state()
        self._set_fitted(module.cpu(), history)
        # what partial_fit needs to continue as more epochs of this fit would
        self._training_state = {"rng": rng, "generator": generator, "optimizer": optimizer, "torch": torch_state}
        self._check_active_components(activity_rows)
        return self

    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X, y=None):
        """Train one pass over the rows of ``X``, continuing the model of earlier calls.

        The first call (or the first after :meth:`fit` was never called) creates
        the model from ``X``'s features; each later call continues it, with the
        same optimiser state, shuffling and noise: ``E`` calls on the same data
        give the model of ``fit`` with ``max_epochs=E``. A call after :meth:`fit`
        continues the fitted model. The KL warm-up counts the passes of every call
        (``n_iter_``). Early stopping does not apply (``early_stopping`` is
        ignored), and a collapse is recorded in ``active_components_`` but not
        warned of: early passes are expected to have few active dimensions.

        Parameters
        ----------
        X : {array-like, sparse matrix, anndata.abc.CSRDataset} of shape (n_samples, n_features)
            A chunk of training data, e.g. rows read from a file larger than
            memory, with the features of the first call.
        y : Ignored
            Not used, present for API consistency by convention.

        Returns
        -------
        self : object
            The estimator, trained one pass further.
        """
        with limited_threads(self.n_jobs):
            return self._partial_fit(X)

    def _partial_fit(self, X):
        first = not hasattr(self, "module_")
        device = self._training_device()
        parallel = data_parallel(device)
        X = self._validate_training_data(X, reset=first)
        state = getattr(self, "_training_state", None)
        if first or state is None:  # a first call, or a model loaded from a file: a new optimiser
            rng, seed = self._seeds(parallel)
            with torch.random.fork_rng(devices=_cuda_indices(device)):
                torch.manual_seed(seed)
                module = self.module_ if not first else self._make_module(X.shape[1], self._validated_hidden_layer_sizes())
                torch_state = torch.get_rng_state()
            state = {"rng": rng, "generator": torch.Generator(device).manual_seed(seed),
                     "optimizer": adam(module, self.learning_rate), "torch": torch_state}
            if first:
                self._set_fitted(module, {})
                self.algorithm_ = None
        module = self.module_.to(device)
        _optimizer_to(state["optimizer"], device)
        # a file on disk that every rank opens: each trains on its block, as in fit
        shard = parallel.shard_of(X.shape[0]) if parallel is not None and is_backed_sparse(X) else None
        train_rows = self._row_source(X, device, self.algorithm_ or self.algorithm, training=True, rows=shard)
        self.algorithm_ = self.algorithm_ or _algorithm_of(train_rows)
        with torch.random.fork_rng(devices=_cuda_indices(device)):
            torch.set_rng_state(state["torch"])
            history = self._train(module, train_rows, None, rng=state["rng"], generator=state["generator"],
                                  optimizer=state["optimizer"], device=device, parallel=parallel, max_epochs=1,
                                  start_epoch=self.n_iter_)
            state["torch"] = torch.get_rng_state()
        _optimizer_to(state["optimizer"], "cpu")
        self._training_state = state
        self._set_fitted(module.cpu(), {key: self.history_.get(key, []) + values for key, values in history.items()})
        self._check_active_components(X, warn=False)
        return self

    def _seeds(self, parallel):
        """The RandomState that shuffles (the same on every rank) and the integer seed of torch's draws."""
        # None draws fresh entropy rather than from numpy's global RandomState, which stays untouched
        rng = np.random.RandomState() if self.random_state is None else check_random_state(self.random_state)
        if parallel is not None:
            parallel.check_same("the estimator", repr(self))
            parallel.check_same("the number of features", self.n_features_in_)
            parallel.check_same("the feature names", getattr(self, "feature_names_in_", np.array([])).tolist())
            if self.random_state is None:
                rng = np.random.RandomState(parallel.broadcast_seed(rng.randint(np.iinfo(np.int32).max)))
        return rng, rng.randint(np.iinfo(np.int32).max)

    def _validate_training_data(self, X, *, reset):
        """``X`` checked for training: an array or sparse matrix in float32, or a CSR matrix on disk."""
        if is_backed_sparse(X):
            return self._validate_backed(X, reset=reset)
        _refuse_foreign_input(X)
        X = validate_data(self, X, accept_sparse="csr", dtype=[np.float32, np.float64], ensure_min_samples=2,
                          reset=reset)
        _check_float32_range(X)
        self._check_counts(X)
        return X.astype(np.float32, copy=False)

    def _validate_backed(self, X, *, reset):
        if X.format != "csr":
            raise TypeError(f"X is a {X.format.upper()} matrix on disk: skvae reads cells (rows), which a CSC file "
                            "stores scattered. Write the matrix as CSR (cells x genes), e.g. adata.X = "
                            "adata.X.tocsr() before adata.write_h5ad.")
        if reset:
            self.n_features_in_ = X.shape[1]
            if hasattr(self, "feature_names_in_"):
                del self.feature_names_in_
        elif X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {X.shape[1]} features, but {type(self).__name__} is expecting "
                             f"{self.n_features_in_} features as input.")
        if X.shape[0] < 2:
            raise ValueError(f"Found array with {X.shape[0]} sample(s) while a minimum of 2 is required.")
        # the stored values, streamed in blocks: what validate_data and _check_counts check in memory
        integer = True
        for values in stored_value_blocks(X):
            if not np.isfinite(values).all():
                raise ValueError("Input X contains NaN or infinity (in the matrix on disk).")
            _check_float32_range(values)
            if self._models_counts:
                check_non_negative(values, self._whom())
                integer = integer and _is_integer_valued(values)
        if not integer:
            self._warn_non_integer()
        return X

    def _training_rows(self, X, rng, seed, device, parallel):
        """Row sources of the training and validation rows, and the data on which activity is measured."""
        backed = is_backed_sparse(X)
        # a file on disk is shared: every rank passes it and trains on its block of rows
        train_part = X if not backed else np.arange(X.shape[0])[parallel.shard_of(X.shape[0]) if parallel else slice(None)]
        val_part = None
        if self.early_stopping:
            # a rank splits its rows with its own generator: the shuffling rng stays the same on every rank
            split_rng = rng if parallel is None else np.random.RandomState([seed, parallel.rank])
            # on disk, the rows split are indices: the same split, and order, as of the matrix in memory
            train_part, val_part = train_test_split(train_part, test_size=self.validation_fraction, random_state=split_rng)
        train_rows = self._row_source(X if backed else train_part, device, self.algorithm, training=True,
                                      rows=train_part if backed else None)
        # the validation rows take the representation "auto" chose for the training rows
        self.algorithm_ = _algorithm_of(train_rows)
        val_rows = None
        if val_part is not None:
            val_rows = self._row_source(X if backed else val_part, device, self.algorithm_, training=False,
                                        rows=val_part if backed else None)
        return train_rows, val_rows, (X if backed else train_part)

    def _row_source(self, data, device, algorithm, *, training, rows=None):
        """Minibatches of ``data`` (of its ``rows`` when on disk) for training or evaluation."""
        if is_backed_sparse(data):
            return BackedSparseRowSource(data, rows=slice(None) if rows is None else rows, dtype=np.float32,
                                         device=device, with_transpose=training)
        return make_row_source(data, algorithm=algorithm, center=not self._models_counts, device=device,
                               with_transpose=training)

    def _train(self, module, train_rows, val_rows, *, rng, generator, optimizer, device, parallel, max_epochs,
               start_epoch=0):
        return train(
            module,
            train_rows,
            val_rows,
            kl_weight=self._kl_weight(),
            kl_warmup_epochs=self._kl_warmup_epochs(),
            start_epoch=start_epoch,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            max_epochs=max_epochs,
            n_iter_no_change=self.n_iter_no_change,
            tol=self.tol,
            rng=rng,
            generator=generator,
            device=device,
            verbose=self.verbose,
            optimizer=optimizer,
            parallel=parallel,
        )

    def _check_active_components(self, X, warn=True):
        """Variational models: count the active latent dimensions of ``X``'s codes and warn of a collapse."""

    # fitted attributes beyond the module and history that save keeps, as lists
    _saved_attributes = ()

    def _set_fitted(self, module, history):
        self.module_ = module.eval()
        self.history_ = history
        self.n_iter_ = len(history.get("loss", []))
        self._n_features_out = self.n_components
        return self

    @torch.no_grad()
    def _map_rows(self, method, X):
        """Apply ``self.module_.<method>`` to the rows of X in X's float precision.

        Sparse input goes through the encoder's sparse first layer; dense input
        through dense products, so that each row's result does not depend on the
        others.
        """
        module = self.module_ if X.dtype == np.float32 else copy.deepcopy(self.module_).double()
        module.eval()
        rows = make_row_source(X, algorithm="sparse" if sp.issparse(X) else "dense", dtype=X.dtype)
        with limited_threads(self.n_jobs):
            return np.concatenate([getattr(module, method)(xb).numpy() for xb in iter_batches(rows, _INFERENCE_BATCH_SIZE)])

    def _validate_fitted_input(self, X):
        check_is_fitted(self)
        if is_backed_sparse(X):
            return self._validate_backed(X, reset=False)
        _refuse_foreign_input(X)
        X = validate_data(self, X, accept_sparse="csr", dtype=[np.float64, np.float32], reset=False)
        self._check_counts(X)
        return X

    def transform(self, X):
        """Embed ``X``: the deterministic latent code of each cell.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Data with the features seen in ``fit``.

        Returns
        -------
        X_new : ndarray of shape (n_samples, n_components)
            Latent codes, float32 for float32 input, else float64.
        """
        return self._map_rows("embed", self._validate_fitted_input(X))

    def inverse_transform(self, X):
        """Decode latent codes back to feature space.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_components)
            Latent codes, e.g. from :meth:`transform`.

        Returns
        -------
        X_original : ndarray of shape (n_samples, n_features)
            Reconstructed data, float32 for float32 input, else float64. For count
            likelihoods: the expected normalised expression, per-gene proportions
            times 1e4 (the scale of :class:`~skvae.preprocessing.LogNormalizer`
            before its log).
        """
        check_is_fitted(self)
        X = check_array(X, dtype=[np.float64, np.float32])
        if X.shape[1] != self.n_components:
            raise ValueError(f"X has {X.shape[1]} columns, but {type(self).__name__} decodes codes of {self.n_components}.")
        return self._map_rows("decode", X)

    def score(self, X, y=None):
        """Negative mean loss per cell: higher is better.

        The loss is the negative log-likelihood of the cell given the
        deterministic code (the summed squared error for ``likelihood="gaussian"``)
        plus, for variational models, the KL divergence with weight 1 (the negative
        evidence lower bound, up to constants), whatever ``beta`` was used in
        training. Scores compare across ``beta`` and other training settings, but
        not across likelihoods: each likelihood measures its own kind of data.

        Parameters
        ----------
        X : {array-like, sparse matrix} of shape (n_samples, n_features)
            Data with the features seen in ``fit``.
        y : Ignored
            Not used, present for API consistency by convention.

        Returns
        -------
        score : float
        """
        X = self._validate_fitted_input(X)
        if not is_backed_sparse(X):  # a file on disk had its range checked as it was read
            _check_float32_range(X)  # the loss is computed in float32, as in training
        rows = make_row_source(X, algorithm=self.algorithm_, center=not self._models_counts)
        with limited_threads(self.n_jobs):
            return -mean_loss(self.module_, rows, kl_weight=1.0, batch_size=_INFERENCE_BATCH_SIZE)

    def save(self, path):
        """Save parameters and weights to ``path``, readable by :meth:`load`.

        The file holds only tensors, numbers and strings, so :meth:`load` reads it
        with ``torch.load(weights_only=True)`` and never unpickles arbitrary objects.
        A ``random_state`` that is a RandomState instance is saved as None; numpy
        numbers and arrays among the parameters are saved as Python numbers and
        lists. The file is written beside ``path`` and moved into place, so a
        failed save leaves the previous file intact.

        Parameters
        ----------
        path : str or path-like
            Destination file.
        """
        check_is_fitted(self)
        params = self.get_params()
        params["device"] = str(params["device"])
        if not isinstance(params["random_state"], Integral):
            params["random_state"] = None
        params = {name: to_builtins(value, name) for name, value in params.items()}
        feature_names = getattr(self, "feature_names_in_", None)
        atomic_torch_save(
            {
                "format": SAVE_FORMAT,
                "estimator": type(self).__name__,
                "params": params,
                "state_dict": self.module_.state_dict(),
                "n_features_in_": int(self.n_features_in_),
                "feature_names_in_": None if feature_names is None else [str(name) for name in feature_names],
                "history_": {key: [float(v) for v in values] for key, values in self.history_.items()},
                "algorithm_": self.algorithm_,
                "attributes": {name: np.asarray(getattr(self, name)).tolist() for name in self._saved_attributes},
            },
            path,
        )

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
        try:
            estimator = cls(**state["params"])
            estimator._validate_params()
            hidden_layer_sizes = estimator._validated_hidden_layer_sizes()
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path} is not a skvae save (or it is damaged): its parameters are invalid: {exc}") from None
        n_features = state["n_features_in_"]
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
                setattr(estimator, name, np.asarray(value))
        return estimator._set_fitted(module, state["history_"])

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        tags.input_tags.positive_only = self.likelihood in LIKELIHOODS and self._models_counts
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags


def _optimizer_to(optimizer, device):
    """Move Adam's moments beside the parameters (partial_fit keeps the model on CPU between calls)."""
    for state in optimizer.state.values():
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and key != "step":
                state[key] = value.to(device)


def _algorithm_of(rows):
    return "dense" if isinstance(rows, DenseRowSource) else "sparse"


def _cuda_indices(device):
    """The CUDA device whose random generator training draws from, as ``fork_rng`` takes it."""
    if device.type != "cuda":
        return []
    return [torch.cuda.current_device() if device.index is None else device.index]


def _looks_like_raw_counts(X):
    """Non-negative whole numbers beyond 0 and 1: what a count matrix looks like, and scaled data never does."""
    values = X.data if sp.issparse(X) else X
    return values.size > 0 and values.min() >= 0 and values.max() > 1 and _is_integer_valued(X)


def _refuse_foreign_input(X):
    """AnnData objects, dates and durations: clear errors instead of numpy's casts or messages."""
    if type(X).__name__ == "AnnData":  # anndata stays an optional dependency
        raise TypeError(
            "X is an AnnData object: pass its matrix, e.g. adata.X (log-normalised and scaled for "
            "likelihood='gaussian') or adata.layers['counts'] (raw counts for a count likelihood)."
        )
    # numpy would cast dates and durations to numbers silently
    kinds = {dtype.kind for dtype in getattr(X, "dtypes", [getattr(X, "dtype", None)]) if dtype is not None}
    if kinds & {"M", "m"}:
        raise TypeError("X holds dates or durations (datetime64 / timedelta64); pass numeric expression values.")


def _check_float32_range(X):
    """Training and ``score`` compute in float32: larger values would become inf."""
    values = X.data if sp.issparse(X) else X
    if values.dtype == np.float64 and values.size and np.abs(values).max() > _FLOAT32_MAX:
        raise ValueError(
            f"X has values beyond float32's range ({np.abs(values).max():.3g} > {_FLOAT32_MAX:.3g}); training "
            "runs in float32. Scale the data (e.g. log-normalise and standardise it)."
        )
