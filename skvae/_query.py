"""Query mapping, as scArches' surgery: a fitted model learns new cells' batches with every reference weight frozen.

A model fitted with batches has a table of offsets per batch category in the decoder
(and in the encoder when it reads batches; with ``batch_model="genes"`` one log factor per gene
instead of the decoder's). ``map_query`` (:meth:`skvae.base.BaseEmbedder.map_query`) appends rows for the
query's new categories to each table, and, when the encoder reads no batch, gives the
encoder's input layer such a table too, all zeros and never trained (such an encoder
embeds a query as it embeds any cell, as scArches leaves scVI's default encoder); then
it trains on the query's cells with every other weight, and the reference's rows, frozen
(their gradients are zeroed and Adam moves a parameter with zero gradients by exactly
0), batch normalisation using the reference's statistics. The decoder then draws the
query's cells with their own batch's offsets; with an encoder that reads batches (or a
factor per gene and batch), the query's codes move too, to where the reference's
decoder explains them.

The estimator trains through the same session steps as ``fit`` (agreement across ranks, a rank's
share of the rows, training); the functions here take values and return values: the checks of
a query's arguments, its covariates, the grown module, and the gradient rule that trains only
the new rows.

Lotfollahi et al., "Mapping single-cell data to reference atlases by transfer learning",
Nature Biotechnology 40, 121-130 (2022).
"""

import contextlib
from itertools import accumulate
from numbers import Integral

import numpy as np
import torch
from torch import nn

from .nn.layers import ContinuousInputs, CovariateOffsets


def check_query(covariates, batch, max_epochs, *, reader):
    """Refuse a query mapping that cannot start, before anything is read: a bad budget, no batches.

    Parameters
    ----------
    covariates : skvae._covariates.Covariates or None
        The fitted model's covariates (None: fitted without batches).
    batch : array-like, DataFrame, dict or None
        The query cells' batches.
    max_epochs : int or "auto"
    reader : str
        The estimator's name, for messages.
    """
    if isinstance(max_epochs, (bool, np.bool_)) or not (
            isinstance(max_epochs, Integral) and max_epochs >= 1 or isinstance(max_epochs, str) and max_epochs == "auto"):
        raise ValueError(f"map_query's max_epochs must be an int >= 1 or 'auto' (the estimator's max_epochs='auto' for "
                         f"the query's size), not {max_epochs!r}.")
    if covariates is None:
        raise ValueError(f"map_query learns the batches of new cells, but this {reader} was fitted without batches: "
                         "its encoder embeds cells of any batch as they are (transform). Fit the reference with "
                         "batch= to map queries onto it.")
    if batch is None:
        raise ValueError("map_query needs each query cell's batch (batch=): the new categories it learns.")


def query_covariates(covariates, batch, n_rows, *, reader):
    """The model's covariates grown by the new categories of ``batch``; a ValueError when it holds none.

    Parameters
    ----------
    covariates : skvae._covariates.Covariates
    batch : array-like, DataFrame or dict
    n_rows : int
    reader : str

    Returns
    -------
    extended : skvae._covariates.Covariates
    before : tuple of int
        The number of categories of each covariate before.
    """
    extended, added = covariates.extended(batch, n_rows)
    if not any(len(new) for new in added):
        raise ValueError(f"batch holds no category this {reader} lacks (it knows {covariates.describe()}): its cells "
                         "need no mapping; embed them with transform.")
    return extended, covariates.n_categories


def grown_module(previous, build, before):
    """A module built for more categories, holding ``previous``'s weights (:func:`grown_state`).

    Parameters
    ----------
    previous : torch.nn.Module
        The fitted model.
    build : callable
        Returns a model for the grown covariates; it is built on the meta device (no random draws) and filled.
    before : tuple of int
        ``previous``'s numbers of categories.

    Returns
    -------
    torch.nn.Module
    """
    with torch.device("meta"):
        module = build()
    module = module.to_empty(device="cpu")
    module.load_state_dict(grown_state(previous, module, before, module.n_categories))
    return module


def grown_state(previous, module, before, after):
    """``module``'s state dict holding ``previous``'s weights, each category table's rows moved to their new places.

    A table of offsets per category (``CovariateOffsets``) stacks each covariate's rows; its rows for the categories
    of ``before`` keep their values, the new categories' rows start at the mean of the known ones' (a table
    ``previous`` lacks at 0: the encoder as it was); so does a dispersion per category.

    Parameters
    ----------
    previous, module : torch.nn.Module
        The fitted model, and one built for the covariates' new sizes.
    before, after : tuple of int
        The number of categories of each covariate, before and after.

    Returns
    -------
    dict of str to torch.Tensor
    """
    old = previous.state_dict()
    state = {}
    for key, value in module.state_dict().items():
        if key not in old:
            state[key] = torch.zeros_like(value)
        elif old[key].shape == value.shape:
            state[key] = old[key].clone()
        elif key.endswith("log_theta"):  # a dispersion per category of the first covariate
            state[key] = torch.cat([old[key], old[key].mean(dim=0, keepdim=True).expand(after[0] - before[0], -1)])
        else:
            state[key] = torch.zeros_like(value)
            for old_start, new_start, n, m in zip(_starts(before), _starts(after), before, after, strict=True):
                known = old[key][old_start:old_start + n]
                state[key][new_start:new_start + n] = known
                # a new category starts as the average known one: the layer was only ever trained with one of them
                state[key][new_start + n:new_start + m] = known.mean(dim=0)
    return state


def _starts(n_categories):
    return list(accumulate(n_categories[:-1], initial=0))


def _known_rows(name, n_rows, before, after):
    """Which rows of a category table, or of a dispersion per first-covariate category, are the known categories'."""
    known = torch.zeros(n_rows, dtype=torch.bool)
    if name.endswith("log_theta"):
        known[:before[0]] = True
        return known
    for start, n in zip(_starts(after), before, strict=True):
        known[start:start + n] = True
    return known


@contextlib.contextmanager
def only_new_categories(module, before, *, encoder=True):
    """Within the block, training ``module`` moves only the rows of its category tables for new categories.

    Every other parameter is frozen (no gradient), the known categories' rows get zero gradients, and batch
    normalisation layers and the continuous covariates' standardisation stay in evaluation mode (the reference's
    statistics, never updated). ``encoder=False``: the encoder's tables stay frozen too (an encoder that reads no
    batch embeds a query as it embeds any cell). The caller trains
    with the batch adversary's weight at 0 (its classes are the reference's batches).
    """
    after = module.n_categories
    tables = {f"{name}.weight" for name, layer in module.named_modules() if isinstance(layer, CovariateOffsets)
              and (encoder or not name.startswith("encoder."))}
    hooks = []
    for name, parameter in module.named_parameters():
        table = name in tables or name.endswith("log_theta") and parameter.dim() == 2
        parameter.requires_grad_(table)
        if table:
            mask = (~_known_rows(name, parameter.shape[0], before, after)).to(parameter.dtype)[:, None]
            hooks.append(parameter.register_hook(lambda grad, mask=mask: grad * mask.to(grad.device)))
    # statistics kept from the reference's cells: batch normalisation's, and the continuous covariates' standardisation
    norms = [layer for layer in module.modules() if isinstance(layer, (nn.modules.batchnorm._BatchNorm,
                                                                       ContinuousInputs))]
    for layer in norms:
        layer.train = lambda mode=True, layer=layer: nn.Module.train(layer, False)
    try:
        yield
    finally:
        for layer in norms:
            del layer.train
        for hook in hooks:
            hook.remove()
        for parameter in module.parameters():
            parameter.requires_grad_(True)
