"""Pure torch building blocks shared by every model: layer stacks, encoder, decoder."""

import math
from itertools import accumulate, pairwise

import torch
import torch.nn.functional as F
from torch import nn

from .sparse import ShiftedSparseRows


def linear_stack(sizes, *, batch_norm=False, dropout=0.0):
    """Linear layers between consecutive ``sizes``, each followed by a ReLU.

    Parameters
    ----------
    sizes : sequence of int
        Widths, input first. ``len(sizes) - 1`` linear layers are built (none for
        fewer than two sizes: the identity).
    batch_norm : bool, default=False
        Put a batch normalisation between each linear layer and its ReLU (as
        scVI's hidden layers).
    dropout : float, default=0.0
        Drop this share of each ReLU's outputs in training (none when 0).

    Returns
    -------
    torch.nn.Sequential

    Examples
    --------
    >>> from skvae.nn.layers import linear_stack
    >>> linear_stack([4, 3, 2])
    Sequential(
      (0): Linear(in_features=4, out_features=3, bias=True)
      (1): ReLU()
      (2): Linear(in_features=3, out_features=2, bias=True)
      (3): ReLU()
    )
    """
    layers = []
    for n_in, n_out in pairwise(sizes):
        layers.append(nn.Linear(n_in, n_out))
        layers.extend(activation(n_out, batch_norm=batch_norm, dropout=dropout))
    return nn.Sequential(*layers)


def activation(width, *, batch_norm=False, dropout=0.0):
    """What follows a hidden linear layer: batch normalisation if asked, a ReLU, dropout if asked.

    Parameters
    ----------
    width : int
        The linear layer's output width.
    batch_norm : bool, default=False
        With scVI's settings: statistics that move slowly and a small epsilon.
    dropout : float, default=0.0

    Returns
    -------
    torch.nn.Sequential

    Examples
    --------
    >>> from skvae.nn.layers import activation
    >>> activation(3, dropout=0.1)
    Sequential(
      (0): ReLU()
      (1): Dropout(p=0.1, inplace=False)
    )
    """
    layers = [nn.BatchNorm1d(width, momentum=0.01, eps=1e-3)] if batch_norm else []
    layers.append(nn.ReLU())
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class InputLinear(nn.Module):
    """A linear layer for dense rows or :class:`~skvae.nn.sparse.ShiftedSparseRows`.

    Its weight is stored (in_features, out_features), the layout a sparse
    minibatch multiplies without a copy; initialised as ``nn.Linear``.

    Parameters
    ----------
    in_features, out_features : int

    Examples
    --------
    >>> import torch
    >>> from skvae.nn.layers import InputLinear
    >>> layer = InputLinear(5, 3)
    >>> layer.weight.shape, layer(torch.ones(2, 5)).shape
    (torch.Size([5, 3]), torch.Size([2, 3]))
    """

    def __init__(self, in_features, out_features):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(in_features, out_features))
        self.bias = nn.Parameter(torch.empty(out_features))
        nn.init.kaiming_uniform_(self.weight.T, a=math.sqrt(5))
        nn.init.uniform_(self.bias, -1 / math.sqrt(in_features), 1 / math.sqrt(in_features))

    def forward(self, x):
        return input_product(x, self.weight, self.bias)


def input_product(x, weight, bias):
    """``x @ weight + bias`` for dense rows or :class:`~skvae.nn.sparse.ShiftedSparseRows` ``x``.

    Parameters
    ----------
    x : torch.Tensor of shape (n_rows, in_features) or ShiftedSparseRows
    weight : torch.Tensor of shape (in_features, out_features)
    bias : torch.Tensor of shape (out_features,)

    Returns
    -------
    torch.Tensor of shape (n_rows, out_features)

    Examples
    --------
    >>> import torch
    >>> from skvae.nn.layers import input_product
    >>> input_product(torch.ones(1, 2), torch.ones(2, 3), torch.zeros(3))
    tensor([[2., 2., 2.]])
    """
    if isinstance(x, ShiftedSparseRows):
        return x.linear(weight, bias)
    return torch.addmm(bias, x, weight)


class Encoder(nn.Module):
    """An input layer and a shared trunk, then one branch per posterior parameter.

    The input layer is linear with no activation (the original study's network)
    unless ``input_activation``; the trunk holds the following hidden layers but
    the last, each with a ReLU. Each branch holds its own copy of the last hidden
    layer (with a ReLU) and a linear output of width ``n_outputs``. With one
    hidden layer there is no trunk and each branch is its linear output: with
    ``input_activation`` that is scVI's encoder, without it a linear map.

    Parameters
    ----------
    n_features : int
        Input width.
    hidden_layer_sizes : sequence of int
        Hidden widths, input side first, e.g. ``(128, 32, 16)``.
    n_outputs : int
        Width of each branch's output (the latent size).
    branches : sequence of str
        Names of the branches, e.g. ``("mu", "logvar")``.
    batch_norm, dropout
        As in :func:`linear_stack`, for every hidden layer but the input layer
        (which has them too with ``input_activation``).
    input_activation : bool, default=False
        Follow the input layer with :func:`activation` (batch normalisation and
        dropout as for the other layers), as every other hidden layer.
    n_categories : sequence of int, default=()
        The number of categories of each categorical covariate the input layer
        also takes (:class:`CovariateOffsets`); empty: none.
    n_continuous : int, default=0
        The number of continuous covariates the input layer also takes
        (:class:`ContinuousOffsets`).

    Examples
    --------
    >>> import torch
    >>> from skvae.nn.layers import Encoder
    >>> encoder = Encoder(100, (16, 8, 4), 2, ["mu", "logvar"])
    >>> {name: out.shape for name, out in encoder(torch.randn(5, 100)).items()}
    {'mu': torch.Size([5, 2]), 'logvar': torch.Size([5, 2])}
    """

    def __init__(self, n_features, hidden_layer_sizes, n_outputs, branches, *, batch_norm=False, dropout=0.0,
                 input_activation=False, n_categories=(), n_continuous=0):
        super().__init__()
        options = {"batch_norm": batch_norm, "dropout": dropout}
        self.input_layer = InputLinear(n_features, hidden_layer_sizes[0])
        if n_categories:
            self.covariate_offsets = CovariateOffsets(n_categories, hidden_layer_sizes[0])
        if n_continuous:
            self.continuous_offsets = ContinuousOffsets(n_continuous, hidden_layer_sizes[0])
        # None (the study's linear input layer) or the activation after it
        self.input_activation = activation(hidden_layer_sizes[0], **options) if input_activation else None
        self.trunk = linear_stack(hidden_layer_sizes[:-1], **options)
        branch_sizes = hidden_layer_sizes[-2:]
        self.branches = nn.ModuleDict(
            {
                name: nn.Sequential(*linear_stack(branch_sizes, **options), nn.Linear(branch_sizes[-1], n_outputs))
                for name in branches
            }
        )

    def forward(self, x, covariates=None, continuous=None):
        """Return a dict mapping each branch name to its output tensor.

        ``x`` is a dense tensor or :class:`skvae.nn.sparse.ShiftedSparseRows`;
        ``covariates`` the rows' category codes, of shape (n_rows, n_covariates)
        (an encoder built with ``n_categories``), or None; ``continuous`` their
        standardised continuous covariates (built with ``n_continuous``), or None.
        """
        if self.input_activation is None and len(self.trunk) and not (self.training or torch.is_grad_enabled()):
            # The input layer has no activation, so at inference it merges with the next linear
            # layer: one genes x 32 product instead of genes x 128 then 128 x 32 (the covariates'
            # offsets pass through the next layer's weights: a row whose offsets are 0 gets the
            # product of a model without them, to the bit).
            following = self.trunk[0]
            weight = self.input_layer.weight @ following.weight.T
            bias = torch.addmv(following.bias, following.weight, self.input_layer.bias)
            h = input_product(x, weight, bias)
            if covariates is not None:
                h = h + self.covariate_offsets(covariates) @ following.weight.T
            if continuous is not None:
                h = h + self.continuous_offsets(continuous) @ following.weight.T
            h = self.trunk[1:](h)
        else:
            h = self.input_layer(x)
            if covariates is not None:
                h = h + self.covariate_offsets(covariates)
            if continuous is not None:
                h = h + self.continuous_offsets(continuous)
            if self.input_activation is not None:
                h = self.input_activation(h)
            h = self.trunk(h)
        return {name: branch(h) for name, branch in self.branches.items()}


class Decoder(nn.Module):
    """The encoder's hidden layers in reverse, each with a ReLU, then one linear head per output.

    Parameters
    ----------
    n_components : int
        Latent size (input width).
    hidden_layer_sizes : sequence of int
        The encoder's hidden widths, input side first; used in reverse.
    n_features : int
        Width of each head's output.
    heads : sequence of str, default=("mean",)
        Names of the outputs, e.g. ``("scale", "dropout")``; a likelihood says which it reads.
    batch_norm, dropout
        As in :func:`linear_stack`, for every hidden layer.
    n_categories : sequence of int, default=()
        The number of categories of each categorical covariate that every hidden
        layer also takes, as scVI injects covariates into every decoder layer: a
        :class:`CovariateOffsets` after each linear layer. Empty: none.
    n_continuous : int, default=0
        The number of continuous covariates every hidden layer also takes (a
        :class:`ContinuousOffsets` after each linear layer).

    Examples
    --------
    >>> import torch
    >>> from skvae.nn.layers import Decoder
    >>> Decoder(2, (16, 8, 4), 100)(torch.randn(5, 2))["mean"].shape
    torch.Size([5, 100])
    """

    def __init__(self, n_components, hidden_layer_sizes, n_features, heads=("mean",), *, batch_norm=False, dropout=0.0,
                 n_categories=(), n_continuous=0):
        super().__init__()
        self.hidden = linear_stack([n_components, *reversed(hidden_layer_sizes)], batch_norm=batch_norm, dropout=dropout)
        self.heads = nn.ModuleDict({name: nn.Linear(hidden_layer_sizes[0], n_features) for name in heads})
        widths = [layer.out_features for layer in self.hidden if isinstance(layer, nn.Linear)]
        if n_categories:
            self.covariate_offsets = nn.ModuleList([CovariateOffsets(n_categories, width) for width in widths])
        if n_continuous:
            self.continuous_offsets = nn.ModuleList([ContinuousOffsets(n_continuous, width) for width in widths])

    def forward(self, z, covariates=None, continuous=None, offset=None):
        """Return the heads' outputs by name (:class:`DecoderOutputs`), for the rows' ``covariates`` (category codes)
        and standardised ``continuous`` covariates when built with them; ``offset`` (n_rows, n_features), if given, is
        added to the first head's output (the likelihood's mean parameter)."""
        if covariates is None and continuous is None:
            return DecoderOutputs(self.hidden(z), self.heads, offset=offset)
        offsets = iter(self.covariate_offsets) if covariates is not None and hasattr(self, "covariate_offsets") else None
        slopes = iter(self.continuous_offsets) if continuous is not None else None
        h = z
        for layer in self.hidden:
            h = layer(h)
            if isinstance(layer, nn.Linear):
                if offsets is not None:
                    h = h + next(offsets)(covariates)
                if slopes is not None:
                    h = h + next(slopes)(continuous)
        return DecoderOutputs(h, self.heads, covariates, offset)


class CovariateOffsets(nn.Module):
    """A learned offset of ``width`` per category of each categorical covariate, summed over the covariates.

    The same as a linear layer's part for the concatenated one-hot covariates
    (scVI's ``categorical_covariate_keys``): one table of ``sum(n_categories)`` rows,
    every offset 0 at first.

    Parameters
    ----------
    n_categories : sequence of int
        The number of categories of each covariate.
    width : int

    Attributes
    ----------
    weight : torch.nn.Parameter of shape (sum(n_categories), width)

    Examples
    --------
    >>> import torch
    >>> from skvae.nn.layers import CovariateOffsets
    >>> offsets = CovariateOffsets((3, 2), 4)
    >>> offsets.weight.shape, offsets(torch.tensor([[0, 1], [2, 0]])).shape
    (torch.Size([5, 4]), torch.Size([2, 4]))
    """

    def __init__(self, n_categories, width):
        super().__init__()
        self.n_categories = tuple(int(n) for n in n_categories)
        self.weight = nn.Parameter(torch.empty(sum(self.n_categories), width))
        nn.init.normal_(self.weight)  # drawn as torch's embedding draws it, so the random stream is the same
        nn.init.zeros_(self.weight)
        # each covariate's first row in the one table
        self.starts = tuple(accumulate(self.n_categories[:-1], initial=0))

    def forward(self, covariates):
        """The summed offsets of each row's categories.

        Parameters
        ----------
        covariates : torch.Tensor of shape (n_rows, n_covariates), int64
            Each row's category of each covariate, from 0.

        Returns
        -------
        torch.Tensor of shape (n_rows, width)
        """
        if len(self.starts) > 1:
            covariates = covariates + torch.as_tensor(self.starts, device=covariates.device)
        return F.embedding(covariates, self.weight).sum(dim=1)


class ContinuousOffsets(nn.Module):
    """An offset of ``width`` that is a linear function of each row's continuous covariates, 0 at first.

    The part of a linear layer that reads the continuous covariates (scVI's
    ``continuous_covariate_keys`` are concatenated to each layer's input), without a
    bias: the layer's own bias is the offset at 0.

    Parameters
    ----------
    n_continuous : int
    width : int

    Attributes
    ----------
    weight : torch.nn.Parameter of shape (width, n_continuous)

    Examples
    --------
    >>> import torch
    >>> from skvae.nn.layers import ContinuousOffsets
    >>> ContinuousOffsets(2, 4)(torch.randn(3, 2)).shape
    torch.Size([3, 4])
    """

    def __init__(self, n_continuous, width):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(width, n_continuous))

    def forward(self, continuous):
        """The offset of each row.

        Parameters
        ----------
        continuous : torch.Tensor of shape (n_rows, n_continuous)

        Returns
        -------
        torch.Tensor of shape (n_rows, width)
        """
        return continuous @ self.weight.T


class ContinuousInputs(nn.Module):
    """Standardise continuous covariates by their mean and variance over the cells trained on (a running estimate).

    In a training step (training mode, gradients on) each minibatch updates the
    estimates (all the rows seen so far, pooled; they are buffers, so a
    data-parallel run averages them over ranks) and is standardised by them;
    otherwise the estimates are only read. Before any training the values pass
    unchanged.

    Parameters
    ----------
    n_continuous : int

    Attributes
    ----------
    mean, var : torch.Tensor of shape (n_continuous,)
        Buffers: the estimates.
    count : torch.Tensor
        Buffer: the rows they come from (capped at 1e7, beyond which they move as
        a slow running mean).

    Examples
    --------
    >>> import torch
    >>> from skvae.nn.layers import ContinuousInputs
    >>> inputs = ContinuousInputs(1)
    >>> _ = inputs(torch.tensor([[1.0], [3.0]]))  # training: the estimates learn mean 2, variance 1
    >>> inputs.eval()(torch.tensor([[2.0], [4.0]])).squeeze(1)
    tensor([0., 2.])
    """

    _MAX_COUNT = 1e7
    _EPS = 1e-8

    def __init__(self, n_continuous):
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_continuous))
        self.register_buffer("var", torch.ones(n_continuous))
        self.register_buffer("count", torch.zeros(()))

    def forward(self, continuous):
        """The standardised values (updating the estimates first, in training).

        Parameters
        ----------
        continuous : torch.Tensor of shape (n_rows, n_continuous)

        Returns
        -------
        torch.Tensor of shape (n_rows, n_continuous)
        """
        if self.training and torch.is_grad_enabled() and len(continuous):  # a training step, not a check
            with torch.no_grad():
                n = float(len(continuous))
                mean, var = continuous.mean(dim=0), continuous.var(dim=0, unbiased=False)
                seen = float(self.count)
                total = seen + n
                delta = mean - self.mean
                self.var.copy_((self.var * seen + var * n + delta.pow(2) * seen * n / total) / total)
                self.mean.add_(delta * n / total)
                self.count.fill_(min(total, self._MAX_COUNT))
        if float(self.count) == 0:
            return continuous
        return (continuous - self.mean) / (self.var + self._EPS).sqrt()


class DecoderOutputs:
    """The decoder heads' outputs by name, each computed when first read (a read-only mapping).

    A likelihood reads the outputs it needs (``outputs["scale"]``). One that fuses the
    last layer into its loss, such as the Gaussian's exact sparse squared error, reads
    ``hidden`` and ``heads`` instead, and no ``rows x genes`` output is made.

    Parameters
    ----------
    hidden : torch.Tensor of shape (n_rows, width)
        The decoder's last hidden layer.
    heads : torch.nn.ModuleDict
        The output layers, by name.
    covariates : torch.Tensor of shape (n_rows, n_covariates), int64, default=None
        The rows' category codes, for a likelihood with parameters per category.
    offset : torch.Tensor of shape (n_rows, n_features), default=None
        Added to the first head's output (a model's per-gene batch factors, on the log scale).

    Examples
    --------
    >>> import torch
    >>> from skvae.nn.layers import DecoderOutputs
    >>> outputs = DecoderOutputs(torch.ones(2, 3), torch.nn.ModuleDict({"mean": torch.nn.Linear(3, 4)}))
    >>> list(outputs), outputs["mean"].shape
    (['mean'], torch.Size([2, 4]))
    """

    def __init__(self, hidden, heads, covariates=None, offset=None):
        self.hidden, self.heads, self.covariates, self.offset = hidden, heads, covariates, offset
        self._computed = {}

    def __getitem__(self, name):
        if name not in self._computed:
            output = self.heads[name](self.hidden)
            if self.offset is not None and name == next(iter(self.heads)):
                output = output + self.offset
            self._computed[name] = output
        return self._computed[name]

    def __iter__(self):
        return iter(self.heads)

    def __len__(self):
        return len(self.heads)

    def keys(self):
        """The heads' names.

        Returns
        -------
        list of str
        """
        return list(self.heads)

    def values(self):
        """Every head's output, in the heads' order (each computed if not yet).

        Returns
        -------
        list of torch.Tensor
        """
        return [self[name] for name in self.heads]

    def items(self):
        """``(name, output)`` of every head.

        Returns
        -------
        list of tuple of (str, torch.Tensor)
        """
        return list(zip(self.keys(), self.values(), strict=True))
