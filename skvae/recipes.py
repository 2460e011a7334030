"""skvae's recommended configuration for raw counts, as one unfitted estimator.

The settings, and the benchmark evidence for each, are documented in the user
guide's "Recommended settings for raw counts" section; ``benchmarks/quality.py``
measures them against PCA and scVI.
"""

import inspect

from .classifier import BetaVAEClassifier
from .estimators import BetaVAEEmbedder
from .pipeline import EmbeddingPipeline, _flat_steps
from .preprocessing import HighlyVariableGenes

#: The embedder's settings in :func:`make_count_embedder`.
RECOMMENDED_COUNT_SETTINGS = {
    "likelihood": "nb",
    "n_components": 10,
    "hidden_layer_sizes": (128,),
    "input_activation": True,
    "batch_norm": True,
    "dropout": 0.1,
    "beta": 1.0,
    "kl_warmup_epochs": "auto",
    "max_epochs": "auto",
    "batch_adversary": 0.3,
}
#: Genes kept by the selection step of :func:`make_count_embedder`.
RECOMMENDED_N_TOP_GENES = 2000


def _final_step(estimator):
    """The estimator itself, or the last step of a Pipeline such as :func:`make_count_embedder`'s (None if none)."""
    steps = _flat_steps(estimator)
    return steps[-1] if steps else None


def make_count_embedder(**overrides):
    """skvae's recommended embedder for raw UMI counts, unfitted.

    An :class:`~skvae.EmbeddingPipeline` (a scikit-learn Pipeline whose methods
    take ``batch=``, and that saves itself without pickle) of two steps:

    1. ``"genes"``: :class:`~skvae.preprocessing.HighlyVariableGenes` keeps the
       2,000 most variable genes by Seurat's vst method, computed on the counts;
    2. ``"embedder"``: a :class:`~skvae.BetaVAEEmbedder` with a negative binomial
       likelihood and the library size as an offset (``likelihood="nb"``, as
       scVI), 10 latent dimensions, scVI's network: the encoder maps the genes
       to 128 units with batch normalisation, a ReLU and 10 % dropout, then to
       the means and variances of the code (``hidden_layer_sizes=(128,)``,
       ``input_activation=True``); the decoder maps the code to 128 units with
       batch normalisation, a ReLU and 10 % dropout, then to the genes; beta 1 reached by a
       linear KL warm-up over the first half of the epochs, in minibatches of 256
       cells; 200 epochs up to 20,000 cells, then fewer so that the gradient steps
       stay those of 20,000 cells (``max_epochs="auto"``: 40 epochs at 100,000
       cells, 4 at a million).

    The settings come from ``benchmarks/quality.py`` on two labelled PBMC data
    sets and, for batches, ``benchmarks/integration.py``; the user guide gives
    the figures and the reason for each. They are fixed, not tuned per data set.

    To integrate batches, give both steps each cell's batch:
    ``fit(counts, batch=batch)`` (or
    ``skvae.tl.embed(adata, make_count_embedder(), layer="counts", batch_key=...)``):
    the genes are then ranked within each batch, the decoder is conditioned on
    the batch, and an adversarial batch classifier (``batch_adversary=0.3``)
    mixes the batches further where their neighbourhoods are shared. Without
    batches the classifier does not exist; ``batch_adversary=0`` keeps the
    decoder's conditioning alone. Where batches hold different populations or
    come from different technologies, ``batch_model="genes"`` (a factor per
    gene and batch instead of a decoder that takes the batch) keeps what one
    batch alone holds from being folded into a shared type (the user guide
    says what each does, with the figures).

    Parameters
    ----------
    **overrides
        Settings that replace the recommended ones: ``n_top_genes`` (the gene
        selection) and any parameter of :class:`~skvae.BetaVAEEmbedder`, e.g.
        ``random_state``, ``n_jobs``, ``max_epochs`` or ``verbose``.

    Returns
    -------
    pipeline : EmbeddingPipeline
        Takes raw counts of QC'd cells, cells x all genes, dense or sparse; its
        ``fit_transform`` returns the codes, of shape (n_cells, 10). The fitted
        embedder is ``pipeline["embedder"]``, the selected genes
        ``pipeline["genes"].get_support()``.

    Raises
    ------
    TypeError
        For an override that is neither ``n_top_genes`` nor a parameter of
        :class:`~skvae.BetaVAEEmbedder`.

    See Also
    --------
    skvae.BetaVAEEmbedder : The embedding step, with every parameter documented.

    Examples
    --------
    >>> import numpy as np
    >>> from skvae import make_count_embedder
    >>> rng = np.random.RandomState(0)
    >>> counts = rng.poisson(rng.gamma(0.3, 2.0, size=(3, 500))[rng.randint(3, size=300)])
    >>> embedder = make_count_embedder(n_top_genes=200, max_epochs=5, random_state=0)
    >>> embedder.fit_transform(counts).shape
    (300, 10)
    >>> int(embedder["genes"].get_support().sum())
    200
    """
    return _recipe(BetaVAEEmbedder, "embedder", "make_count_embedder", overrides)


def _recipe(cls, step, caller, overrides):
    """The gene selection then ``cls`` with the recommended settings, ``overrides`` checked against its parameters."""
    allowed = set(inspect.signature(cls).parameters) | {"n_top_genes"}
    unknown = sorted(set(overrides) - allowed)
    if unknown:
        raise TypeError(
            f"{caller} got unknown settings {unknown}: it takes n_top_genes and the parameters of "
            f"{cls.__name__} ({', '.join(sorted(allowed - {'n_top_genes'}))})."
        )
    n_top_genes = overrides.pop("n_top_genes", RECOMMENDED_N_TOP_GENES)
    return EmbeddingPipeline(
        [
            # the selection ranks genes within the batches, leaving out the continuous covariates
            ("genes", HighlyVariableGenes(n_top_genes=n_top_genes,
                                          continuous_covariates=overrides.get("continuous_covariates"))),
            (step, cls(**{**RECOMMENDED_COUNT_SETTINGS, **overrides})),
        ]
    )


def make_count_classifier(**overrides):
    """skvae's recommended cell-type classifier for raw UMI counts, unfitted: :func:`make_count_embedder`'s
    settings in a :class:`~skvae.BetaVAEClassifier`.

    An :class:`~skvae.EmbeddingPipeline` of the gene selection (``"genes"``) and
    a :class:`~skvae.BetaVAEClassifier` (``"classifier"``) with the settings of
    :func:`make_count_embedder` (negative binomial likelihood, 10 latent
    dimensions, scVI's network, ``batch_adversary=0.3``) and the classifier's
    defaults. ``fit(counts, y, batch=batch)`` learns from the labelled cells
    (-1, None or NaN mark the others); ``predict``, ``predict_proba``,
    ``typicality``, ``is_unknown`` and ``map_query`` take the counts and
    ``batch=`` as ``transform`` does; ``score(counts, y)`` is the accuracy, so a
    ``GridSearchCV`` over the recipe compares classifiers. The fitted classifier
    is ``pipeline["classifier"]``. :func:`skvae.tl.annotate` does all of it on
    an AnnData.

    Parameters
    ----------
    **overrides
        ``n_top_genes`` and any parameter of :class:`~skvae.BetaVAEClassifier`.

    Returns
    -------
    pipeline : EmbeddingPipeline

    Raises
    ------
    TypeError
        For an override that is neither ``n_top_genes`` nor a parameter of
        :class:`~skvae.BetaVAEClassifier`.

    Examples
    --------
    >>> import numpy as np
    >>> from skvae import make_count_classifier
    >>> rng = np.random.RandomState(0)
    >>> types = rng.randint(3, size=300)
    >>> counts = rng.poisson(rng.gamma(0.3, 2.0, size=(3, 500))[types])
    >>> y = np.where(np.arange(300) < 200, types, -1)  # the last 100 cells unlabelled
    >>> model = make_count_classifier(n_top_genes=200, max_epochs=20, random_state=0).fit(counts, y)
    >>> model.predict(counts[200:]).shape
    (100,)
    """
    return _recipe(BetaVAEClassifier, "classifier", "make_count_classifier", overrides)
