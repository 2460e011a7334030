"""One torch module per model: encode, decode, a deterministic embedding, the loss terms.

These modules know nothing of scikit-learn: the estimators in :mod:`skvae.estimators`
build them, and :mod:`skvae.train.loop` trains them.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd import Function

from .kl import gaussian_kl, spike_and_slab_kl
from .layers import ContinuousInputs, CovariateOffsets, Decoder, Encoder
from .likelihoods import CountLikelihood, Gaussian
from .sparse import ShiftedSparseRows

# Spike probabilities are kept inside (eps, 1 - eps) so the KL's logarithms
# and their gradients stay finite.
_SPIKE_EPS = 1e-6
# Hidden width of the adversarial batch classifier (two layers), as scvi-tools' adversarial classifier
_ADVERSARY_WIDTH = 32
# Neighbours in the minibatch that decide whether a cell's neighbourhood is shared with other batches
_SHARED_NEIGHBOURS = 5


def shared_weight(codes, labels, k=_SHARED_NEIGHBOURS):
    """How far each cell's neighbourhood in the minibatch is shared with other categories (batches), in [0, 1].

    The share of a cell's ``k`` nearest codes (among the minibatch's others) from another category, over the share
    expected if the categories mixed perfectly (the other categories' share of the minibatch), capped at 1: 0 for a
    cell whose neighbours all come from its own category (a population of its batch alone, or one not yet mixed), 1
    for one in a well mixed neighbourhood.

    Parameters
    ----------
    codes : torch.Tensor of shape (n_samples, n_components)
    labels : torch.Tensor of shape (n_samples,) or (n_samples, n_covariates), int64
        Each cell's category (of each covariate, one column each).
    k : int, default=5

    Returns
    -------
    torch.Tensor of the shape of ``labels``
        The weight of each cell (for each covariate).

    Examples
    --------
    >>> import torch
    >>> from skvae.nn.models import shared_weight
    >>> codes = torch.tensor([[0.0], [0.1], [0.2], [0.3], [5.0], [5.1]])
    >>> batch = torch.tensor([0, 1, 0, 1, 0, 0])  # the last two: a population of batch 0 alone
    >>> shared_weight(codes, batch, k=1)
    tensor([1., 1., 1., 1., 0., 0.])
    """
    return _shared_weights(nearest_codes(codes, k), labels, codes)


def _shared_weights(neighbours, labels, codes):
    """:func:`shared_weight` given each cell's ``neighbours`` (:func:`nearest_codes`)."""
    if neighbours.shape[1] == 0:
        return torch.zeros(labels.shape, dtype=codes.dtype, device=codes.device)
    if labels.dim() == 2:
        return torch.stack([_shared(neighbours, column) for column in labels.unbind(dim=1)], dim=1)
    return _shared(neighbours, labels)


def nearest_codes(codes, k=_SHARED_NEIGHBOURS):
    """Each cell's ``k`` nearest other codes of the minibatch (Euclidean): the neighbourhood the adversary reads.

    Parameters
    ----------
    codes : torch.Tensor of shape (n_samples, n_components)
    k : int, default=5

    Returns
    -------
    torch.Tensor of shape (n_samples, min(k, n_samples - 1)), int64
        Indices into ``codes``, nearest first; no columns for a minibatch of one cell.

    Examples
    --------
    >>> import torch
    >>> from skvae.nn.models import nearest_codes
    >>> nearest_codes(torch.tensor([[0.0], [0.1], [5.0]]), k=1).tolist()
    [[1], [0], [1]]
    """
    k = min(k, codes.shape[0] - 1)
    if k < 1:
        return torch.zeros((codes.shape[0], 0), dtype=torch.long, device=codes.device)
    distances = torch.cdist(codes, codes)
    distances.fill_diagonal_(float("inf"))
    return distances.topk(k, largest=False).indices


def _shared(neighbours, labels):
    """:func:`shared_weight` of one covariate's ``labels``, given each cell's ``neighbours`` (indices, n x k)."""
    n = labels.shape[0]
    other = (labels[neighbours] != labels[:, None]).float().mean(dim=1)
    own = torch.bincount(labels)[labels].float() - 1  # the cell's category in the minibatch, but itself
    expected = 1.0 - own / (n - 1)
    return torch.where(expected > 0, (other / expected.clamp_min(1e-12)).clamp(max=1.0), torch.zeros_like(other))


def type_weight(shared_types, batch, labels, logits):
    """How far each cell's type is held by another batch, in [0, 1]: what the adversary may push it by.

    A labelled cell's type's entry of ``shared_types`` for its batch; an unlabelled cell's mean of its batch's entries
    weighed by the classifier's probabilities of the types (``softmax(logits)``).

    Parameters
    ----------
    shared_types : torch.Tensor of shape (n_classes, n_categories)
        1 where a type is held by a category other than the column's (:class:`LossWeights`).
    batch : torch.Tensor of shape (n_samples,), int64
        Each cell's category.
    labels : torch.Tensor of shape (n_samples,), int64
        Each cell's type, -1 for an unlabelled cell.
    logits : torch.Tensor of shape (n_samples, n_classes)
        The cell-type classifier's logits.

    Returns
    -------
    torch.Tensor of shape (n_samples,)

    Examples
    --------
    >>> import torch
    >>> from skvae.nn.models import type_weight
    >>> shared = torch.tensor([[1.0, 1.0], [1.0, 0.0]])  # type 1 only in batch 1
    >>> batch, labels = torch.tensor([0, 1, 1, 1]), torch.tensor([1, 1, 0, -1])
    >>> type_weight(shared, batch, labels, torch.tensor([[0.0, 0.0]] * 4)).tolist()
    [1.0, 0.0, 1.0, 0.5]
    """
    table = shared_types.to(logits.dtype).T[batch]  # each cell's batch's column: (n_samples, n_classes)
    given = table.gather(1, labels.clamp_min(0)[:, None]).squeeze(1)
    predicted = (F.softmax(logits.detach(), dim=1) * table).sum(dim=1)
    return torch.where(labels >= 0, given, predicted)


def held_type_losses(logits, batch, labels, type_logits, held_types, neighbours=None):
    """Each cell's adversarial cross-entropy asked among the batches that hold its type (and its own) only; given
    ``neighbours``, among those of them that its neighbours hold.

    With three batches or more a type can be held by some and not the others: telling a cell's batch among all of
    them asks the encoder to make its type look as if the batches lacking it held it, which folds it into their
    relatives; asked among the batches that hold it, only those are mixed. A labelled cell is asked for its type, an
    unlabelled one for each type in proportion to the classifier's probabilities (``softmax(type_logits)``). Where a
    type is held by one batch alone the question has one answer and costs nothing (:func:`type_weight`'s 0); where by
    every batch it is the plain cross-entropy.

    Parameters
    ----------
    logits : torch.Tensor of shape (n_samples, n_categories)
        The adversary's logits of the batch.
    batch : torch.Tensor of shape (n_samples,), int64
    labels : torch.Tensor of shape (n_samples,), int64
        Each cell's type, -1 for an unlabelled cell.
    type_logits : torch.Tensor of shape (n_samples, n_classes) or None
        The cell-type classifier's logits; None where every cell is labelled
        (an embedder's cells by their clusters).
    held_types : torch.Tensor of shape (n_classes, n_categories)
        1 where a category (batch) holds a type (:class:`LossWeights`).
    neighbours : torch.Tensor of shape (n_samples, k), int64, default=None
        Each cell's nearest codes (:func:`nearest_codes`): a batch that holds the type is asked about only where one
        of them is its cell (:func:`neighbourhood_losses`); None: wherever it holds the type.

    Returns
    -------
    torch.Tensor of shape (n_samples,)

    Examples
    --------
    >>> import torch
    >>> from skvae.nn.models import held_type_losses
    >>> held = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])  # type 1 is not in batch 2
    >>> logits = torch.zeros(2, 3)
    >>> losses = held_type_losses(logits, torch.tensor([0, 0]), torch.tensor([0, 1]), torch.zeros(2, 2), held)
    >>> [round(value, 4) for value in losses.tolist()]  # log 3, then log 2: batch 2 is not asked about for type 1
    [1.0986, 0.6931]
    """
    n_classes = held_types.shape[0]
    own = F.one_hot(batch, logits.shape[1]).bool()
    around = torch.ones_like(own) if neighbours is None else \
        _neighbourhood_categories(batch, logits.shape[1], neighbours)
    # (n_samples, n_classes, n_categories)
    asked = (held_types.bool()[None, :, :] & around[:, None, :]) | own[:, None, :]
    losses = _asked_cross_entropy(logits[:, None, :], asked, batch[:, None, None].expand(-1, n_classes, 1))
    given = F.one_hot(labels.clamp_min(0), n_classes).to(logits.dtype)
    probabilities = given if type_logits is None else \
        torch.where((labels >= 0)[:, None], given, F.softmax(type_logits.detach(), dim=1))
    return (probabilities * losses).sum(dim=1)


def neighbourhood_losses(logits, labels, neighbours):
    """Each cell's adversarial cross-entropy asked among the categories its neighbours hold (and its own) only.

    With three batches or more a population can be held by some and not the others. Asked among all of them, a cell
    whose neighbourhood holds none of a batch's cells (its population is not in that batch) is pushed to look like
    that batch's cells, which folds it into their nearest population; asked among the batches around it, it is only
    mixed with those. Without labels this is :func:`held_type_losses`' question with the neighbourhood in place of
    the type. With two categories it is the plain cross-entropy wherever the other category is among the neighbours
    (and 0 where it is not, as :func:`shared_weight` is).

    Parameters
    ----------
    logits : torch.Tensor of shape (n_samples, n_categories)
        The adversary's logits of one covariate.
    labels : torch.Tensor of shape (n_samples,), int64
        Each cell's category.
    neighbours : torch.Tensor of shape (n_samples, k), int64
        Each cell's nearest codes (:func:`nearest_codes`); with none (k = 0) each cell is asked about its own
        category alone, a loss of 0.

    Returns
    -------
    torch.Tensor of shape (n_samples,)

    Examples
    --------
    >>> import torch
    >>> from skvae.nn.models import neighbourhood_losses
    >>> labels = torch.tensor([0, 1, 2, 0])
    >>> neighbours = torch.tensor([[1], [0], [1], [1]])  # nobody's neighbour is in batch 2 but batch 2's own cell
    >>> losses = neighbourhood_losses(torch.zeros(4, 3), labels, neighbours)
    >>> [round(value, 4) for value in losses.tolist()]  # log 2: batch 2 is asked about only for its own cell
    [0.6931, 0.6931, 0.6931, 0.6931]
    """
    return _asked_cross_entropy(logits, _neighbourhood_categories(labels, logits.shape[1], neighbours), labels[:, None])


def _asked_cross_entropy(logits, asked, index):
    """The cross-entropy of the category ``index`` (last axis of length 1) among those ``asked`` (a bool mask over the
    last axis, which ``logits`` broadcast to) alone: the others' logits count as minus infinity."""
    masked = logits.masked_fill(~asked, float("-inf"))
    return -F.log_softmax(masked, dim=-1).gather(-1, index).squeeze(-1)


def _neighbourhood_categories(labels, n_categories, neighbours):
    """Which categories each cell and its ``neighbours`` hold, as bool (n_samples, n_categories)."""
    return F.one_hot(labels, n_categories).bool().scatter_(1, labels[neighbours], True)


@dataclass(frozen=True)
class LossWeights:
    """How much each loss term counts in one training step: what the trainer decides, not the module.

    Parameters
    ----------
    kl : float, default=1.0
        The KL term's weight ``beta`` (applied by :meth:`LossTerms.total`).
    adversary : float, default=0.0
        The reversed gradient the adversarial batch classifier sends to the
        encoder, in units of the reconstruction's gradient at the code (0: no
        adversarial term).
    classification : float, default=1.0
        The gradient the cell-type classifier sends to the encoder, in the same units.
    shared_types : torch.Tensor of shape (n_classes, n_categories), default=None
        For a model with a cell-type classifier: 1 where a type is held by another
        category of the first covariate (batch) than the column's, 0 where that
        category alone holds it. The adversary pushes a labelled cell as far as its
        type's entry for its batch, an unlabelled one as far as the classifier's
        probabilities of the types weigh them (:func:`type_weight`); None: every
        type is held by several batches.
    held_types : torch.Tensor of shape (n_classes, n_categories), default=None
        For a model with a cell-type classifier: 1 where a category of the first
        covariate holds a type. Where given, the adversary tells a cell's batch
        only among the batches that hold its type (:func:`held_type_losses`),
        instead of ``shared_types``' weights; None: among the batches its
        neighbours hold (:func:`neighbourhood_losses`). For a model without one,
        the rows are groups of cells (those of ``batch_counterparts``), each
        cell's group given as its label.

    Examples
    --------
    >>> from skvae.nn.models import LossWeights
    >>> LossWeights(kl=2.0).adversary
    0.0
    """

    kl: float = 1.0
    adversary: float = 0.0
    classification: float = 1.0
    shared_types: torch.Tensor | None = None
    held_types: torch.Tensor | None = None


class GradientScale:
    """The size of the reconstruction's gradient per cell at the code: a running mean over training steps.

    The adversary's and the classifier's gradients at the code are scaled by it, so
    that their weights mean the same at any depth and number of genes. It is
    training state (it continues from one ``partial_fit`` to the next), kept by the
    trainer and handed to :meth:`Autoencoder.loss` with each step.

    Parameters
    ----------
    n_processes : int, default=1
        Processes a minibatch is split over (a data-parallel run): the loss is a
        mean over all of their cells, so a row's gradient is ``1 / n`` of its own.

    Attributes
    ----------
    value : float or None
        None before the first measurement.

    Examples
    --------
    >>> import torch
    >>> from skvae.nn.models import GradientScale
    >>> scale = GradientScale()
    >>> scale.measure(torch.full((4, 2), 0.25))  # each of 4 rows holds a quarter of its cell's gradient
    >>> round(scale.value, 4)
    1.4142
    """

    def __init__(self, n_processes=1):
        self.n_processes = n_processes
        self.value = None

    def measure(self, grad):
        """Fold one step's gradient at the code (rows: the minibatch's cells) into the running mean.

        Parameters
        ----------
        grad : torch.Tensor of shape (n_samples, n_components)
        """
        size = float(grad.detach().norm(dim=1).pow(2).mean().sqrt()) * grad.shape[0] * self.n_processes
        if math.isfinite(size):
            self.value = size if self.value is None else 0.9 * self.value + 0.1 * size


@dataclass
class LossTerms:
    """Per-cell loss terms; the training objective is ``reconstruction + beta * kl`` (+ ``adversarial``, ``classification``).

    Parameters
    ----------
    reconstruction : torch.Tensor of shape (n_samples,)
        Negative log-likelihood of each cell under the model's likelihood (the
        summed squared error for :class:`~skvae.nn.likelihoods.Gaussian`).
    kl : torch.Tensor of shape (n_samples,)
        KL divergence of each cell's posterior from the prior (zeros for a plain
        autoencoder).
    adversarial : torch.Tensor of shape (n_samples,), default=None
        The adversarial batch classifier's cross-entropy, each cell's weighted by
        how far its neighbourhood is shared with other batches
        (:func:`shared_weight`), for a model built with ``adversary`` and a loss
        whose :class:`LossWeights` give the adversary a weight: the classifier
        descends it, and the encoder ascends it through a reversed gradient
        scaled by that weight times the size of the reconstruction's gradient at
        the code (:class:`GradientScale`).
    classification : torch.Tensor of shape (n_samples,), default=None
        The cell-type classifier's cross-entropy of each labelled cell (0 for an
        unlabelled one), for a model with ``n_classes`` given labels: the
        classifier descends it, and the encoder descends it through a gradient
        scaled by :class:`LossWeights`' ``classification`` times the size of the
        reconstruction's gradient at the code.

    Examples
    --------
    >>> import torch
    >>> from skvae.nn.models import LossTerms
    >>> terms = LossTerms(reconstruction=torch.tensor([4.0]), kl=torch.tensor([1.0]))
    >>> terms.reconstruction + 2.0 * terms.kl
    tensor([6.])
    """

    reconstruction: torch.Tensor
    kl: torch.Tensor
    adversarial: torch.Tensor | None = None
    classification: torch.Tensor | None = None

    def total(self, kl_weight):
        """The per-cell objective ``reconstruction + kl_weight * kl``, plus ``adversarial`` and ``classification``.

        Parameters
        ----------
        kl_weight : float

        Returns
        -------
        torch.Tensor of shape (n_samples,)
        """
        total = self.reconstruction + kl_weight * self.kl
        for extra in (self.adversarial, self.classification):
            if extra is not None:
                total = total + extra
        return total


class _ScaledGradient(Function):
    """The identity forward; the gradient times ``scale`` backward (a negative scale reverses it: Ganin & Lempitsky,
    2015)."""

    @staticmethod
    def forward(ctx, x, scale):
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad_output):
        return ctx.scale * grad_output, None


class _LatentModel(nn.Module):
    """Encoder with named branches, decoder, likelihood, and the loss template shared by all models."""

    branches = ()
    # which covariates the adversary learns to tell from the code: "first" (the batch, as scVI's batch_key; the
    # others are covariates the decoder reads) or "all" (one head each; benchmarks/integration.py --covariates)
    adversary_covariates = "first"

    def __init__(self, n_features, n_components, hidden_layer_sizes, *, likelihood=None, input_activation=False,
                 batch_norm=False, dropout=0.0, n_categories=(), n_continuous=0, encode_batch=False, adversary=False,
                 n_classes=0, gene_factors=False):
        super().__init__()
        options = {"batch_norm": batch_norm, "dropout": dropout}
        self.n_components = n_components
        self.n_categories = tuple(int(n) for n in n_categories)
        self.n_continuous = int(n_continuous)
        likelihood = Gaussian() if likelihood is None else likelihood
        self.gene_factors = bool(gene_factors and self.n_categories)
        if self.gene_factors and not isinstance(likelihood, CountLikelihood):
            raise ValueError(f"gene_factors multiply counts: they need a count likelihood, not {type(likelihood).__name__}.")
        # the encoder's own offsets per covariate (encode_batch); with gene factors it reads the batch as well
        self._encoder_offsets = bool(encode_batch and (self.n_categories or self.n_continuous))
        self.encode_batch = self._encoder_offsets or self.gene_factors
        self.encoder = Encoder(n_features, hidden_layer_sizes, n_components, self.branches, **options,
                               n_categories=self.n_categories if self._encoder_offsets else (),
                               n_continuous=self.n_continuous if self._encoder_offsets else 0,
                               input_activation=input_activation)
        self.likelihood = likelihood
        if self.gene_factors:  # one log factor per gene and category; the decoder's hidden layers see no category
            self.gene_offsets = CovariateOffsets(self.n_categories, n_features)
        self.decoder = Decoder(n_components, hidden_layer_sizes, n_features, self.likelihood.heads, **options,
                               n_categories=() if self.gene_factors else self.n_categories,
                               n_continuous=self.n_continuous)
        if self.n_continuous:  # standardised by the model itself, from the cells it trains on
            self.continuous_inputs = ContinuousInputs(self.n_continuous)
        # a classifier of the covariates from the code, which the encoder learns to defeat: only where categories differ
        told = self.n_categories[:1] if self.adversary_covariates == "first" else self.n_categories
        self._told = len(told)
        self.has_adversary = bool(adversary and any(n > 1 for n in told))
        if self.has_adversary:
            self.adversary = nn.Sequential(nn.Linear(n_components, _ADVERSARY_WIDTH), nn.ReLU(),
                                           nn.Linear(_ADVERSARY_WIDTH, _ADVERSARY_WIDTH), nn.ReLU(),
                                           nn.Linear(_ADVERSARY_WIDTH, sum(told)))
        # a classifier of the cell type from the code (multinomial logistic regression), learned with the code
        self.n_classes = int(n_classes)
        if self.n_classes:
            self.classifier = nn.Linear(n_components, self.n_classes)
        self.register_load_state_dict_pre_hook(_renamed_keys_hook)

    def _standardised(self, continuous):
        return None if continuous is None else self.continuous_inputs(continuous)

    def _gene_offset(self, covariates):
        """Each row's log factor per gene (``gene_factors``), or None."""
        return self.gene_offsets(covariates) if self.gene_factors and covariates is not None else None

    def _posterior(self, x, covariates, values):
        """:meth:`posterior` of standardised continuous covariates."""
        offset = self._gene_offset(covariates)
        if offset is not None:
            # the counts as the batch-free decoder would see them: each gene divided by the batch's factor (learned
            # by the reconstruction alone)
            factor = torch.exp(-offset.detach())
            x = x.scaled(factor) if isinstance(x, ShiftedSparseRows) else x * factor
        if not self._encoder_offsets:
            return self.encoder(self.likelihood.encoder_input(x))
        return self.encoder(self.likelihood.encoder_input(x), covariates, values)

    def posterior(self, x, covariates=None, continuous=None):
        """Posterior parameters of each cell.

        Parameters
        ----------
        x : torch.Tensor of shape (n_samples, n_features) or ShiftedSparseRows
        covariates : torch.Tensor of shape (n_samples, n_covariates), int64, default=None
            Each cell's category of each covariate; read only by an encoder that takes them (``encode_batch``).
        continuous : torch.Tensor of shape (n_samples, n_continuous), default=None
            Each cell's continuous covariates (a model built with ``n_continuous``);
            read only by an encoder that takes them.

        Returns
        -------
        dict of str to torch.Tensor of shape (n_samples, n_components)
            One entry per encoder branch: ``"code"``; ``"mu"`` and ``"logvar"``; for
            the sparse coding model also ``"spike"`` (probabilities).
        """
        return self._posterior(x, covariates, self._standardised(continuous) if self._encoder_offsets else None)

    def decode(self, z, covariates=None, continuous=None):
        """Expression decoded from latent codes: the likelihood's mean.

        Parameters
        ----------
        z : torch.Tensor of shape (n_samples, n_components)
        covariates : torch.Tensor of shape (n_samples, n_covariates), int64, default=None
            The categories to decode each code as measured in (a model built with ``n_categories``).
        continuous : torch.Tensor of shape (n_samples, n_continuous), default=None
            The continuous covariates to decode each code with (a model built with ``n_continuous``).

        Returns
        -------
        torch.Tensor of shape (n_samples, n_features)
            The reconstruction (Gaussian) or normalised expression, proportions
            times 1e4 (count likelihoods).
        """
        return self.likelihood.mean(self.decoder(z, covariates, self._standardised(continuous),
                                                 self._gene_offset(covariates)))

    def embed(self, x, covariates=None, continuous=None):
        """Deterministic latent code of each cell (the posterior mean).

        Parameters
        ----------
        x : torch.Tensor of shape (n_samples, n_features) or ShiftedSparseRows
        covariates : torch.Tensor of shape (n_samples, n_covariates), int64, default=None
            Each cell's categories; read only by an encoder that takes them.
        continuous : torch.Tensor of shape (n_samples, n_continuous), default=None
            Each cell's continuous covariates; read only by an encoder that takes them.

        Returns
        -------
        torch.Tensor of shape (n_samples, n_components)
        """
        return self._mean_code(self.posterior(x, covariates, continuous))

    def loss(self, x, covariates=None, labels=None, *, continuous=None, generator=None, deterministic=False,
             weights=None, gradient_scale=None):
        """Per-cell loss terms of a minibatch.

        Parameters
        ----------
        x : torch.Tensor of shape (n_samples, n_features) or ShiftedSparseRows
        covariates : torch.Tensor of shape (n_samples, n_covariates), int64, default=None
            Each cell's categories, for a model built with ``n_categories``.
        labels : torch.Tensor of shape (n_samples,), int64, default=None
            Each cell's type, an index of the ``n_classes``, or -1 for an unlabelled
            cell, for a model built with ``n_classes``.
        continuous : torch.Tensor of shape (n_samples, n_continuous), default=None
            Each cell's continuous covariates, for a model built with ``n_continuous``.
        generator : torch.Generator, default=None
            Source of the reparameterisation noise.
        deterministic : bool, default=False
            Decode the posterior mean instead of a random draw.
        weights : LossWeights, default=None
            This step's weights of the adversary and the classifier; None: no
            adversarial term (evaluation).
        gradient_scale : GradientScale, default=None
            In training: measures the reconstruction's gradient at the code, which
            scales the classifiers' gradients there; None outside training.

        Returns
        -------
        LossTerms
        """
        weights = LossWeights() if weights is None else weights
        values = self._standardised(continuous)  # once: in training this updates the running estimates
        q = self._posterior(x, covariates, values)
        z = self._mean_code(q) if deterministic else self._sample_code(q, generator)
        adversarial = classification = None
        adversary = self.has_adversary and weights.adversary > 0 and covariates is not None
        classifying = self.n_classes and labels is not None
        measured = 0.0 if gradient_scale is None else gradient_scale.value or 0.0
        if adversary or classifying:
            # the embedding itself (the posterior mean) is what the classifiers read
            code = self._mean_code(q)
            if gradient_scale is not None:
                z = z.view_as(z)  # a node of its own, whose gradient is the reconstruction's alone
                if z.requires_grad:
                    z.register_hook(gradient_scale.measure)
        if adversary:
            # it should not tell the categories apart where its neighbourhood is shared: a population of one batch
            # alone is left where it is; with types, only as far as the cell's type is held by other batches
            logits = self.adversary(_ScaledGradient.apply(code, -weights.adversary * measured))
            types = held = None
            if classifying and (weights.shared_types is not None or weights.held_types is not None):
                # a pass of its own, without gradient: the classifier's graph stays built after the adversary's, so
                # that training without a table (label transfer) is bit for bit what it was before the table
                with torch.no_grad():
                    type_logits = self.classifier(code)
                if weights.held_types is not None:
                    held = (labels, type_logits, weights.held_types.to(code.device))
                else:
                    types = type_weight(weights.shared_types.to(code.device), covariates[:, 0], labels, type_logits)
            elif not classifying and labels is not None and weights.held_types is not None:
                # an embedder's cells labelled by their clusters (batch_counterparts): every cell's group is known
                held = (labels, None, weights.held_types.to(code.device))
            adversarial = self._adversarial(logits, covariates[:, :self._told], code.detach(), types, held)
        if classifying:
            scale = weights.classification * measured if gradient_scale is not None else 1.0
            logits = self.classifier(_ScaledGradient.apply(code, scale))
            classification = F.cross_entropy(logits, labels.clamp_min(0), reduction="none") * (labels >= 0)
        outputs = self.decoder(z, covariates, values, self._gene_offset(covariates))
        reconstruction = self.likelihood.negative_log_likelihood(outputs, x)
        return LossTerms(reconstruction, self._kl(q), adversarial, classification)

    def _adversarial(self, logits, labels, code, types=None, held=None):
        """Each cell's cross-entropy of the adversary's guess of each covariate, asked among the categories its
        neighbours hold (:func:`neighbourhood_losses`) and weighted by :func:`shared_weight` (and for the first
        covariate by ``types``, :func:`type_weight`, where given); ``held`` (the cell types, the classifier's logits
        and ``held_types``): the first covariate's asked among the batches that hold the cell's type and its
        neighbours hold (:func:`held_type_losses`)."""
        neighbours = nearest_codes(code)
        weights = _shared_weights(neighbours, labels, code)
        if types is not None:
            weights = torch.cat([weights[:, :1] * types[:, None], weights[:, 1:]], dim=1)
        parts, columns = logits.split(self.n_categories[:self._told], dim=1), labels.unbind(dim=1)
        first = [held_type_losses(parts[0], columns[0], *held, neighbours=neighbours)] if held is not None else []
        losses = first + [neighbourhood_losses(part, column, neighbours)
                          for part, column in zip(parts[len(first):], columns[len(first):], strict=True)]
        return (torch.stack(losses, dim=1) * weights).sum(dim=1)


# saved weights' keys renamed since, old prefix -> new (saves from before still load)
_RENAMED_KEYS = {"decoder.output.": "decoder.heads.mean.", "encoder.batch_offsets.": "encoder.covariate_offsets.",
                 "decoder.batch_offsets.": "decoder.covariate_offsets."}


def renamed_keys(state_dict, prefix=""):
    """``state_dict`` with the keys of older versions of the models renamed to today's.

    Parameters
    ----------
    state_dict : dict of str to torch.Tensor
    prefix : str, default=""
        The model's prefix in ``state_dict`` (when it is a part of a larger module).

    Returns
    -------
    dict of str to torch.Tensor

    Examples
    --------
    >>> import torch
    >>> from skvae.nn.models import renamed_keys
    >>> list(renamed_keys({"decoder.batch_offsets.0.weight": torch.zeros(2, 3)}))
    ['decoder.covariate_offsets.0.weight']
    """
    renamed = {}
    for key, value in state_dict.items():
        for old, new in _RENAMED_KEYS.items():
            if key.startswith(prefix + old):
                key = prefix + new + key[len(prefix + old):]
                break
        renamed[key] = value
    return renamed


def _renamed_keys_hook(module, state_dict, prefix, *args):
    renamed = renamed_keys(state_dict, prefix)
    if list(renamed) != list(state_dict):
        state_dict.clear()
        state_dict.update(renamed)


class Autoencoder(_LatentModel):
    """Deterministic autoencoder: one encoder branch, no KL term.

    Parameters
    ----------
    n_features : int
        Input and output width (genes).
    n_components : int
        Latent size.
    hidden_layer_sizes : sequence of int
        Encoder widths, input side first; the decoder mirrors them.
    likelihood : torch.nn.Module, default=None
        A likelihood of :mod:`skvae.nn.likelihoods` for ``n_features`` genes;
        None means :class:`~skvae.nn.likelihoods.Gaussian`.
    input_activation : bool, default=False
        Follow the encoder's input layer with the hidden layers' activation (see
        :class:`~skvae.nn.layers.Encoder`); by default it is linear.
    batch_norm : bool, default=False
        Batch normalisation in the hidden layers (see :func:`~skvae.nn.layers.linear_stack`).
    dropout : float, default=0.0
        Dropout after the hidden layers' ReLUs.
    n_categories : sequence of int, default=()
        Condition on each cell's categorical covariates (its batch: sample, donor,
        technology; one entry per covariate, its number of categories): the decoder
        takes them in every hidden layer, so the code need not carry them. The
        methods take them as ``covariates``, an int64 tensor of shape (n_samples,
        n_covariates).
    n_continuous : int, default=0
        Condition on this many continuous covariates per cell (percent
        mitochondrial counts, cell-cycle scores) as on categorical ones: each
        hidden layer of the decoder adds a linear function of them. The model
        standardises them itself (``continuous_inputs``, by the cells it is
        trained on). The methods take them as ``continuous``, a float tensor of
        shape (n_samples, n_continuous).
    encode_batch : bool, default=False
        The encoder takes the covariates too (with ``n_categories`` or
        ``n_continuous``); by default it sees the expression only, so cells of a
        batch never seen embed as they are.
    adversary : bool, default=False
        With a first covariate of more than one category: a small classifier
        learns to tell each cell's category of the first covariate (the batch)
        from its code (the posterior mean), and the encoder learns to defeat it
        through a reversed gradient, where the cell's neighbourhood in the
        minibatch is shared with other categories (``LossTerms.adversarial``).
        How strongly is the training step's (``weights`` of :meth:`loss`).
    n_classes : int, default=0
        With more than 0: a cell-type classifier (a linear map from the code to
        ``n_classes`` logits), learned from the labelled cells
        of each minibatch (``labels`` of :meth:`loss`; -1 for unlabelled) with the
        rest of the model, so that the codes separate the labelled types; how
        strongly it shapes the code is the training step's (``weights``).
    gene_factors : bool, default=False
        With ``n_categories`` and a count likelihood: one log factor per gene
        and category (``gene_offsets``, 0 at first) is added to the decoder's
        output, so each category multiplies each gene's expected counts, and
        the decoder's hidden layers take no category; the encoder reads the
        counts divided by the cell's factors (taken as constants: the
        reconstruction alone learns them), so the methods need ``covariates``
        (``encode_batch`` is then True).

    Examples
    --------
    >>> import torch
    >>> from skvae.nn.models import Autoencoder
    >>> module = Autoencoder(50, 2, (16, 8))
    >>> x = torch.randn(4, 50)
    >>> module.embed(x).shape, module.loss(x).reconstruction.shape
    (torch.Size([4, 2]), torch.Size([4]))
    """

    branches = ("code",)

    def _mean_code(self, q):
        return q["code"]

    def _sample_code(self, q, generator):
        return q["code"]

    def _kl(self, q):
        return q["code"].new_zeros(q["code"].shape[0])


class VariationalAutoencoder(_LatentModel):
    """Gaussian VAE with separate branches for the posterior mean and log-variance.

    Parameters
    ----------
    n_features : int
        Input and output width (genes).
    n_components : int
        Latent size.
    hidden_layer_sizes : sequence of int
        Encoder widths, input side first; the decoder mirrors them.
    likelihood : torch.nn.Module, default=None
        A likelihood of :mod:`skvae.nn.likelihoods` for ``n_features`` genes;
        None means :class:`~skvae.nn.likelihoods.Gaussian`.
    input_activation, batch_norm, dropout, n_categories, n_continuous, encode_batch, adversary, n_classes, gene_factors
        As for :class:`Autoencoder`.

    Examples
    --------
    >>> import torch
    >>> from skvae.nn.models import VariationalAutoencoder
    >>> module = VariationalAutoencoder(50, 2, (16, 8))
    >>> terms = module.loss(torch.randn(4, 50), generator=torch.Generator().manual_seed(0))
    >>> bool((terms.kl >= 0).all())
    True
    """

    branches = ("mu", "logvar")

    def _mean_code(self, q):
        return q["mu"]

    def _sample_code(self, q, generator):
        noise = torch.randn(q["mu"].shape, generator=generator, device=q["mu"].device, dtype=q["mu"].dtype)
        return q["mu"] + noise * (0.5 * q["logvar"]).exp()

    def _kl(self, q):
        return gaussian_kl(q["mu"], q["logvar"])

    def sample_prior(self, n_samples, generator=None):
        """Draw latent codes from the standard normal prior.

        Parameters
        ----------
        n_samples : int
        generator : torch.Generator, default=None

        Returns
        -------
        torch.Tensor of shape (n_samples, n_components)
        """
        return torch.randn(n_samples, self.n_components, generator=generator)


class SparseCodingVAE(_LatentModel):
    """Variational sparse coding: a spike-and-slab posterior (Tonolini et al., 2020).

    Parameters
    ----------
    n_features, n_components, hidden_layer_sizes
        As for :class:`VariationalAutoencoder`.
    prior_activity : float
        Prior probability that a latent dimension is active.
    spike_sharpness : float
        Sharpness ``c`` of the sigmoid that relaxes the spike selection.
    **options
        ``likelihood``, ``input_activation``, ``batch_norm``, ``dropout``, ``n_categories``, ``n_continuous``,
        ``encode_batch``, ``adversary``, ``n_classes`` and ``gene_factors``, as for :class:`VariationalAutoencoder`.

    Examples
    --------
    >>> import torch
    >>> from skvae.nn.models import SparseCodingVAE
    >>> module = SparseCodingVAE(50, 3, (16, 8), prior_activity=0.5, spike_sharpness=50.0)
    >>> module.spike_probability(torch.randn(4, 50)).shape
    torch.Size([4, 3])
    """

    branches = ("mu", "logvar", "logspike")

    def __init__(self, n_features, n_components, hidden_layer_sizes, *, prior_activity, spike_sharpness, **options):
        super().__init__(n_features, n_components, hidden_layer_sizes, **options)
        self.prior_activity = prior_activity
        self.spike_sharpness = spike_sharpness

    def _posterior(self, x, covariates, values):
        """Posterior parameters of each cell: slab ``"mu"``, ``"logvar"`` and ``"spike"`` probability."""
        q = super()._posterior(x, covariates, values)
        # log spike probability must be <= 0
        logspike = -torch.relu(-q.pop("logspike"))
        q["spike"] = logspike.exp().clamp(_SPIKE_EPS, 1.0 - _SPIKE_EPS)
        return q

    def spike_probability(self, x, covariates=None, continuous=None):
        """Posterior probability that each latent dimension is active.

        Parameters
        ----------
        x : torch.Tensor of shape (n_samples, n_features) or ShiftedSparseRows
        covariates : torch.Tensor of shape (n_samples, n_covariates), int64, default=None
            Each cell's categories; read only by an encoder that takes them.
        continuous : torch.Tensor of shape (n_samples, n_continuous), default=None
            Each cell's continuous covariates; read only by an encoder that takes them.

        Returns
        -------
        torch.Tensor of shape (n_samples, n_components)
        """
        return self.posterior(x, covariates, continuous)["spike"]

    def _mean_code(self, q):
        return q["spike"] * q["mu"]

    def _sample_code(self, q, generator):
        mu = q["mu"]
        noise = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        eta = torch.rand(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        selection = torch.sigmoid(self.spike_sharpness * (eta + q["spike"] - 1.0))
        return selection * (mu + noise * (0.5 * q["logvar"]).exp())

    def _kl(self, q):
        return spike_and_slab_kl(q["mu"], q["logvar"], q["spike"], self.prior_activity)

    def sample_prior(self, n_samples, generator=None):
        """Draw latent codes from the spike-and-slab prior.

        Parameters
        ----------
        n_samples : int
        generator : torch.Generator, default=None

        Returns
        -------
        torch.Tensor of shape (n_samples, n_components)
        """
        shape = (n_samples, self.n_components)
        active = torch.rand(shape, generator=generator) < self.prior_activity
        return active * torch.randn(shape, generator=generator)
