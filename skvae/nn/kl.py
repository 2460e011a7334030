"""KL divergences of the posteriors from their priors, as pure functions of tensors, one value per cell.

Every function returns a tensor of shape ``(n_samples,)``: the caller decides how
to weight (``beta``) and reduce the terms, so schedules live outside the network.
"""

import torch


def gaussian_kl(mu, logvar):
    """KL divergence from ``N(mu, exp(logvar))`` to ``N(0, 1)``, summed over dimensions.

    Parameters
    ----------
    mu, logvar : torch.Tensor of shape (n_samples, n_components)
        Mean and log-variance of the diagonal Gaussian posterior.

    Returns
    -------
    torch.Tensor of shape (n_samples,)

    Examples
    --------
    >>> import torch
    >>> from skvae.nn.kl import gaussian_kl
    >>> gaussian_kl(torch.zeros(2, 3), torch.zeros(2, 3))
    tensor([0., 0.])
    """
    return _gaussian_kl_per_dimension(mu, logvar).sum(dim=-1)


def _gaussian_kl_per_dimension(mu, logvar):
    # expm1(v) - v = exp(v) - 1 - v without cancellation for small v, so it stays >= 0
    return 0.5 * (mu.square() + torch.expm1(logvar) - logvar)


def bernoulli_kl(p, prior_p):
    """KL divergence from ``Bernoulli(p)`` to ``Bernoulli(prior_p)``, elementwise.

    Uses ``0 log 0 = 0``, so ``p`` and ``prior_p`` may be exactly 0 or 1.

    Parameters
    ----------
    p : torch.Tensor
        Posterior success probabilities in [0, 1].
    prior_p : float or torch.Tensor
        Prior success probability in [0, 1].

    Returns
    -------
    torch.Tensor of the shape of ``p``

    Examples
    --------
    >>> import torch
    >>> from skvae.nn.kl import bernoulli_kl
    >>> bernoulli_kl(torch.tensor([0.5, 1.0]), 0.5)
    tensor([0.0000, 0.6931])
    """
    # the prior's logarithms in float64 first: a prior of 1e-300 or 1 - 1e-10 has finite logs, but is 0 or 1 in float32
    prior_p = torch.as_tensor(prior_p, dtype=torch.float64, device=p.device)
    log_prior, log_prior_complement = (torch.log(prior_p).to(p.dtype), torch.log1p(-prior_p).to(p.dtype))
    q = 1.0 - p
    # 0 log 0 = 0: a term whose posterior probability is 0 contributes nothing, whatever the prior
    return (
        torch.xlogy(p, p) - torch.where(p > 0, p * log_prior, 0.0)
        + torch.xlogy(q, q) - torch.where(q > 0, q * log_prior_complement, 0.0)
    )


def spike_and_slab_kl(mu, logvar, spike, prior_activity):
    """KL divergence of a spike-and-slab posterior from a spike-and-slab prior.

    Posterior per dimension: with probability ``spike`` a draw from the slab
    ``N(mu, exp(logvar))``, else exactly 0. Prior: slab ``N(0, 1)`` with
    probability ``prior_activity``, else 0. Following Tonolini et al. (2020), the
    divergence is ``spike * KL(slab || N(0, 1)) + KL(Bernoulli(spike) ||
    Bernoulli(prior_activity))``, summed over dimensions.

    Parameters
    ----------
    mu, logvar : torch.Tensor of shape (n_samples, n_components)
        Slab mean and log-variance.
    spike : torch.Tensor of shape (n_samples, n_components)
        Posterior probability that each dimension is active, in [0, 1].
    prior_activity : float
        Prior probability that a dimension is active, in [0, 1].

    Returns
    -------
    torch.Tensor of shape (n_samples,)

    Examples
    --------
    >>> import torch
    >>> from skvae.nn.kl import gaussian_kl, spike_and_slab_kl
    >>> mu, logvar = torch.ones(1, 2), torch.zeros(1, 2)
    >>> spike_and_slab_kl(mu, logvar, torch.ones(1, 2), 1.0), gaussian_kl(mu, logvar)
    (tensor([1.]), tensor([1.]))

    References
    ----------
    F. Tonolini, B. S. Jensen, R. Murray-Smith. "Variational Sparse Coding".
    UAI 2020, PMLR 115:690-700.
    """
    slab_kl = _gaussian_kl_per_dimension(mu, logvar)
    return (spike * slab_kl + bernoulli_kl(spike, prior_activity)).sum(dim=-1)
