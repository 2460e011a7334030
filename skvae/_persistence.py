"""Saving and reading estimator files: builtins only, atomic writes, every field checked before use."""

import contextlib
import hashlib
import os
import tempfile
from dataclasses import dataclass
from numbers import Integral
from pathlib import Path

import numpy as np
import torch

# v2: the checksum covers every field (v1's covered the weights only); v1 files still load
SAVE_FORMAT = "skvae-estimator-v2"
_READABLE_FORMATS = ("skvae-estimator-v1", SAVE_FORMAT)
# the fields of one estimator's state, in a save of its own or as a step of a pipeline's
ESTIMATOR_FIELDS = {
    "estimator": str,
    "params": dict,
    "state_dict": dict,
    "n_features_in_": Integral,
    "feature_names_in_": (list, type(None)),
    "history_": dict,
}


def to_builtins(value, name):
    """``value`` as Python builtins, which ``torch.load(weights_only=True)`` reads back.

    numpy scalars become their Python value, arrays become lists; anything else that
    is not a builtin raises a TypeError naming the parameter.
    """
    if isinstance(value, np.generic):  # first: np.float64 is also a float, and torch.load refuses it
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.ndarray):
        return to_builtins(value.tolist(), name)
    if isinstance(value, (list, tuple)):
        return type(value)(to_builtins(item, name) for item in value)
    raise TypeError(f"Cannot save parameter {name}={value!r}: only numbers, strings, None and sequences of them "
                    "can be saved; set it to one of those first.")


def weights_checksum(state_dict):
    """SHA-256 of the weights' names, shapes, types and bytes: a flipped bit anywhere changes it (v1 saves)."""
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        _feed_tensor(digest, key, state_dict[key])
    return digest.hexdigest()


def content_checksum(state):
    """SHA-256 of every field of a save but the checksum itself: weights, parameters, names, categories, history.

    Parameters
    ----------
    state : dict
        Of builtins, lists, dicts and tensors, as written by :func:`atomic_torch_save`.

    Returns
    -------
    str

    Examples
    --------
    >>> from skvae._persistence import content_checksum
    >>> content_checksum({"a": [1, "b"]}) == content_checksum({"a": [1, "b"]}) != content_checksum({"a": ["b", 1]})
    True
    """
    digest = hashlib.sha256()
    _feed(digest, {key: value for key, value in state.items() if key != "checksum"})
    return digest.hexdigest()


def _feed(digest, value):
    """Write ``value`` into ``digest`` with its type and length, so different values never feed the same bytes."""
    if isinstance(value, dict):
        digest.update(f"dict{len(value)}(".encode())
        for key in sorted(value, key=repr):
            _feed(digest, key)
            _feed(digest, value[key])
        digest.update(b")")
    elif isinstance(value, (list, tuple)):
        digest.update(f"{type(value).__name__}{len(value)}(".encode())
        for item in value:
            _feed(digest, item)
        digest.update(b")")
    elif isinstance(value, torch.Tensor):
        _feed_tensor(digest, "", value)
    else:
        text = repr(value)
        digest.update(f"{type(value).__name__}{len(text)}:{text};".encode())


def _feed_tensor(digest, key, tensor):
    value = tensor.detach().cpu().contiguous().reshape(-1)
    digest.update(f"{key}:{tuple(tensor.shape)}:{value.dtype};".encode())
    digest.update(value.view(torch.uint8).numpy().tobytes() if value.numel() else b"")


def atomic_torch_save(state, path):
    """``torch.save`` to a temporary file beside ``path``, then move it into place, with its checksum.

    A failure at any point (a full disk, a kill) leaves the previous file, or none. A
    ``path`` that is a symbolic link is written through: its target is replaced and the
    link kept.
    """
    state = {**state, "format": SAVE_FORMAT}
    state["checksum"] = content_checksum(state)
    path = Path(os.path.realpath(path))
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".partial")
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save(state, stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def read_save(path, fields=None, *, reader=None):
    """The dictionary written by :func:`atomic_torch_save`, its checksum and fields checked.

    ``fields`` maps the fields it must have to their types (default: an estimator's).
    ``reader``: the class whose ``load`` reads it; a save of another class (an
    estimator's file given to a pipeline's ``load``, say) is refused naming the
    loader that reads it. Raises ValueError naming ``path`` for anything that is not
    an intact skvae save; a missing file stays a FileNotFoundError.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:  # noqa: BLE001 -- torch.load raises many kinds for foreign or truncated files
        raise ValueError(f"{path} is not a skvae save (or it is damaged): {type(exc).__name__}: {exc}") from None
    if not isinstance(state, dict) or state.get("format") not in _READABLE_FORMATS:
        raise ValueError(f"{path} is not a skvae save (or it is damaged): no {SAVE_FORMAT!r} header.")
    if state["format"] == SAVE_FORMAT:
        if state.get("checksum") != content_checksum(state):
            raise ValueError(f"{path} is damaged: its contents do not match the checksum written with them.")
    saved = state.get("estimator")
    if reader is not None and isinstance(saved, str) and saved != reader:
        raise ValueError(f"{path} holds {saved}, not {reader}: load it with {saved}.load.")
    check_fields(state, ESTIMATOR_FIELDS if fields is None else fields, path)
    # v1: the checksum covered the weights (saves from before checksums have none)
    if state["format"] != SAVE_FORMAT and "checksum" in state and state["checksum"] != weights_checksum(state["state_dict"]):
        raise ValueError(f"{path} is damaged: its weights do not match the checksum written with them.")
    return state


def check_fields(state, fields, path):
    """A ValueError naming ``path`` unless ``state`` has each of ``fields`` with its type (weights: tensors)."""
    for field, kind in fields.items():
        if not isinstance(state.get(field), kind):  # the file is wrong, not an argument: a ValueError
            message = f"{path} is not a skvae save (or it is damaged): field {field!r} is missing or malformed."
            raise ValueError(message)  # noqa: TRY004
    if "state_dict" in fields and not all(isinstance(key, str) and isinstance(value, torch.Tensor)
                                          for key, value in state["state_dict"].items()):
        raise ValueError(f"{path} is not a skvae save (or it is damaged): its weights are not all tensors.")


def attributes_to_builtins(estimator, names):
    """Fitted attributes as builtins for a save: arrays as lists with their dtype."""
    saved = {}
    for name in names:
        value = getattr(estimator, name, None)
        if isinstance(value, np.ndarray):
            saved[name] = {"dtype": value.dtype.str if value.dtype.kind != "O" else "object",
                           "values": to_builtins(value.tolist(), name)}
        else:
            saved[name] = to_builtins(value, name)
    return saved


def attributes_from_builtins(saved, path):
    """The fitted attributes of :func:`attributes_to_builtins`, arrays rebuilt with their dtype."""
    loaded = {}
    for name, value in saved.items():
        if isinstance(value, dict):
            try:
                loaded[name] = np.asarray(value["values"], dtype=object if value["dtype"] == "object" else value["dtype"])
            except (KeyError, TypeError, ValueError):
                raise ValueError(f"{path} is damaged: its attribute {name!r} is malformed.") from None
        else:
            loaded[name] = value
    return loaded


def saved_attributes(state, path):
    """The fitted attributes of an estimator's save: arrays with their dtype, numbers as numbers.

    Saves from before 0.2 have none; saves before 0.5 kept arrays as bare lists (read with numpy's dtype for them).

    Parameters
    ----------
    state : dict
    path : str or path-like

    Returns
    -------
    dict of str to ndarray, int or float
    """
    saved = state.get("attributes", {})
    if not isinstance(saved, dict):
        raise ValueError(f"{path} is damaged: its fitted attributes are malformed.")
    loaded = attributes_from_builtins(saved, path)
    return {name: value if isinstance(value, (int, float, np.ndarray)) else np.asarray(value)
            for name, value in loaded.items()}


#: The classes a save can name, by name: every :class:`Saveable` class registers itself.
SAVEABLE = {}


class Saveable:
    """Mixin of an estimator saved without pickle: its class registers itself by name, so that a save can name it.

    A subclass implements ``saved_state()`` (the dictionary of builtins and tensors
    its file holds) and the class method ``from_saved_state(state, path)``;
    :class:`skvae.EmbeddingPipeline` saves and loads its steps through them.

    Examples
    --------
    >>> from skvae._persistence import SAVEABLE
    >>> "BetaVAEClassifier" in SAVEABLE and "HighlyVariableGenes" in SAVEABLE
    True
    """

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # the first class of a name keeps it: a user's subclass named as one of skvae's does not take its files over
        SAVEABLE.setdefault(cls.__name__, cls)


# old parameter name -> new one, for saves written before a rename
_RENAMED_PARAMETERS = {"prior_sparsity": "prior_activity"}


def embedder_state(estimator, attributes):
    """A fitted embedder's parameters, weights and fitted attributes as builtins and tensors: what ``save`` writes.

    Parameters
    ----------
    estimator : skvae.base.BaseEmbedder
        Fitted; only its public parameters and fitted attributes are read.
    attributes : sequence of str
        The fitted attributes beyond the module and history that the save keeps.

    Returns
    -------
    dict
    """
    params = estimator.get_params()
    params["device"] = str(params["device"])
    if not isinstance(params["random_state"], Integral):
        params["random_state"] = None
    params = {name: to_builtins(value, name) for name, value in params.items()}
    feature_names = getattr(estimator, "feature_names_in_", None)
    covariates = getattr(estimator, "covariates_", None)
    state = {
        "estimator": type(estimator).__name__,
        "params": params,
        "state_dict": estimator.module_.state_dict(),
        "n_features_in_": int(estimator.n_features_in_),
        "feature_names_in_": None if feature_names is None else [str(name) for name in feature_names],
        "history_": {key: [float(v) for v in values] for key, values in estimator.history_.items()},
        "algorithm_": estimator.algorithm_,
        # arrays keep their dtype (object strings stay objects), numbers stay numbers
        "attributes": attributes_to_builtins(estimator, [name for name in attributes if hasattr(estimator, name)]),
    }
    if covariates is None or covariates.names == [None]:
        # one unnamed covariate: the field every version reads
        state["batch_categories_"] = None if covariates is None else covariates.to_saved()[0]["categories"]
    else:
        state["covariates"] = covariates.to_saved()
    return state


@dataclass
class SavedEmbedder:
    """What an embedder's save holds, every field checked (:meth:`read`); the estimator builds itself from it.

    Attributes
    ----------
    params : dict
        The constructor's parameters (renamed ones under today's names).
    covariates : skvae._covariates.Covariates or None
    attributes : dict of str to ndarray, int or float
        Fitted attributes beyond the module and history.
    n_features : int
    feature_names : ndarray of object or None
    history : dict of list of float
    algorithm : str or None
    weights : dict of str to torch.Tensor
        The module's state dict, old keys renamed.
    path : str or path-like
        The file, for messages.
    """

    params: dict
    covariates: object
    attributes: dict
    n_features: int
    feature_names: object
    history: dict
    algorithm: object
    weights: dict
    path: object

    @classmethod
    def read(cls, state, path):
        """The checked contents of :func:`embedder_state`'s dictionary; ``path`` names the file.

        Parameters
        ----------
        state : dict
        path : str or path-like

        Returns
        -------
        SavedEmbedder
        """
        from ._covariates import Covariates
        from .nn.models import renamed_keys

        check_fields(state, ESTIMATOR_FIELDS, path)
        if "covariates" in state:
            covariates = Covariates.from_saved(state["covariates"], path)
        else:
            categories = state.get("batch_categories_")
            covariates = None if categories is None else Covariates.from_saved([{"name": None,
                                                                                  "categories": categories}], path)
        n_features, names = state["n_features_in_"], state["feature_names_in_"]
        if names is not None and len(names) != n_features:
            raise ValueError(f"{path} is damaged: {len(names)} feature names for {n_features} features.")
        return cls(params={_RENAMED_PARAMETERS.get(name, name): value for name, value in state["params"].items()},
                   covariates=covariates, attributes=saved_attributes(state, path), n_features=n_features,
                   feature_names=None if names is None else np.asarray(names, dtype=object),
                   history=state["history_"], algorithm=state.get("algorithm_"),
                   weights=renamed_keys(state["state_dict"]), path=path)

    def estimator(self, cls, *, validate):
        """A ``cls`` of the saved parameters, unfitted; a ValueError naming the file when they are invalid.

        Parameters
        ----------
        cls : type
        validate : callable
            Checks an estimator's parameters (its ``_validate_params``), raising TypeError or ValueError.

        Returns
        -------
        object
        """
        from ._validation import hidden_layer_sizes

        try:
            estimator = cls(**self.params)
            validate(estimator)
            hidden_layer_sizes(estimator.hidden_layer_sizes)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{self.path} is not a skvae save (or it is damaged): its parameters are invalid: "
                             f"{exc}") from None
        return estimator

    def attributes_among(self, names):
        """The saved fitted attributes among ``names`` (an estimator's own), by name.

        Parameters
        ----------
        names : sequence of str

        Returns
        -------
        dict
        """
        return {name: value for name, value in self.attributes.items() if name in names}

    def module(self, build):
        """The module of ``build()`` (made on the meta device: nothing allocated) holding the saved weights.

        The stated sizes are checked against the stored tensors before any memory is taken;
        the module's own load hooks check values.

        Parameters
        ----------
        build : callable
            Returns a fresh module for the saved parameters and covariates.

        Returns
        -------
        torch.nn.Module
            On CPU.
        """
        with torch.device("meta"):
            module = build()
        expected, weights = module.state_dict(), self.weights
        if {key: tuple(value.shape) for key, value in expected.items()} != {key: tuple(value.shape)
                                                                            for key, value in weights.items()}:
            raise ValueError(f"{self.path} is not a skvae save (or it is damaged): its weights do not match its "
                             "parameters.")
        # batch normalisation counts its batches in an integer buffer; everything else is a float
        if not all(torch.isfinite(value).all() for value in weights.values()) or any(
                weights[key].is_floating_point() != value.is_floating_point() for key, value in expected.items()):
            raise ValueError(f"{self.path} is damaged: its weights are not all finite numbers.")
        module = module.to_empty(device="cpu")
        try:
            module.load_state_dict(weights)
        except ValueError as exc:  # a load hook's check of the values
            raise ValueError(f"{self.path} is damaged: {exc}.") from None
        return module


@contextlib.contextmanager
def unchanged_on_failure(estimator, module=None, state=None):
    """Undo every change to ``estimator`` when the block raises: its attributes, and a module trained in place.

    Parameters
    ----------
    estimator : object
        Its attributes (``__dict__``) are put back as they were.
    module : torch.nn.Module, default=None
        A module the block trains in place (``partial_fit``): its weights are
        copied first and put back on failure.
    state : skvae.train.loop.TrainingState, default=None
        Its training state, likewise.
    """
    attributes = dict(estimator.__dict__)
    weights = None if module is None else {key: value.clone() for key, value in module.state_dict().items()}
    training = None if state is None else state.snapshot()
    try:
        yield
    except BaseException:
        estimator.__dict__.clear()
        estimator.__dict__.update(attributes)
        if weights is not None:
            module.cpu().load_state_dict(weights)
        if training is not None:
            state.restore(training)
        raise
