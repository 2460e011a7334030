"""Expression read through a fitted model's decoder."""

from ..pipeline import _flat_steps


def corrected_expression(estimator, X, *, batch=None, to_batch=None):
    """Each cell's expression as the model decodes its code under the batch ``to_batch``: batch-corrected expression.

    The cells are embedded (``transform``, reading ``batch`` where the encoder
    does) and their codes decoded as if every cell had been measured in
    ``to_batch`` (``inverse_transform``): differences between batches that the
    decoder learned are gone, those between cells stay. Several batches in
    ``to_batch`` average the decoded expression over them (scVI's
    ``transform_batch`` given a list), which keeps no batch's own profile.

    Parameters
    ----------
    estimator : fitted skvae embedder or classifier, or an EmbeddingPipeline ending in one
    X : {array-like, sparse matrix} of shape (n_cells, n_features)
        The cells, as the estimator takes them (for a pipeline, its input).
    batch : array-like of shape (n_cells,), DataFrame or dict, default=None
        Each cell's batch (as in ``fit``), for an encoder that reads it.
    to_batch : label, dict, or list of them, default=None
        The batch to decode every cell in: one label (one covariate), or a dict
        of one value per column (several covariates, continuous ones included,
        e.g. ``{"sample": "s1", "percent_mito": 0.0}``); a list of them to
        average over. Required for a model fitted with batches; None for one
        fitted without.

    Returns
    -------
    ndarray of shape (n_cells, n_genes)
        For count likelihoods, normalised expression (proportions times 1e4); for
        "gaussian", the model's reconstruction of its input's scale. The genes
        are the model's (for a pipeline, those its selection kept).

    Examples
    --------
    >>> import numpy as np
    >>> from skvae import BetaVAEEmbedder
    >>> from skvae.analysis import corrected_expression
    >>> rng = np.random.RandomState(0)
    >>> counts = rng.poisson(rng.gamma(0.5, 2.0, size=(2, 40))[np.arange(80) % 2]).astype(float)
    >>> batch = np.where(np.arange(80) < 40, "a", "b")
    >>> model = BetaVAEEmbedder(2, hidden_layer_sizes=(16,), likelihood="nb", max_epochs=3,
    ...                         random_state=0).fit(counts, batch=batch)
    >>> corrected_expression(model, counts, to_batch=["a", "b"]).shape
    (80, 40)
    """
    final = _flat_steps(estimator)[-1]  # the model itself, or a pipeline's last step
    codes = estimator.transform(X, batch=batch)
    if getattr(final, "covariates_", None) is None:
        if to_batch is not None:
            raise ValueError("to_batch decodes cells in a batch, but this model was fitted without batches: its "
                             "decoder reads no batch. Leave to_batch out.")
        return final.inverse_transform(codes)
    if to_batch is None:
        raise ValueError("This model was fitted with batches: give to_batch, the batch (or list of batches) to "
                         "decode every cell in.")
    targets = to_batch if isinstance(to_batch, list) else [to_batch]
    if not targets:
        raise ValueError("to_batch is an empty list: give at least one batch to decode in.")
    decoded = None
    for target in targets:
        part = final.inverse_transform(codes, batch=target)
        decoded = part if decoded is None else decoded + part
    return decoded / len(targets) if len(targets) > 1 else decoded
