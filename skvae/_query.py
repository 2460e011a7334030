"""Query mapping, as scArches' surgery: a fitted model learns new cells' batches with every reference weight frozen.

A model fitted with batches has a table of offsets per batch category in the decoder
(and in the encoder when it reads batches). :func:`map_query` appends rows for the
query's new categories to each table, and, when the encoder reads no batch, gives the
encoder's input layer such a table too (its rows for the reference's categories 0, so
the reference's codes are unchanged to the bit); then it trains on the query's cells
with every other weight, and the reference's rows, frozen (their gradients are zeroed
and Adam moves a parameter with zero gradients by exactly 0), batch normalisation using
the reference's statistics. The query's codes then move so that the reference's
decoder, given the query's own batch offsets, explains its cells.

Lotfollahi et al., "Mapping single-cell data to reference atlases by transfer learning",
Nature Biotechnology 40, 121-130 (2022).
"""

import contextlib
from dataclasses import replace
from itertools import accumulate
from numbers import Integral

import numpy as np
import torch
from torch import nn

from ._covariates import with_covariates
from ._persistence import unchanged_on_failure
from ._validation import hidden_layer_sizes, validated_rows
from .train.loop import epochs_for
from .train.session import TrainingSession, training_device


def map_query(estimator, X, batch, *, max_epochs="auto"):
    """Learn the new batch categories of ``batch`` from the cells of ``X``, every reference weight frozen.

    Parameters
    ----------
    estimator : skvae.base.BaseEmbedder
        Fitted with batches.
    X : {array-like, sparse matrix, anndata.abc.CSRDataset} of shape (n_samples, n_features)
    batch : array-like of shape (n_samples,), DataFrame or dict
    max_epochs : int or "auto", default="auto"

    """
    estimator._check_fitted("map a query onto it")
    if isinstance(max_epochs, (bool, np.bool_)) or not (
            isinstance(max_epochs, Integral) and max_epochs >= 1 or isinstance(max_epochs, str) and max_epochs == "auto"):
        raise ValueError(f"map_query's max_epochs must be an int >= 1 or 'auto' (the estimator's max_epochs='auto' for "
                         f"the query's size), not {max_epochs!r}.")
    reader = type(estimator).__name__
    if getattr(estimator, "covariates_", None) is None:
        raise ValueError(f"map_query learns the batches of new cells, but this {reader} was fitted without batches: "
                         "its encoder embeds cells of any batch as they are (transform). Fit the reference with "
                         "batch= to map queries onto it.")
    if batch is None:
        raise ValueError("map_query needs each query cell's batch (batch=): the new categories it learns.")
    with unchanged_on_failure(estimator, in_place=False):
        rows = validated_rows(estimator, X, reset=False, training=True, counts=estimator._models_counts,
                              whom=estimator._whom())
        before = estimator.covariates_.n_categories
        extended, added = estimator.covariates_.extended(batch, rows.n_rows)
        if not any(len(new) for new in added):
            raise ValueError(f"batch holds no category this {reader} lacks (it knows "
                             f"{estimator.covariates_.describe()}): its cells need no mapping; embed them with "
                             "transform.")
        previous = estimator.module_
        estimator._set_covariates(extended)
        if not hasattr(estimator, "n_reference_categories_"):
            estimator.n_reference_categories_ = np.asarray(before)
        module = estimator._make_module(rows.n_features, hidden_layer_sizes(estimator.hidden_layer_sizes))
        module.load_state_dict(grown_state(previous, module, before, extended.n_categories))
        data = with_covariates(rows, extended, batch, reader=reader, required=True)
        epochs = epochs_for(rows.n_rows) if max_epochs == "auto" else max_epochs
        config = replace(estimator._training_config(incremental=False), max_epochs=epochs, kl_warmup_epochs=0)
        session = TrainingSession(training_device(estimator.device))
        session.begin(lambda: module, random_state=estimator.random_state, learning_rate=estimator.learning_rate)
        with only_new_categories(module, before):
            session.train(module, data, config=config, algorithm=estimator.algorithm_,
                          center=not estimator._models_counts)
        estimator.module_ = module.eval()
        # partial_fit would continue the reference's optimiser, which knows none of the new weights
        estimator.__dict__.pop("_training_state", None)


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
def only_new_categories(module, before):
    """Within the block, training ``module`` moves only the rows of its category tables for new categories.

    Every other parameter is frozen (no gradient), the known categories' rows get zero gradients, batch
    normalisation layers stay in evaluation mode (the reference's statistics, never updated), and the batch
    adversary is off (its classes are the reference's batches; a query brings no cell-type labels either).
    """
    after = module.n_categories
    hooks = []
    for name, parameter in module.named_parameters():
        table = name.endswith("covariate_offsets.weight") or name.endswith("log_theta") and parameter.dim() == 2
        parameter.requires_grad_(table)
        if table:
            mask = (~_known_rows(name, parameter.shape[0], before, after)).to(parameter.dtype)[:, None]
            hooks.append(parameter.register_hook(lambda grad, mask=mask: grad * mask.to(grad.device)))
    norms = [layer for layer in module.modules() if isinstance(layer, nn.modules.batchnorm._BatchNorm)]
    for layer in norms:
        layer.train = lambda mode=True, layer=layer: nn.Module.train(layer, False)
    adversary = module.batch_adversary
    module.batch_adversary = 0.0
    try:
        yield
    finally:
        module.batch_adversary = adversary
        for layer in norms:
            del layer.train
        for hook in hooks:
            hook.remove()
        for parameter in module.parameters():
            parameter.requires_grad_(True)
