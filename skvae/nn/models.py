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
from .layers import Decoder, Encoder
from .likelihoods import Gaussian

# Spike probabilities are kept inside (eps, 1 - eps) so the KL's logarithms
# and their gradients stay finite.
_SPIKE_EPS = 1e-6
# Hidden width of the adversarial batch classifier (two layers), as scvi-tools' adversarial classifier
_ADVERSARY_WIDTH = 32
# Neighbours in the minibatch that decide whether a cell's neighbourhood is shared with other batches
_SHARED_NEIGHBOURS = 5


def shared_weight(codes, batch, k=_SHARED_NEIGHBOURS):
    """How far each cell's neighbourhood in the minibatch is shared with other batches, in [0, 1].

    The share of a cell's ``k`` nearest codes (among the minibatch's others) from another batch, over the share
    expected if the batches mixed perfectly (the other batches' share of the minibatch), capped at 1: 0 for a cell
    whose neighbours all come from its own batch (a population of its batch alone, or one not yet mixed), 1 for one
    in a well mixed neighbourhood.

    Parameters
    ----------
    codes : torch.Tensor of shape (n_samples, n_components)
    batch : torch.Tensor of shape (n_samples,), int64
    k : int, default=5

    Returns
    -------
    torch.Tensor of shape (n_samples,)

    Examples
    --------
    >>> import torch
    >>> from skvae.nn.models import shared_weight
    >>> codes = torch.tensor([[0.0], [0.1], [0.2], [0.3], [5.0], [5.1]])
    >>> batch = torch.tensor([0, 1, 0, 1, 0, 0])  # the last two: a population of batch 0 alone
    >>> shared_weight(codes, batch, k=1)
    tensor([1., 1., 1., 1., 0., 0.])
    """
    n = codes.shape[0]
    k = min(k, n - 1)
    if k < 1:
        return codes.new_zeros(n)
    distances = torch.cdist(codes, codes)
    distances.fill_diagonal_(float("inf"))
    neighbours = distances.topk(k, largest=False).indices
    other = (batch[neighbours] != batch[:, None]).float().mean(dim=1)
    own = torch.bincount(batch)[batch].float() - 1  # the cell's batch in the minibatch, but itself
    expected = 1.0 - own / (n - 1)
    return torch.where(expected > 0, (other / expected.clamp_min(1e-12)).clamp(max=1.0), torch.zeros_like(other))


@dataclass
class LossTerms:
    """Per-cell loss terms; the training objective is ``reconstruction + beta * kl`` (+ ``adversarial``).

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
        (:func:`shared_weight`), in training with ``batch_adversary`` only: the
        classifier descends it, and the encoder ascends it through a reversed
        gradient scaled by ``batch_adversary`` times the size of the
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

    def total(self, kl_weight):
        """The per-cell objective ``reconstruction + kl_weight * kl``, plus ``adversarial`` when there is one.

        Parameters
        ----------
        kl_weight : float

        Returns
        -------
        torch.Tensor of shape (n_samples,)
        """
        total = self.reconstruction + kl_weight * self.kl
        return total if self.adversarial is None else total + self.adversarial


class _ReversedGradient(Function):
    """The identity forward; minus the gradient times ``scale`` backward (Ganin & Lempitsky, 2015)."""

    @staticmethod
    def forward(ctx, x, scale):
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad_output):
        return -ctx.scale * grad_output, None


class _LatentModel(nn.Module):
    """Encoder with named branches, decoder, likelihood, and the loss template shared by all models."""

    branches = ()

    def __init__(self, n_features, n_components, hidden_layer_sizes, *, likelihood=None, input_activation=False,
                 batch_norm=False, dropout=0.0, n_batches=0, encode_batch=False, batch_adversary=0.0):
        super().__init__()
        options = {"batch_norm": batch_norm, "dropout": dropout}
        self.n_components = n_components
        self.n_batches, self.encode_batch = n_batches, bool(encode_batch and n_batches)
        self.encoder = Encoder(n_features, hidden_layer_sizes, n_components, self.branches, **options,
                               n_batches=n_batches if self.encode_batch else 0, input_activation=input_activation)
        self.likelihood = Gaussian() if likelihood is None else likelihood
        self.decoder = Decoder(n_components, hidden_layer_sizes, n_features, self.likelihood.heads, **options,
                               n_batches=n_batches)
        # a classifier of the batch from the code, which the encoder learns to defeat: only where batches differ
        self.batch_adversary = float(batch_adversary) if n_batches > 1 else 0.0
        # the size of the reconstruction's gradient per cell at the code, a running mean over training steps
        # (None before the first): it scales the reversed gradient, so that batch_adversary weighs it against
        # the reconstruction whatever the depth and number of genes
        self.reconstruction_gradient = None
        if self.batch_adversary:
            self.adversary = nn.Sequential(nn.Linear(n_components, _ADVERSARY_WIDTH), nn.ReLU(),
                                           nn.Linear(_ADVERSARY_WIDTH, _ADVERSARY_WIDTH), nn.ReLU(),
                                           nn.Linear(_ADVERSARY_WIDTH, n_batches))

    def posterior(self, x, batch=None):
        """Posterior parameters of each cell.

        Parameters
        ----------
        x : torch.Tensor of shape (n_samples, n_features) or ShiftedSparseRows
        batch : torch.Tensor of shape (n_samples,), int64, default=None
            Each cell's batch; read only by an encoder that takes it (``encode_batch``).

        Returns
        -------
        dict of str to torch.Tensor of shape (n_samples, n_components)
            One entry per encoder branch: ``"code"``; ``"mu"`` and ``"logvar"``; for
            the sparse coding model also ``"spike"`` (probabilities).
        """
        return self.encoder(self.likelihood.encoder_input(x), batch if self.encode_batch else None)

    def decode(self, z, batch=None):
        """Expression decoded from latent codes: the likelihood's mean.

        Parameters
        ----------
        z : torch.Tensor of shape (n_samples, n_components)
        batch : torch.Tensor of shape (n_samples,), int64, default=None
            The batch to decode each code as measured in (a model built with ``n_batches``).

        Returns
        -------
        torch.Tensor of shape (n_samples, n_features)
            The reconstruction (Gaussian) or normalised expression, proportions
            times 1e4 (count likelihoods).
        """
        return self.likelihood.mean(self.decoder(z, batch))

    def embed(self, x, batch=None):
        """Deterministic latent code of each cell (the posterior mean).

        Parameters
        ----------
        x : torch.Tensor of shape (n_samples, n_features) or ShiftedSparseRows
        batch : torch.Tensor of shape (n_samples,), int64, default=None
            Each cell's batch; read only by an encoder that takes it.

        Returns
        -------
        torch.Tensor of shape (n_samples, n_components)
        """
        return self._mean_code(self.posterior(x, batch))

    def loss(self, x, batch=None, *, generator=None, deterministic=False):
        """Per-cell loss terms of a minibatch.

        Parameters
        ----------
        x : torch.Tensor of shape (n_samples, n_features) or ShiftedSparseRows
        batch : torch.Tensor of shape (n_samples,), int64, default=None
            Each cell's batch, for a model built with ``n_batches``.
        generator : torch.Generator, default=None
            Source of the reparameterisation noise.
        deterministic : bool, default=False
            Decode the posterior mean instead of a random draw.

        Returns
        -------
        LossTerms
        """
        q = self.posterior(x, batch)
        z = self._mean_code(q) if deterministic else self._sample_code(q, generator)
        adversarial = None
        if self.batch_adversary and self.training and batch is not None:
            z = z.view_as(z)  # a node of its own, whose gradient is the reconstruction's alone
            if z.requires_grad:
                z.register_hook(self._measure_reconstruction_gradient)
            # the embedding itself (the posterior mean) is what should not tell the batches apart, where its
            # neighbourhood is shared: a population of one batch alone is left where it is
            code = self._mean_code(q)
            scale = self.batch_adversary * (self.reconstruction_gradient or 0.0)
            logits = self.adversary(_ReversedGradient.apply(code, scale))
            adversarial = F.cross_entropy(logits, batch, reduction="none") * shared_weight(code.detach(), batch)
        reconstruction = self.likelihood.negative_log_likelihood(self.decoder(z, batch), x)
        return LossTerms(reconstruction, self._kl(q), adversarial)

    def _measure_reconstruction_gradient(self, grad):
        # per cell: the loss is a mean over the minibatch's cells (of every process in a data-parallel run, each
        # with an equal share), so each row's gradient is 1/n of the cell's own
        processes = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        size = float(grad.detach().norm(dim=1).pow(2).mean().sqrt()) * grad.shape[0] * processes
        if math.isfinite(size):
            previous = self.reconstruction_gradient
            self.reconstruction_gradient = size if previous is None else 0.9 * previous + 0.1 * size


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
    n_batches : int, default=0
        Condition on each cell's batch (one of ``n_batches``): the decoder takes it
        in every hidden layer, so the code need not carry it.
    encode_batch : bool, default=False
        The encoder takes the batch too (with ``n_batches`` > 0); by default it sees
        the expression only, so cells of a batch never seen embed as they are.
    batch_adversary : float, default=0.0
        With ``n_batches`` > 1 and a weight > 0: a small classifier learns to tell
        each cell's batch from its code (the posterior mean), and the encoder learns
        to defeat it through a reversed gradient, where the cell's neighbourhood in
        the minibatch is shared with other batches (``LossTerms.adversarial``). The
        reversed gradient is this weight times the size of the reconstruction's
        gradient per cell at the code (a running mean, ``reconstruction_gradient``),
        so the weight means the same at any depth and number of genes.

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
    input_activation, batch_norm, dropout, n_batches, encode_batch, batch_adversary
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
    prior_spike : float
        Prior probability that a latent dimension is active.
    sharpness : float
        Sharpness ``c`` of the sigmoid that relaxes the spike selection.
    **options
        ``likelihood``, ``input_activation``, ``batch_norm``, ``dropout``, ``n_batches``,
        ``encode_batch`` and ``batch_adversary``, as for :class:`VariationalAutoencoder`.

    Examples
    --------
    >>> import torch
    >>> from skvae.nn.models import SparseCodingVAE
    >>> module = SparseCodingVAE(50, 3, (16, 8), prior_spike=0.5, sharpness=50.0)
    >>> module.spike_probability(torch.randn(4, 50)).shape
    torch.Size([4, 3])
    """

    branches = ("mu", "logvar", "logspike")

    def __init__(self, n_features, n_components, hidden_layer_sizes, *, prior_spike, sharpness, **options):
        super().__init__(n_features, n_components, hidden_layer_sizes, **options)
        self.prior_spike = prior_spike
        self.sharpness = sharpness

    def posterior(self, x, batch=None):
        """Posterior parameters of each cell: slab ``"mu"``, ``"logvar"`` and ``"spike"`` probability.

        Parameters
        ----------
        x : torch.Tensor of shape (n_samples, n_features) or ShiftedSparseRows
        batch : torch.Tensor of shape (n_samples,), int64, default=None
            Each cell's batch; read only by an encoder that takes it.

        Returns
        -------
        dict of str to torch.Tensor of shape (n_samples, n_components)
        """
        q = super().posterior(x, batch)
        # log spike probability must be <= 0
        logspike = -torch.relu(-q.pop("logspike"))
        q["spike"] = logspike.exp().clamp(_SPIKE_EPS, 1.0 - _SPIKE_EPS)
        return q

    def spike_probability(self, x, batch=None):
        """Posterior probability that each latent dimension is active.

        Parameters
        ----------
        x : torch.Tensor of shape (n_samples, n_features) or ShiftedSparseRows
        batch : torch.Tensor of shape (n_samples,), int64, default=None
            Each cell's batch; read only by an encoder that takes it.

        Returns
        -------
        torch.Tensor of shape (n_samples, n_components)
        """
        return self.posterior(x, batch)["spike"]

    def _mean_code(self, q):
        return q["spike"] * q["mu"]

    def _sample_code(self, q, generator):
        mu = q["mu"]
        noise = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        eta = torch.rand(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        selection = torch.sigmoid(self.sharpness * (eta + q["spike"] - 1.0))
        return selection * (mu + noise * (0.5 * q["logvar"]).exp())

    def _kl(self, q):
        return spike_and_slab_kl(q["mu"], q["logvar"], q["spike"], self.prior_spike)

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
        active = torch.rand(shape, generator=generator) < self.prior_spike
        return active * torch.randn(shape, generator=generator)
