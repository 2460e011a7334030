"""Reconstruction likelihoods: what the decoder's output says about a cell's observed row.

One class per distribution. A likelihood names the decoder heads it reads (``heads``),
turns the observed row into the encoder's input (``encoder_input``), gives the
per-cell negative log-likelihood (``negative_log_likelihood``) and the decoded
expression (``mean``). The models in :mod:`skvae.nn.models` ask it for these and
know nothing of the distribution.

- :class:`Gaussian`: the summed squared error of the row itself (a Gaussian of
  variance 1/2, up to a constant), with the exact sparse fast path.
- Count likelihoods (:class:`Poisson`, :class:`NegativeBinomial`,
  :class:`ZeroInflatedNegativeBinomial`) model raw counts with the cell's library
  size ``l`` (its observed total): the encoder sees ``log1p(x / l * 1e4)``; the
  decoder gives per-gene proportions ``rho`` (a softmax) and the mean is ``l * rho``.
  A new count likelihood is one subclass of :class:`CountLikelihood` with its
  elementwise ``log_prob``.

References
----------
R. Lopez, J. Regier, M. B. Cole, M. I. Jordan, N. Yosef. "Deep generative modeling
for single-cell transcriptomics". Nature Methods 15, 1053-1058 (2018).
G. Eraslan, L. M. Simon, M. Mircea, N. S. Mueller, F. J. Theis. "Single-cell RNA-seq
denoising using a deep count autoencoder". Nature Communications 10, 390 (2019).
"""

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd import Function

from .sparse import ShiftedSparseRows

# Counts per cell of the normalised scale: the encoder's input and inverse_transform's output
# are on the scale of LogNormalizer (x / total * 1e4) before and after its log.
NORMALIZED_TOTAL = 1e4
# |log theta| of the NB dispersions beyond which loaded weights are damaged: exp(50) is a Poisson, exp(-50) nothing
LOG_DISPERSION_LIMIT = 50.0


def squared_error(reconstruction, target):
    """Summed squared error of each cell over its features.

    Parameters
    ----------
    reconstruction, target : torch.Tensor of shape (n_samples, n_features)

    Returns
    -------
    torch.Tensor of shape (n_samples,)

    Examples
    --------
    >>> import torch
    >>> from skvae.nn.likelihoods import squared_error
    >>> squared_error(torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 0.0]]))
    tensor([5.])
    """
    return (reconstruction - target).square().sum(dim=-1)


def linear_squared_error(layer, hidden, x):
    """Per-row summed squared error of ``layer(hidden)`` against dense or shifted sparse rows ``x``.

    Parameters
    ----------
    layer : torch.nn.Linear
        The decoder's output layer.
    hidden : torch.Tensor of shape (n_rows, layer.in_features)
    x : torch.Tensor of shape (n_rows, layer.out_features) or ShiftedSparseRows
        The targets.

    Returns
    -------
    torch.Tensor of shape (n_rows,)

    Examples
    --------
    >>> import numpy as np
    >>> import scipy.sparse as sp
    >>> import torch
    >>> from skvae.nn.likelihoods import linear_squared_error
    >>> from skvae.nn.sparse import ShiftedSparseRows
    >>> layer = torch.nn.Linear(3, 4).double()
    >>> hidden = torch.randn(2, 3, dtype=torch.float64)
    >>> block = sp.random(2, 4, density=0.5, format="csr", random_state=0)
    >>> shift = np.full(4, -0.5)
    >>> sparse = linear_squared_error(layer, hidden, ShiftedSparseRows.from_scipy(block, shift, dtype=np.float64))
    >>> dense = linear_squared_error(layer, hidden, torch.from_numpy(block.toarray() + shift))
    >>> torch.allclose(sparse, dense)
    True
    """
    if isinstance(x, ShiftedSparseRows):
        return x.linear_squared_error(hidden, layer.weight, layer.bias)
    return squared_error(layer(hidden), x)


def library_size(x):
    """Observed total of each row of dense or shifted sparse rows.

    Parameters
    ----------
    x : torch.Tensor of shape (n_rows, n_features) or ShiftedSparseRows

    Returns
    -------
    torch.Tensor of shape (n_rows,)

    Examples
    --------
    >>> import torch
    >>> from skvae.nn.likelihoods import library_size
    >>> library_size(torch.tensor([[1.0, 3.0], [0.0, 2.0]]))
    tensor([4., 2.])
    """
    return x.row_sums if isinstance(x, ShiftedSparseRows) else x.sum(dim=1)


class Gaussian(nn.Module):
    """Summed squared error of the row: skvae's original loss, for scaled expression.

    The encoder sees the row as it is; the decoder's ``"mean"`` head is the
    reconstruction. Sparse rows use the exact Gram-form squared error
    (:meth:`skvae.nn.sparse.ShiftedSparseRows.linear_squared_error`).

    Examples
    --------
    >>> import torch
    >>> from skvae.nn.likelihoods import Gaussian
    >>> from skvae.nn.layers import DecoderOutputs
    >>> outputs = DecoderOutputs(torch.zeros(4, 2), torch.nn.ModuleDict({"mean": torch.nn.Linear(2, 3)}))
    >>> Gaussian().negative_log_likelihood(outputs, torch.zeros(4, 3)).shape
    torch.Size([4])
    """

    counts = False
    heads = ("mean",)

    def __init__(self):
        super().__init__()  # no per-gene parameters

    def encoder_input(self, x):
        """The encoder's input: the row itself.

        Parameters
        ----------
        x : torch.Tensor of shape (n_rows, n_features) or ShiftedSparseRows

        Returns
        -------
        torch.Tensor or ShiftedSparseRows
        """
        return x

    def negative_log_likelihood(self, outputs, x):
        """Summed squared error of each row.

        Parameters
        ----------
        outputs : skvae.nn.layers.DecoderOutputs
            The decoder's outputs: its last hidden layer and ``"mean"`` head, fused
            into the exact squared error for sparse rows.
        x : torch.Tensor of shape (n_rows, n_features) or ShiftedSparseRows

        Returns
        -------
        torch.Tensor of shape (n_rows,)
        """
        return linear_squared_error(outputs.heads["mean"], outputs.hidden, x)

    def mean(self, outputs):
        """The reconstruction.

        Parameters
        ----------
        outputs : dict of str to torch.Tensor of shape (n_rows, n_features)

        Returns
        -------
        torch.Tensor of shape (n_rows, n_features)
        """
        return outputs["mean"]


class CountLikelihood(nn.Module):
    """Base of the count likelihoods; a subclass defines ``log_prob`` and its parameters.

    The decoder's ``"scale"`` head gives logits of per-gene proportions; with the
    cell's library size ``l`` the mean is ``mu = l * softmax(scale)``.

    The log-likelihood of a sparse row is computed without densifying it:
    ``sum_g log p(0 | theta_g) + sum_{x_g > 0} [log p(x_g | theta_g) - log p(0 | theta_g)]``,
    a dense pass over genes for the zero term and a gather at the stored entries.

    Parameters
    ----------
    n_features : int
        Number of genes.

    Examples
    --------
    A new count likelihood defines ``log_prob``; the sparse and dense sums come from here:

    >>> import torch
    >>> from skvae.nn.likelihoods import CountLikelihood
    >>> class Geometric(CountLikelihood):
    ...     def log_prob(self, x, *, log_mu):  # mean mu = (1 - p) / p
    ...         return x * (log_mu - torch.logaddexp(torch.zeros(()), log_mu)) - torch.logaddexp(torch.zeros(()), log_mu)
    >>> outputs = {"scale": torch.zeros(4, 3)}
    >>> Geometric(3).negative_log_likelihood(outputs, torch.ones(4, 3)).shape
    torch.Size([4])
    """

    counts = True
    heads = ("scale",)

    def __init__(self, n_features):
        super().__init__()
        self.n_features = n_features

    def encoder_input(self, x):
        """``log1p(x / library * 1e4)`` of each row, sparse rows kept sparse.

        A row with no counts maps to zeros.

        Parameters
        ----------
        x : torch.Tensor of shape (n_rows, n_features) or ShiftedSparseRows
            Counts.

        Returns
        -------
        torch.Tensor or ShiftedSparseRows
        """
        row_scale = NORMALIZED_TOTAL / library_size(x).clamp_min(1.0)
        if isinstance(x, ShiftedSparseRows):
            return x.log1p_scaled(row_scale)
        return torch.log1p(x * row_scale[:, None])

    def distribution(self, outputs, offset, at=None):
        """Parameters of the per-gene distributions, for :meth:`log_prob`.

        Parameters
        ----------
        outputs : dict of str to torch.Tensor of shape (n_rows, n_features)
            The decoder heads' outputs.
        offset : torch.Tensor of shape (n_rows,)
            ``log l - logsumexp(scale)`` of each row, so that ``log mu = scale + offset``.
        at : tuple of two torch.Tensor of shape (n_entries,), default=None
            Rows and columns: the parameters at these entries only. None: at
            every entry, as tensors broadcastable to (n_rows, n_features).

        Returns
        -------
        dict of str to torch.Tensor
            Keyword arguments of :meth:`log_prob`; always ``log_mu``, the log mean.
        """
        if at is None:
            return {"log_mu": outputs["scale"] + offset[:, None]}
        return {"log_mu": outputs["scale"][at] + offset[at[0]]}

    def log_prob(self, x, **params):
        """Elementwise log-probability of counts ``x``; defined by each subclass.

        Parameters
        ----------
        x : torch.Tensor
            Counts, broadcastable against ``params``.
        **params : torch.Tensor
            The output of :meth:`distribution`.

        Returns
        -------
        torch.Tensor
        """
        raise NotImplementedError

    def log_prob_ratio_to_zero(self, x, **params):
        """Elementwise ``log p(x) - log p(0)``: a stored entry's part of a sparse row's likelihood.

        Subclasses may override it with a cheaper closed form.

        Parameters
        ----------
        x : torch.Tensor
            Counts, broadcastable against ``params``.
        **params : torch.Tensor
            The output of :meth:`distribution`.

        Returns
        -------
        torch.Tensor
        """
        return self.log_prob(x, **params) - self.log_prob(x.new_zeros(()), **params)

    def zero_log_prob_sum(self, outputs, offset):
        """``sum_g log p(0 | theta_g)`` of each row: the log-probability of an all-zero row.

        Subclasses may override it with a cheaper closed form.

        Parameters
        ----------
        outputs : dict of str to torch.Tensor of shape (n_rows, n_features)
        offset : torch.Tensor of shape (n_rows,)

        Returns
        -------
        torch.Tensor of shape (n_rows,)
        """
        params = self.distribution(outputs, offset)
        return self.log_prob(offset.new_zeros(()), **params).expand(len(offset), -1).sum(dim=-1)

    def negative_log_likelihood(self, outputs, x):
        """Negative log-likelihood of each row of counts.

        Parameters
        ----------
        outputs : mapping of str to torch.Tensor of shape (n_rows, n_features)
            The decoder heads' outputs, by name.
        x : torch.Tensor of shape (n_rows, n_features) or ShiftedSparseRows
            Counts.

        Returns
        -------
        torch.Tensor of shape (n_rows,)
        """
        log_library = library_size(x).clamp_min(1.0).log()
        if isinstance(x, ShiftedSparseRows):
            return self.sparse_negative_log_likelihood(outputs, log_library, *x.coordinates())
        offset = log_library - torch.logsumexp(outputs["scale"], dim=-1)
        return -self.log_prob(x, **self.distribution(outputs, offset)).sum(dim=-1)

    def sparse_negative_log_likelihood(self, outputs, log_library, rows, columns, counts):
        """Negative log-likelihood of each row from its stored entries: the dense zero term plus a correction.

        Subclasses may override it with a fused computation.

        Parameters
        ----------
        outputs : dict of str to torch.Tensor of shape (n_rows, n_features)
            The decoder heads' outputs.
        log_library : torch.Tensor of shape (n_rows,)
            Log library size of each row (at least 1).
        rows, columns : torch.Tensor of shape (n_stored,), int64
            Where the stored counts are.
        counts : torch.Tensor of shape (n_stored,)
            The stored counts; every other entry is 0.

        Returns
        -------
        torch.Tensor of shape (n_rows,)
        """
        offset = log_library - torch.logsumexp(outputs["scale"], dim=-1)
        stored = self.distribution(outputs, offset, at=(rows, columns))
        return -self.zero_log_prob_sum(outputs, offset).index_add(0, rows, self.log_prob_ratio_to_zero(counts, **stored))

    def mean(self, outputs):
        """Expected normalised expression: proportions times 1e4.

        Parameters
        ----------
        outputs : dict of str to torch.Tensor of shape (n_rows, n_features)

        Returns
        -------
        torch.Tensor of shape (n_rows, n_features)
        """
        return F.softmax(outputs["scale"], dim=-1) * NORMALIZED_TOTAL


class Poisson(CountLikelihood):
    """Poisson counts with mean ``l * rho``.

    Parameters
    ----------
    n_features : int
        Number of genes.

    Examples
    --------
    >>> import torch
    >>> from skvae.nn.likelihoods import Poisson
    >>> Poisson(2).log_prob(torch.tensor([0.0, 2.0]), log_mu=torch.tensor([0.0, 0.0]))
    tensor([-1.0000, -1.6931])
    """

    def log_prob(self, x, *, log_mu):
        """Elementwise ``log Poisson(x | exp(log_mu))``.

        Parameters
        ----------
        x, log_mu : torch.Tensor

        Returns
        -------
        torch.Tensor
        """
        return x * log_mu - log_mu.exp() - torch.lgamma(x + 1.0)

    def log_prob_ratio_to_zero(self, x, *, log_mu):
        """Elementwise ``log p(x) - log p(0) = x log mu - log x!``.

        Parameters
        ----------
        x, log_mu : torch.Tensor

        Returns
        -------
        torch.Tensor
        """
        return x * log_mu - torch.lgamma(x + 1.0)

    def zero_log_prob_sum(self, outputs, offset):
        """``-sum_g mu_g`` of each row.

        Parameters
        ----------
        outputs : dict of str to torch.Tensor of shape (n_rows, n_features)
        offset : torch.Tensor of shape (n_rows,)

        Returns
        -------
        torch.Tensor of shape (n_rows,)
        """
        return -(outputs["scale"] + offset[:, None]).exp().sum(dim=-1)


class NegativeBinomial(CountLikelihood):
    """Negative binomial counts with mean ``l * rho`` and a learned dispersion per gene (or per gene and batch).

    With inverse dispersion ``theta`` the variance is ``mu + mu^2 / theta``
    (scVI's parameterisation); ``log theta`` starts at 0.

    Parameters
    ----------
    n_features : int
        Number of genes.
    dispersion_categories : int, default=0
        When > 0, a dispersion per gene and category of the first covariate
        (scVI's ``dispersion="gene-batch"``): the decoder's outputs then carry each
        row's covariates (``outputs.covariates``).

    Attributes
    ----------
    log_theta : torch.nn.Parameter of shape (n_features,), or (dispersion_categories, n_features)

    Examples
    --------
    >>> import torch
    >>> from skvae.nn.likelihoods import NegativeBinomial
    >>> nb = NegativeBinomial(1)
    >>> nb.log_prob(torch.tensor([0.0]), log_mu=torch.tensor([0.0]), log_theta=torch.tensor([0.0]))
    tensor([-0.6931])
    """

    def __init__(self, n_features, dispersion_categories=0):
        super().__init__(n_features)
        self.log_theta = nn.Parameter(torch.zeros((dispersion_categories, n_features) if dispersion_categories
                                                  else n_features))
        self.register_load_state_dict_pre_hook(_check_loaded_dispersion)

    def _log_theta(self, outputs, at):
        """``log theta`` of every row and gene (or of the entries ``at``), broadcastable as ``distribution`` says."""
        if self.log_theta.dim() == 1:
            return self.log_theta if at is None else self.log_theta[at[1]]
        covariates = getattr(outputs, "covariates", None)
        if covariates is None:
            raise ValueError("a dispersion per gene and category needs each row's covariates (outputs.covariates)")
        category = covariates[:, 0]
        return self.log_theta[category] if at is None else self.log_theta[category[at[0]], at[1]]

    def distribution(self, outputs, offset, at=None):
        """Parameters of the per-gene distributions: ``log_mu`` and ``log_theta``.

        Parameters
        ----------
        outputs : dict of str to torch.Tensor of shape (n_rows, n_features)
        offset : torch.Tensor of shape (n_rows,)
        at : tuple of two torch.Tensor of shape (n_entries,), default=None

        Returns
        -------
        dict of str to torch.Tensor
        """
        return {**super().distribution(outputs, offset, at), "log_theta": self._log_theta(outputs, at)}

    def log_prob(self, x, *, log_mu, log_theta):
        """Elementwise ``log NB(x | mean exp(log_mu), inverse dispersion exp(log_theta))``.

        Parameters
        ----------
        x, log_mu, log_theta : torch.Tensor

        Returns
        -------
        torch.Tensor
        """
        theta = log_theta.exp()
        log_theta_mu = torch.logaddexp(log_theta, log_mu)
        return (
            torch.lgamma(x + theta) - torch.lgamma(theta) - torch.lgamma(x + 1.0)
            + theta * (log_theta - log_theta_mu) + x * (log_mu - log_theta_mu)
        )

    def sparse_negative_log_likelihood(self, outputs, log_library, rows, columns, counts):
        """Negative log-likelihood of each sparse row, fused: a few passes over the genes, gradients written out.

        Parameters
        ----------
        outputs : dict of str to torch.Tensor of shape (n_rows, n_features)
        log_library : torch.Tensor of shape (n_rows,)
        rows, columns : torch.Tensor of shape (n_stored,), int64
            In CSR order: ``rows`` ascending (the per-row sums are segment sums).
        counts : torch.Tensor of shape (n_stored,)

        Returns
        -------
        torch.Tensor of shape (n_rows,)
        """
        if self.log_theta.dim() > 1:  # the fused computation takes one dispersion per gene
            return super().sparse_negative_log_likelihood(outputs, log_library, rows, columns, counts)
        return _NegativeBinomialSparseNLL.apply(outputs["scale"], log_library, self.log_theta, rows, columns, counts)


class ZeroInflatedNegativeBinomial(NegativeBinomial):
    """Negative binomial with extra zeros: a zero with probability ``sigmoid(dropout)``.

    The decoder's ``"dropout"`` head gives the logits of the extra zeros.

    Parameters
    ----------
    n_features : int
        Number of genes.
    dispersion_categories : int, default=0
        When > 0, a dispersion per gene and category of the first covariate, as
        :class:`NegativeBinomial`.

    Attributes
    ----------
    log_theta : torch.nn.Parameter of shape (n_features,), or (dispersion_categories, n_features)

    Examples
    --------
    >>> import torch
    >>> from skvae.nn.likelihoods import ZeroInflatedNegativeBinomial
    >>> zinb = ZeroInflatedNegativeBinomial(1)
    >>> zero = torch.tensor([0.0])
    >>> zinb.log_prob(zero, log_mu=zero, log_theta=zero, dropout_logits=zero).exp()  # 0.5 + 0.5 * 0.5
    tensor([0.7500])
    """

    heads = ("scale", "dropout")
    # the dropout mixes into every term, so the NB's fused likelihood does not apply
    sparse_negative_log_likelihood = CountLikelihood.sparse_negative_log_likelihood

    def distribution(self, outputs, offset, at=None):
        """Parameters of the per-gene distributions: ``log_mu``, ``log_theta``, ``dropout_logits``.

        Parameters
        ----------
        outputs : dict of str to torch.Tensor of shape (n_rows, n_features)
        offset : torch.Tensor of shape (n_rows,)
        at : tuple of two torch.Tensor of shape (n_entries,), default=None

        Returns
        -------
        dict of str to torch.Tensor
        """
        dropout_logits = outputs["dropout"] if at is None else outputs["dropout"][at]
        return {**super().distribution(outputs, offset, at), "dropout_logits": dropout_logits}

    def log_prob(self, x, *, log_mu, log_theta, dropout_logits):
        """Elementwise log-probability of the zero-inflated negative binomial.

        Parameters
        ----------
        x, log_mu, log_theta, dropout_logits : torch.Tensor

        Returns
        -------
        torch.Tensor
        """
        log_nb = super().log_prob(x, log_mu=log_mu, log_theta=log_theta)
        # log(pi + (1 - pi) NB(0)) for zeros, log((1 - pi) NB(x)) otherwise, with log(1 - pi) = -softplus(logit)
        return torch.where(x == 0, torch.logaddexp(dropout_logits, log_nb), log_nb) - F.softplus(dropout_logits)


# exp(x) = 2 ** (x log2(e)): torch's exp2 is several times faster than its exp on CPUs. Rounding x log2(e) adds a
# relative error of about |x| * 6e-8: nothing for the softmax's x = scale - max <= 0, whose large |x| are negligible terms.
_LOG2_E = 1.4426950408889634


def _row_sums(values, lengths):
    """Sum of the stored ``values`` of each row, with ``lengths`` stored values per row in CSR order."""
    return torch.segment_reduce(values, "sum", lengths=lengths)


class _NegativeBinomialSparseNLL(Function):
    """Per-row NB negative log-likelihood of sparse counts, ``log mu = log l + log_softmax(scale)``.

    With ``p = softmax(scale)``, ``mu = l p``, ``r = mu / theta`` and ``L = log1p(r)``,
    the log-likelihood is ``-sum_g theta_g L_g`` (every gene at zero) plus, at each
    stored count ``x``, ``lgamma(x + theta) - lgamma(theta) - lgamma(x + 1) + x (log mu - log theta - L)``.
    Its derivative with respect to ``log mu`` is ``-theta r / (1 + r)`` everywhere plus
    ``x / (1 + r)`` at the stored counts, then through the softmax.

    The forward computes two transcendental passes over the ``rows x genes`` block
    (``exp``, ``log1p``) and keeps ``r`` and ``L`` for the backward, which has none:
    the autograd graph of the generic computation reads and writes the block some
    thirty times. Per-gene terms (``lgamma(theta)``, ``digamma(theta)``) are computed
    once per gene, and the stored entries' per-row sums are segment sums: ``rows`` must
    be in CSR order (ascending).
    """

    @staticmethod
    def forward(ctx, scale, log_library, log_theta, rows, columns, counts):
        n_rows, n_genes = scale.shape
        theta, library = log_theta.exp(), log_library.exp()
        lengths = torch.bincount(rows, minlength=n_rows)
        row_max = scale.amax(dim=1)
        ratio = torch.sub(scale, row_max[:, None]).mul_(_LOG2_E).exp2_()  # exp(scale - max)
        exp_total = ratio.sum(dim=1)
        ratio.mul_((library / exp_total)[:, None]).div_(theta)  # r = mu / theta
        log1p_ratio = torch.log1p(ratio)
        # the stored entries, by their index in the flattened block
        flat = rows * n_genes + columns
        log_mu_at = scale.reshape(-1).index_select(0, flat) + (log_library - row_max - exp_total.log()).index_select(0, rows)
        log1p_at = log1p_ratio.reshape(-1).index_select(0, flat)
        theta_at = theta.index_select(0, columns)
        stored = (
            torch.lgamma(counts + theta_at) - torch.lgamma(theta).index_select(0, columns) - torch.lgamma(counts + 1.0)
            + counts * (log_mu_at - log_theta.index_select(0, columns) - log1p_at)
        )
        ctx.save_for_backward(ratio, log1p_ratio, library, theta, rows, columns, lengths, flat, counts, theta_at, log1p_at)
        return (log1p_ratio @ theta).sub_(_row_sums(stored, lengths))

    @staticmethod
    def backward(ctx, grad_output):
        ratio, log1p_ratio, library, theta, rows, columns, lengths, flat, counts, theta_at, log1p_at = ctx.saved_tensors
        weight = -grad_output  # the output is minus the log-likelihood
        weight_at = weight.index_select(0, rows)
        # weight * d loglik / d log mu at the stored counts, beyond the every-gene-at-zero part: x / (1 + r)
        counts_share_at = counts * torch.mul(log1p_at, -_LOG2_E).exp2_()
        stored_grad = weight_at * counts_share_at
        # s = r / (1 + r), in the one rows x genes buffer the backward allocates (new pages cost as much as a pass)
        share = torch.add(ratio, 1.0)
        torch.div(ratio, share, out=share)
        # d/d log theta: -theta L + theta s for every gene at zero, and at the stored counts
        # theta (digamma(x + theta) - digamma(theta)) - x / (1 + r)
        grad_log_theta = theta * (share.T @ weight - log1p_ratio.T @ weight)
        grad_log_theta.index_add_(0, columns, weight_at * (
            theta_at * (torch.digamma(counts + theta_at) - torch.digamma(theta).index_select(0, columns)) - counts_share_at
        ))
        # weight * d loglik / d log mu is d = -weight theta s, plus stored_grad at the stored counts; through
        # log mu = scale + log l - logsumexp(scale) the gradient is d minus the softmax p = r theta / l times d's row sum
        row_sums = _row_sums(stored_grad, lengths) - weight * (share @ theta)
        grad = share.mul_(-weight[:, None]).addcmul_(ratio, (-row_sums / library)[:, None]).mul_(theta)
        grad.view(-1).index_add_(0, flat, stored_grad)
        return grad, None, grad_log_theta, None, None, None


LIKELIHOODS = {
    "gaussian": Gaussian,
    "poisson": Poisson,
    "nb": NegativeBinomial,
    "zinb": ZeroInflatedNegativeBinomial,
}
"""The likelihoods by the name the estimators' ``likelihood`` parameter takes."""


def _check_loaded_dispersion(module, state_dict, prefix, *args):
    """Refuse saved dispersions beyond what training gives: damage, not a model."""
    log_theta = state_dict.get(prefix + "log_theta")
    if log_theta is not None and log_theta.numel() and log_theta.abs().max() > LOG_DISPERSION_LIMIT:
        raise ValueError(f"its log dispersions reach {log_theta.abs().max():.3g}, beyond +-{LOG_DISPERSION_LIMIT:g}, "
                         "which training never gives")


def make_likelihood(name, n_features, *, dispersion_categories=0):
    """A new likelihood of ``LIKELIHOODS[name]`` for ``n_features`` genes.

    Parameters
    ----------
    name : {"gaussian", "poisson", "nb", "zinb"}
    n_features : int
        Number of genes: count likelihoods have per-gene parameters.
    dispersion_categories : int, default=0
        When > 0, "nb" and "zinb" learn a dispersion per gene and category of the
        first covariate, for this many categories; the other likelihoods have no
        dispersion and ignore it.

    Returns
    -------
    torch.nn.Module

    Examples
    --------
    >>> from skvae.nn.likelihoods import make_likelihood
    >>> make_likelihood("nb", 5).log_theta.shape
    torch.Size([5])
    """
    likelihood = LIKELIHOODS[name]
    if issubclass(likelihood, NegativeBinomial):
        return likelihood(n_features, dispersion_categories)
    return likelihood(n_features) if likelihood.counts else likelihood()
