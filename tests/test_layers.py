"""Layer blocks: shapes, the decoder's named heads, and the encoder's merged inference path."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from skvae.nn.layers import Decoder, Encoder, InputLinear, linear_stack
from skvae.nn.sparse import ShiftedSparseRows


def test_linear_stack_has_a_relu_after_each_layer():
    stack = linear_stack([5, 4, 3])
    assert [type(layer).__name__ for layer in stack] == ["Linear", "ReLU", "Linear", "ReLU"]
    assert len(linear_stack([5])) == 0


def test_input_linear_matches_nn_linear_with_the_same_weights():
    layer = InputLinear(6, 3).double()
    x = torch.randn(4, 6, dtype=torch.float64)
    torch.testing.assert_close(layer(x), x @ layer.weight + layer.bias)


@pytest.mark.parametrize("sparse", [False, True])
def test_encoder_inference_merge_equals_the_training_path(sparse):
    torch.manual_seed(0)
    encoder = Encoder(30, (16, 8, 4), 2, ["mu", "logvar"]).double()
    block = sp.random(5, 30, density=0.3, format="csr", random_state=0)
    x = ShiftedSparseRows.from_scipy(block, np.zeros(30), dtype=np.float64) if sparse else torch.from_numpy(block.toarray())
    encoder.train()
    with torch.no_grad():
        expected = encoder(x)
    encoder.eval()
    with torch.no_grad():
        merged = encoder(x)
    assert set(merged) == {"mu", "logvar"}
    for name in merged:
        torch.testing.assert_close(merged[name], expected[name])


def test_decoder_has_one_head_per_name_in_order():
    decoder = Decoder(2, (16, 8), 10, heads=("scale", "dropout"))
    outputs = decoder(torch.randn(3, 2))
    assert list(outputs) == ["scale", "dropout"] and all(o.shape == (3, 10) for o in outputs.values())
    assert list(Decoder(2, (16, 8), 10)(torch.randn(3, 2))) == ["mean"]


def test_linear_stack_with_batch_norm_and_dropout_puts_them_in_scvi_order():
    stack = linear_stack([5, 4, 3], batch_norm=True, dropout=0.1)
    names = [type(layer).__name__ for layer in stack]
    assert names == ["Linear", "BatchNorm1d", "ReLU", "Dropout"] * 2
    assert stack[3].p == 0.1
    assert [type(layer).__name__ for layer in linear_stack([5, 4], dropout=0.0)] == ["Linear", "ReLU"]


@pytest.mark.parametrize("sparse", [False, True])
def test_encoder_merge_holds_with_batch_norm_in_eval_mode(sparse):
    torch.manual_seed(0)
    encoder = Encoder(30, (16, 8, 4), 2, ["mu"], batch_norm=True, dropout=0.5).double()
    block = sp.random(40, 30, density=0.3, format="csr", random_state=0)
    x = ShiftedSparseRows.from_scipy(block, np.zeros(30), dtype=np.float64) if sparse else torch.from_numpy(block.toarray())
    encoder.train()
    encoder(x)  # moves the running statistics off their initial values
    encoder.eval()
    expected = encoder(x)["mu"].detach()  # with grad enabled: the unmerged path
    with torch.no_grad():
        torch.testing.assert_close(encoder(x)["mu"], expected)
    # in eval mode each row's code depends on that row only
    with torch.no_grad():
        torch.testing.assert_close(encoder(torch.from_numpy(block[:1].toarray()))["mu"], expected[:1])


def _is_linear(function, x):
    """Whether ``function`` is affine on these rows: f(x + y) - f(y) == f(x) - f(0), with y the rows reversed."""
    zero = torch.zeros_like(x[:1])
    return torch.allclose(function(x + x.flip(0)) - function(x.flip(0)), function(x) - function(zero), atol=1e-9)


@pytest.mark.parametrize("sparse", [False, True])
def test_the_input_activation_makes_a_one_layer_encoder_scvis(sparse):
    torch.manual_seed(0)
    encoder = Encoder(30, (16,), 3, ["mu", "logvar"], batch_norm=True, dropout=0.1, input_activation=True).double()
    assert [type(layer).__name__ for layer in encoder.input_activation] == ["BatchNorm1d", "ReLU", "Dropout"]
    assert [type(layer).__name__ for layer in encoder.branches["mu"]] == ["Linear"]
    block = sp.random(40, 30, density=0.3, format="csr", random_state=0)
    dense = torch.from_numpy(block.toarray())
    x = ShiftedSparseRows.from_scipy(block, np.zeros(30), dtype=np.float64) if sparse else dense
    encoder.train()
    encoder(x)  # moves the running statistics off their initial values
    encoder.eval()
    with torch.no_grad():
        # the inference shortcut of a linear input layer is not taken: both paths agree, sparse or dense
        torch.testing.assert_close(encoder(x)["mu"], encoder(dense)["mu"])
        assert not _is_linear(lambda rows: encoder(rows)["mu"], dense)
        # the study's network (no input activation) with one hidden layer is a linear map of the genes
        linear = Encoder(30, (16,), 3, ["mu"]).double().eval()
        assert linear.input_activation is None and _is_linear(lambda rows: linear(rows)["mu"], dense)
