"""Pure torch building blocks shared by every model: layer stacks, encoder, decoder."""

from itertools import pairwise

from torch import nn


def linear_stack(sizes, *, activate_first=True):
    """Linear layers between consecutive ``sizes``, each followed by a ReLU.

    Parameters
    ----------
    sizes : sequence of int
        Widths, input first. ``len(sizes) - 1`` linear layers are built.
    activate_first : bool, default=True
        Whether the first linear layer is followed by a ReLU.

    Returns
    -------
    torch.nn.Sequential
    """
    layers = []
    for i, (n_in, n_out) in enumerate(pairwise(sizes)):
        layers.append(nn.Linear(n_in, n_out))
        if i > 0 or activate_first:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    """A shared trunk followed by one branch per posterior parameter.

    The trunk holds every hidden layer but the last; its first layer is linear
    with no activation. Each branch holds its own copy of the last hidden layer
    and a linear output of width ``n_outputs``.

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
    """

    def __init__(self, n_features, hidden_layer_sizes, n_outputs, branches):
        super().__init__()
        trunk_sizes = [n_features, *hidden_layer_sizes[:-1]]
        self.trunk = linear_stack(trunk_sizes, activate_first=False)
        self.branches = nn.ModuleDict(
            {
                name: nn.Sequential(
                    linear_stack(
                        [trunk_sizes[-1], hidden_layer_sizes[-1]],
                        activate_first=len(trunk_sizes) > 1,
                    ),
                    nn.Linear(hidden_layer_sizes[-1], n_outputs),
                )
                for name in branches
            }
        )

    def forward(self, x):
        """Return a dict mapping each branch name to its output tensor."""
        h = self.trunk(x)
        return {name: branch(h) for name, branch in self.branches.items()}


class Decoder(nn.Sequential):
    """The encoder's hidden layers in reverse, with ReLUs, and a linear output.

    Parameters
    ----------
    n_components : int
        Latent size (input width).
    hidden_layer_sizes : sequence of int
        The encoder's hidden widths, input side first; used in reverse.
    n_features : int
        Output width.
    """

    def __init__(self, n_components, hidden_layer_sizes, n_features):
        hidden = [n_components, *reversed(hidden_layer_sizes)]
        super().__init__(*linear_stack(hidden), nn.Linear(hidden[-1], n_features))
