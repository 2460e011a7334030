"""The torch modules on random tensors: shapes, architecture, determinism, priors."""

import pytest
import torch
from torch import nn

from skvae.nn.models import Autoencoder, SparseCodingVAE, VariationalAutoencoder

N_FEATURES, N_COMPONENTS, HIDDEN = 30, 4, (16, 8, 6)


def build(kind):
    if kind is SparseCodingVAE:
        return kind(N_FEATURES, N_COMPONENTS, HIDDEN, prior_activity=0.3, spike_sharpness=50.0)
    return kind(N_FEATURES, N_COMPONENTS, HIDDEN)


MODULES = [Autoencoder, VariationalAutoencoder, SparseCodingVAE]


@pytest.fixture
def x():
    return torch.randn(7, N_FEATURES, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("kind", MODULES)
def test_shapes(kind, x):
    module = build(kind)
    q = module.posterior(x)
    expected = {Autoencoder: {"code"}, VariationalAutoencoder: {"mu", "logvar"}, SparseCodingVAE: {"mu", "logvar", "spike"}}
    assert set(q) == expected[kind]
    assert all(v.shape == (7, N_COMPONENTS) for v in q.values())
    assert module.embed(x).shape == (7, N_COMPONENTS)
    assert module.decode(module.embed(x)).shape == (7, N_FEATURES)
    terms = module.loss(x, generator=torch.Generator().manual_seed(0))
    assert terms.reconstruction.shape == terms.kl.shape == (7,)


@pytest.mark.parametrize("kind", MODULES)
def test_architecture_follows_the_study(kind):
    module = build(kind)
    encoder = module.encoder
    # 30 -> 16 with no activation, then 16 -> 8 with a ReLU
    assert encoder.input_layer.weight.shape == (30, 16)
    assert [type(m) for m in encoder.trunk] == [nn.Linear, nn.ReLU]
    assert (encoder.trunk[0].in_features, encoder.trunk[0].out_features) == (16, 8)
    # each posterior parameter gets its own 8 -> 6 -> 4 branch
    assert set(encoder.branches) == set(kind.branches)
    for branch in encoder.branches.values():
        shapes = [(m.in_features, m.out_features) for m in branch.modules() if isinstance(m, nn.Linear)]
        assert shapes == [(8, 6), (6, 4)]
    decoder = [(m.in_features, m.out_features) for m in module.decoder.modules() if isinstance(m, nn.Linear)]
    assert decoder == [(4, 6), (6, 8), (8, 16), (16, 30)]
    assert isinstance(module.decoder.hidden[-1], nn.ReLU)


def test_a_single_hidden_layer_is_shared_by_the_branches(x):
    module = VariationalAutoencoder(N_FEATURES, N_COMPONENTS, (16,))
    assert len(module.encoder.trunk) == 0
    assert all(len(branch) == 1 for branch in module.encoder.branches.values())
    assert module.loss(x).reconstruction.shape == (7,)


@pytest.mark.parametrize("kind", MODULES)
def test_deterministic_loss_needs_no_noise(kind, x):
    module = build(kind)
    a, b = module.loss(x, deterministic=True), module.loss(x, deterministic=True)
    torch.testing.assert_close(a.reconstruction, b.reconstruction, rtol=0, atol=0)


@pytest.mark.parametrize("kind", [VariationalAutoencoder, SparseCodingVAE])
def test_sampled_loss_follows_the_generator(kind, x):
    module = build(kind)
    draw = lambda seed: module.loss(x, generator=torch.Generator().manual_seed(seed)).reconstruction
    torch.testing.assert_close(draw(1), draw(1), rtol=0, atol=0)
    assert not torch.equal(draw(1), draw(2))


def test_autoencoder_has_no_kl(x):
    assert (build(Autoencoder).loss(x).kl == 0).all()


def test_sparse_coding_spikes_are_probabilities_and_gate_the_code(x):
    module = build(SparseCodingVAE)
    q = module.posterior(x)
    assert ((q["spike"] > 0) & (q["spike"] < 1)).all()
    torch.testing.assert_close(module.embed(x), q["spike"] * q["mu"])
    torch.testing.assert_close(module.spike_probability(x), q["spike"])


def test_sparse_coding_prior_has_the_prior_share_of_active_dimensions():
    module = build(SparseCodingVAE)
    z = module.sample_prior(20_000, generator=torch.Generator().manual_seed(0))
    assert z.shape == (20_000, N_COMPONENTS)
    assert abs((z != 0).float().mean().item() - 0.3) < 0.01


def test_sparse_coding_sharp_selection_keeps_a_dimension_with_its_spike_probability(x):
    module = SparseCodingVAE(N_FEATURES, N_COMPONENTS, HIDDEN, prior_activity=0.5, spike_sharpness=1e6)
    with torch.no_grad():
        q = module.posterior(x[:1].expand(20_000, -1))
        z = module._sample_code(q, torch.Generator().manual_seed(0))
    active = (z.abs() > 1e-12).float().mean(dim=0)
    torch.testing.assert_close(active, q["spike"][0], atol=0.015, rtol=0)


def test_vae_prior_is_standard_normal():
    z = build(VariationalAutoencoder).sample_prior(20_000, generator=torch.Generator().manual_seed(0))
    assert abs(z.mean().item()) < 0.02 and abs(z.std().item() - 1) < 0.02


@pytest.mark.parametrize("kind", MODULES)
def test_inference_merges_the_input_layer_without_changing_the_codes(kind, x):
    module = build(kind)
    with torch.no_grad():
        merged = module.eval().embed(x)
    unmerged = module.embed(x)  # gradients enabled: the two layers are applied one after the other
    torch.testing.assert_close(merged, unmerged.detach())
