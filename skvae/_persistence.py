"""Saving and reading estimator files: builtins only, atomic writes, every field checked before use."""

import hashlib
import os
import tempfile
from numbers import Integral
from pathlib import Path

import numpy as np
import torch

SAVE_FORMAT = "skvae-estimator-v1"
_FIELDS = {
    "format": str,
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
    """SHA-256 of the weights' names, shapes, types and bytes: a flipped bit anywhere changes it."""
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        value = state_dict[key].detach().cpu().contiguous().reshape(-1)
        digest.update(f"{key}:{tuple(state_dict[key].shape)}:{value.dtype};".encode())
        digest.update(value.view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()


def atomic_torch_save(state, path):
    """``torch.save`` to a temporary file beside ``path``, then move it into place, with the weights' checksum.

    A failure at any point (a full disk, a kill) leaves the previous file, or none. A
    ``path`` that is a symbolic link is written through: its target is replaced and the
    link kept.
    """
    state = {**state, "checksum": weights_checksum(state["state_dict"])}
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


def read_save(path):
    """The dictionary written by :func:`atomic_torch_save`, its fields and types checked.

    Raises ValueError naming ``path`` for anything that is not an intact skvae save;
    a missing file stays a FileNotFoundError.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:  # noqa: BLE001 -- torch.load raises many kinds for foreign or truncated files
        raise ValueError(f"{path} is not a skvae save (or it is damaged): {type(exc).__name__}: {exc}") from None
    if not isinstance(state, dict) or state.get("format") != SAVE_FORMAT:
        raise ValueError(f"{path} is not a skvae save (or it is damaged): no {SAVE_FORMAT!r} header.")
    for field, kind in _FIELDS.items():
        if not isinstance(state.get(field), kind):  # the file is wrong, not an argument: a ValueError
            message = f"{path} is not a skvae save (or it is damaged): field {field!r} is missing or malformed."
            raise ValueError(message)  # noqa: TRY004
    if not all(isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in state["state_dict"].items()):
        raise ValueError(f"{path} is not a skvae save (or it is damaged): its weights are not all tensors.")
    # saves from before checksums have none
    if "checksum" in state and state["checksum"] != weights_checksum(state["state_dict"]):
        raise ValueError(f"{path} is damaged: its weights do not match the checksum written with them.")
    return state
