"""The batch adversary: what it pushes, how hard, and what it must leave alone (the calibration checks, small)."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.neighbors import NearestNeighbors

from skvae import BetaVAEEmbedder
from skvae.classifier import adversary_types
from skvae.nn.likelihoods import make_likelihood
from skvae.nn.models import (
    Autoencoder,
    GradientScale,
    LossWeights,
    VariationalAutoencoder,
    _ScaledGradient,
    held_type_losses,
    nearest_codes,
    neighbourhood_losses,
    shared_weight,
    type_weight,
)


@settings(max_examples=50, deadline=None)
@given(st.integers(2, 40), st.integers(1, 4), st.integers(1, 8), st.integers(0, 10_000))
def test_shared_weight_lies_in_0_1_and_is_0_for_a_batch_alone(n, n_batches, k, seed):
    generator = torch.Generator().manual_seed(seed)
    codes = torch.randn(n, 3, generator=generator)
    batch = torch.randint(n_batches, (n,), generator=generator)
    weight = shared_weight(codes, batch, k)
    assert weight.shape == (n,) and bool(((weight >= 0) & (weight <= 1)).all())
    assert not shared_weight(codes, torch.zeros(n, dtype=torch.long), k).any()
    # the cells' order does not matter
    order = torch.randperm(n, generator=generator)
    torch.testing.assert_close(shared_weight(codes[order], batch[order], k), weight[order])


def test_shared_weight_is_1_where_batches_interleave_and_0_for_a_population_of_one_batch():
    line = torch.arange(40, dtype=torch.float32)[:, None]
    interleaved = torch.arange(40) % 2
    # each cell's nearest neighbour is of the other batch: more than the 20/39 of perfect mixing
    assert shared_weight(line, interleaved, k=1).min() == 1.0
    apart = torch.cat([line, line + 100.0])
    batch = torch.cat([torch.zeros(40, dtype=torch.long), torch.ones(40, dtype=torch.long)])
    assert not shared_weight(apart, batch, k=5).any()


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 30), st.integers(2, 4), st.integers(1, 3), st.integers(0, 10_000))
def test_type_weight_is_a_labelled_cells_entry_and_an_unlabelled_cells_mixture_of_its_batchs(n, n_classes, n_batches,
                                                                                           seed):
    generator = torch.Generator().manual_seed(seed)
    shared = (torch.rand(n_classes, n_batches, generator=generator) < 0.5).float()
    batch = torch.randint(n_batches, (n,), generator=generator)
    labels = torch.randint(-1, n_classes, (n,), generator=generator)
    logits = torch.randn(n, n_classes, generator=generator) * 3
    weight = type_weight(shared, batch, labels, logits)
    labelled = labels >= 0
    torch.testing.assert_close(weight[labelled], shared[labels[labelled], batch[labelled]])
    column = shared.T[batch]  # the entries of each cell's batch
    assert bool((weight >= column.min(dim=1).values - 1e-6).all() and (weight <= column.max(dim=1).values + 1e-6).all())
    # a table of ones (every type shared) leaves every cell at 1
    torch.testing.assert_close(type_weight(torch.ones_like(shared), batch, labels, logits), torch.ones(n))


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 30), st.integers(1, 4), st.integers(0, 10_000))
def test_held_type_losses_with_two_batches_are_the_type_weight_times_the_cross_entropy(n, n_classes, seed):
    """Two batches: asking a cell's batch among those that hold its type is the two-batch gate (0 where its type is
    its batch's alone, the plain cross-entropy where both hold it; an unlabelled cell's mixture of the two)."""
    generator = torch.Generator().manual_seed(seed)
    held = torch.rand(n_classes, 2, generator=generator) < 0.5
    held[held.sum(dim=1) == 0, 0] = True  # a type is held somewhere
    batch = torch.randint(2, (n,), generator=generator)
    labels = torch.randint(-1, n_classes, (n,), generator=generator)
    logits, type_logits = torch.randn(n, 2, generator=generator) * 3, torch.randn(n, n_classes, generator=generator)
    elsewhere = ((held.sum(dim=1, keepdim=True) - held.long()) > 0).float()  # adversary_types' table
    expected = type_weight(elsewhere, batch, labels, type_logits) * torch.nn.functional.cross_entropy(
        logits, batch, reduction="none")
    torch.testing.assert_close(held_type_losses(logits, batch, labels, type_logits, held.float()), expected)


def _asked_cross_entropy(logits, asked, batch):
    """One cell's cross-entropy of its batch among the batches ``asked`` (a bool mask) alone."""
    own = int(asked[:batch].sum())  # the cell's batch's place among the asked
    return torch.nn.functional.cross_entropy(logits[asked][None], torch.tensor([own]))


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 30), st.integers(1, 4), st.integers(3, 5), st.integers(0, 10_000))
def test_held_type_losses_ask_only_among_the_batches_that_hold_the_type(n, n_classes, n_batches, seed):
    """A labelled cell's loss is the cross-entropy of the adversary's logits restricted to its type's batches and its
    own, whatever the logits of the others; a type every batch holds gives the plain cross-entropy; gradients stay
    finite where batches are left out."""
    generator = torch.Generator().manual_seed(seed)
    held = torch.rand(n_classes, n_batches, generator=generator) < 0.6
    batch = torch.randint(n_batches, (n,), generator=generator)
    labels = torch.randint(0, n_classes, (n,), generator=generator)
    logits = (torch.randn(n, n_batches, generator=generator) * 3).requires_grad_()
    type_logits = torch.randn(n, n_classes, generator=generator)
    losses = held_type_losses(logits, batch, labels, type_logits, held.float())
    for i in range(n):
        asked = held[labels[i]].clone()
        asked[batch[i]] = True
        torch.testing.assert_close(losses[i], _asked_cross_entropy(logits[i], asked, batch[i]))
    losses.sum().backward()
    assert bool(torch.isfinite(logits.grad).all())
    plain = held_type_losses(logits, batch, labels, type_logits, torch.ones(n_classes, n_batches))
    torch.testing.assert_close(plain, torch.nn.functional.cross_entropy(logits, batch, reduction="none"))
    # given the cells' neighbours: among the batches that hold the type and that the neighbours hold; with every type
    # held everywhere, the neighbourhood's question (neighbourhood_losses)
    neighbours = nearest_codes(torch.randn(n, 3, generator=generator), 3)
    near = held_type_losses(logits, batch, labels, type_logits, held.float(), neighbours=neighbours)
    for i in range(n):
        around = torch.zeros(n_batches, dtype=torch.bool)
        around[batch[neighbours[i]]] = True
        asked = held[labels[i]] & around
        asked[batch[i]] = True
        torch.testing.assert_close(near[i], _asked_cross_entropy(logits[i], asked, batch[i]))
    torch.testing.assert_close(held_type_losses(logits, batch, labels, type_logits, torch.ones(n_classes, n_batches),
                                                neighbours=neighbours), neighbourhood_losses(logits, batch, neighbours))


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 30), st.integers(1, 5), st.integers(1, 6), st.integers(0, 10_000))
def test_neighbourhood_losses_ask_only_among_the_batches_of_the_cells_neighbours(n, n_batches, k, seed):
    """A cell's loss is the cross-entropy of the adversary's logits restricted to its neighbours' batches and its own,
    whatever the logits of the others; gradients stay finite where batches are left out; with two batches, weighted by
    :func:`shared_weight`, it is the weighted plain cross-entropy (the two-batch adversary as before, bit for bit)."""
    generator = torch.Generator().manual_seed(seed)
    codes = torch.randn(n, 3, generator=generator)
    batch = torch.randint(n_batches, (n,), generator=generator)
    logits = (torch.randn(n, n_batches, generator=generator) * 3).requires_grad_()
    neighbours = nearest_codes(codes, k)
    losses = neighbourhood_losses(logits, batch, neighbours)
    for i in range(n):
        asked = torch.zeros(n_batches, dtype=torch.bool)
        asked[batch[i]] = True
        asked[batch[neighbours[i]]] = True
        torch.testing.assert_close(losses[i], _asked_cross_entropy(logits[i], asked, batch[i]))
    losses.sum().backward()
    assert bool(torch.isfinite(logits.grad).all())
    two = batch % 2
    plain = torch.nn.functional.cross_entropy(logits[:, :2], two, reduction="none")
    weight = shared_weight(codes, two, k)
    assert torch.equal(neighbourhood_losses(logits[:, :2], two, neighbours) * weight, plain * weight)


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 60), st.integers(2, 4), st.integers(1, 4), st.integers(0, 10_000))
def test_adversary_types_counts_a_type_where_3_cells_label_it_and_an_unlabelled_batch_as_holding_all(n, n_classes,
                                                                                                 n_batches, seed):
    rng = np.random.RandomState(seed)
    labels = rng.randint(-1, n_classes, size=n)
    batch = rng.randint(n_batches, size=n)
    held = adversary_types(labels, batch, n_classes, n_batches)
    assert held.shape == (n_classes, n_batches) and held.dtype == bool
    for t in range(n_classes):
        for b in range(n_batches):
            holders = [c for c in range(n_batches) if c != b and (
                ((labels == t) & (batch == c)).sum() >= 3 or not ((labels >= 0) & (batch == c)).any())]
            assert held[t, b] == bool(holders)


def test_the_adversary_leaves_alone_a_type_that_one_batch_alone_holds():
    """Type 1 is labelled in batch 1 only: the adversary's term of its cells there is 0, whatever their neighbours;
    an unlabelled cell counts as far as the classifier calls it type 0, which both batches hold."""
    torch.manual_seed(0)
    module = VariationalAutoencoder(20, 3, (16,), likelihood=make_likelihood("nb", 20), n_categories=(2,),
                                    adversary=True, n_classes=2)
    x = torch.poisson(torch.rand(40, 20) * 4)
    batch = (torch.arange(40) % 2)[:, None]
    labels = torch.where(torch.arange(40) < 30, torch.arange(40) % 4 // 2, -1)  # types 0, 0, 1, 1, ...; 10 unlabelled
    labels = torch.where((labels == 1) & (batch[:, 0] == 0), 0, labels)  # type 1 only in batch 1
    shared = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    module.train()
    scale = GradientScale()
    scale.value = 1.0
    weights = LossWeights(adversary=0.3, shared_types=shared)
    terms = module.loss(x, batch, labels, weights=weights, gradient_scale=scale)
    alone = (labels == 1) & (batch[:, 0] == 1)
    assert alone.any() and bool((terms.adversarial[alone] == 0).all())
    ungated = module.loss(x, batch, labels, weights=LossWeights(adversary=0.3), gradient_scale=scale,
                          deterministic=True)
    gated = module.loss(x, batch, labels, weights=weights, gradient_scale=scale, deterministic=True)
    both = labels == 0  # a type both batches hold: the same term with or without the table
    torch.testing.assert_close(gated.adversarial[both], ungated.adversarial[both])
    unlabelled = (labels < 0) & (ungated.adversarial > 0)
    assert bool((gated.adversarial[unlabelled] <= ungated.adversarial[unlabelled] + 1e-6).all())


def test_with_three_batches_a_types_table_weighs_the_neighbourhoods_question():
    """Three batches, type 1 labelled in batch 2 alone (a table of weights, no table of holders): a labelled cell's
    term is its type's weight times the term without the table, which asks its batch among its neighbours' batches
    only (:func:`neighbourhood_losses`), not among all three."""
    torch.manual_seed(0)
    module = VariationalAutoencoder(20, 3, (16,), likelihood=make_likelihood("nb", 20), n_categories=(3,),
                                    adversary=True, n_classes=2)
    x = torch.poisson(torch.rand(60, 20) * 4)
    batch = (torch.arange(60) % 3)[:, None]
    labels = torch.where(batch[:, 0] == 2, torch.arange(60) % 2, 0)  # type 1 in batch 2 only, every cell labelled
    shared = torch.tensor(adversary_types(labels.numpy(), batch[:, 0].numpy(), 2, 3), dtype=torch.float32)
    assert shared.tolist() == [[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]]
    module.train()
    scale = GradientScale()
    scale.value = 1.0
    ungated = module.loss(x, batch, labels, weights=LossWeights(adversary=0.3), gradient_scale=scale,
                          deterministic=True)
    gated = module.loss(x, batch, labels, weights=LossWeights(adversary=0.3, shared_types=shared),
                        gradient_scale=scale, deterministic=True)
    torch.testing.assert_close(gated.adversarial, ungated.adversarial * shared.T[batch[:, 0], labels])
    # and it is not the question among all three batches: some cell's neighbours lack a batch
    with torch.no_grad():
        neighbours = nearest_codes(module.embed(x, batch))
    assert (batch[neighbours, 0][:, :, None] != torch.arange(3)).all(dim=1).any()


def test_the_reversed_gradient_is_minus_its_scale_times_the_gradient():
    x = torch.randn(4, 3, requires_grad=True)
    upstream = torch.randn(4, 3)
    _ScaledGradient.apply(x, -2.5).backward(upstream)
    torch.testing.assert_close(x.grad, -2.5 * upstream)


def test_the_reconstruction_gradient_is_measured_per_cell_at_the_code():
    torch.manual_seed(0)
    module = Autoencoder(20, 3, (16,), likelihood=make_likelihood("nb", 20), n_categories=(2,), adversary=True)
    x = torch.poisson(torch.rand(32, 20) * 4)
    batch = (torch.arange(32) % 2)[:, None]
    module.train()
    scale, twice = GradientScale(), GradientScale(n_processes=2)
    assert scale.value is None
    weights = LossWeights(adversary=0.3)
    terms = module.loss(x, batch, weights=weights, gradient_scale=scale)
    assert terms.adversarial is not None
    terms.total(1.0).mean().backward()
    # the same, by hand: each cell's reconstruction gradient at its code, then their root mean square
    code = module.posterior(x)["code"].detach().requires_grad_()
    nll = module.likelihood.negative_log_likelihood(module.decoder(code, batch), x)
    (per_cell,) = torch.autograd.grad(nll.sum(), code)
    assert scale.value == pytest.approx(float(per_cell.norm(dim=1).pow(2).mean().sqrt()), rel=1e-4)
    # a rank of a 2-process run holds half of each minibatch: its rows' gradients are half the cells' own
    module.loss(x, batch, weights=weights, gradient_scale=twice).total(1.0).mean().backward()
    assert twice.value == pytest.approx(2 * scale.value, rel=1e-4)
    # the module keeps no weight and no scale: without a weight there is no adversarial term
    assert module.loss(x, batch).adversarial is None
    assert module.loss(x, batch, weights=LossWeights(adversary=0.0)).adversarial is None
    assert not hasattr(module, "batch_adversary") and not hasattr(module, "reconstruction_gradient")


def _same_label_share(codes, labels, cells, k=15):
    neighbours = NearestNeighbors(n_neighbors=k + 1).fit(codes).kneighbors(codes, return_distance=False)[:, 1:]
    return (labels[neighbours[cells]] == labels[cells, None]).mean()


def _counts(types, batch, effect, seed=0, n_genes=150):
    """Poisson counts of cell types; type 3 (if any) is type 2 with a tenth of the genes 4x up; batch 1 thinned."""
    rng = np.random.RandomState(seed)
    profiles = rng.gamma(0.5, 2.0, size=(4, n_genes))
    profiles[3] = profiles[2] * np.where(rng.rand(n_genes) < 0.1, 4.0, 1.0)
    factors = np.vstack([np.ones(n_genes), np.exp(-np.abs(rng.normal(0, effect, size=n_genes)))])
    return rng.poisson(profiles[types] * factors[batch] * 3).astype(float)


PARAMS = dict(n_components=8, hidden_layer_sizes=(64,), input_activation=True, likelihood="nb", batch_norm=True,
              max_epochs=60, random_state=0)


@pytest.mark.filterwarnings("ignore::skvae.PosteriorCollapseWarning")
@pytest.mark.parametrize("batch_model", ["layers", "genes"])
def test_a_population_of_one_batch_keeps_its_neighbours_under_the_adversary(batch_model):
    """Composition shift, small: type 3 (close to type 2) in batch b only, a batch effect on b: it stays as pure as
    without batches. An adversary that pushes every cell (``shared_weight`` replaced by ones) folds it into type 2
    here, and fails this test."""
    rng = np.random.RandomState(1)
    types = rng.randint(4, size=1200)
    batch = np.where(types == 3, 1, rng.randint(2, size=1200))
    X = _counts(types, batch, effect=0.7, seed=1)
    alone = types == 3
    without = BetaVAEEmbedder(**PARAMS).fit_transform(X)
    labels = np.array(["a", "b"])[batch]
    with_adversary = BetaVAEEmbedder(**PARAMS, batch_adversary=0.3, batch_model=batch_model).fit_transform(
        X, batch=labels)
    assert _same_label_share(with_adversary, types, alone) >= _same_label_share(without, types, alone) - 0.02
    # and the shared types mix: fewer of their neighbours from their own batch than without batches
    shared = ~alone
    assert _same_label_share(with_adversary, batch, shared) < _same_label_share(without, batch, shared) - 0.05


@pytest.mark.filterwarnings("ignore::skvae.PosteriorCollapseWarning")
def test_a_population_that_one_of_three_batches_lacks_keeps_its_neighbours_under_the_adversary():
    """Three batches, small: type 3 (close to type 2) in batches 1 and 2 but not in batch 0, a batch effect on 1 and
    2. Its cells' neighbourhoods hold batches 1 and 2 alone, so the adversary asks among those
    (:func:`neighbourhood_losses`): it stays as pure as without batches. Asked among all three (the plain
    cross-entropy), it is pushed towards batch 0's type 2 and fails this test (0.84 of its neighbours its own type,
    against 0.93 without batches and with this adversary)."""
    rng = np.random.RandomState(5)
    types = rng.randint(4, size=1500)
    batch = np.where(types == 3, 1 + rng.randint(2, size=1500), rng.randint(3, size=1500))
    X = _counts(types, np.minimum(batch, 1), effect=0.7, seed=5)
    lacked = types == 3
    without = BetaVAEEmbedder(**PARAMS).fit_transform(X)
    with_adversary = BetaVAEEmbedder(**PARAMS, batch_adversary=0.3).fit_transform(X, batch=batch)
    assert _same_label_share(with_adversary, types, lacked) >= _same_label_share(without, types, lacked) - 0.02


@pytest.mark.filterwarnings("ignore::skvae.PosteriorCollapseWarning")
def test_batches_without_an_effect_change_the_labels_neighbours_no_more_than_a_seed_does():
    """Null batches, small: a random split of one sample changes the 15-NN label share by no more than a new seed."""
    rng = np.random.RandomState(2)
    types = rng.randint(4, size=1000)
    X = _counts(types, np.zeros(1000, dtype=int), effect=0.0)
    every = np.ones(1000, dtype=bool)
    seed_0 = _same_label_share(BetaVAEEmbedder(**PARAMS).fit_transform(X), types, every)
    seed_1 = _same_label_share(BetaVAEEmbedder(**{**PARAMS, "random_state": 1}).fit_transform(X), types, every)
    split = np.array(["a", "b"])[rng.randint(2, size=1000)]
    with_batches = _same_label_share(BetaVAEEmbedder(**PARAMS, batch_adversary=0.3).fit_transform(X, batch=split),
                                     types, every)
    assert abs(with_batches - seed_0) <= max(abs(seed_1 - seed_0), 0.01)


@pytest.mark.filterwarnings("ignore::skvae.PosteriorCollapseWarning")
def test_the_classifier_gates_its_adversary_only_where_labels_show_a_type_in_one_batch_alone():
    """Labels of one batch only (a reference and its query): the adversary is the embedder's, bit for bit; labels of
    both batches where type 3 is labelled in batch 1 alone: the table says so, and the codes change."""
    from skvae import BetaVAEClassifier

    rng = np.random.RandomState(3)
    types = rng.randint(4, size=400)
    batch = np.where(types == 3, 1, rng.randint(2, size=400))
    X = _counts(types, batch, effect=0.7, seed=3)
    params = {**PARAMS, "max_epochs": 3, "batch_adversary": 0.3}
    reference_only = np.where(batch == 0, types, -1)

    def codes(y, gate):
        model = BetaVAEClassifier(**params, batch_adversary_types=gate).fit(X, y, batch=batch)
        return model, model.transform(X, batch=batch)

    gated, ungated = codes(reference_only, True)[1], codes(reference_only, False)[1]
    np.testing.assert_array_equal(gated, ungated)
    model, gated = codes(types, True)
    assert model._adversary_types == ((True, True), (True, True), (True, True), (True, False))
    assert not np.array_equal(gated, codes(types, False)[1])


@pytest.mark.filterwarnings("ignore::skvae.PosteriorCollapseWarning")
def test_the_classifier_asks_among_the_batches_that_hold_a_type_where_some_of_three_lack_it():
    """Three batches, type 3 labelled in batches 1 and 2 but not 0: the table of which batch holds which type goes to
    the adversary (the two-batch gate's table alone says nothing: every type is held by another batch), and the codes
    change; with two batches, or with every type held by one batch or all, no table (the gate as before, bit for
    bit)."""
    from skvae import BetaVAEClassifier

    rng = np.random.RandomState(3)
    types = rng.randint(4, size=600)
    batch = np.where(types == 3, 1 + rng.randint(2, size=600), rng.randint(3, size=600))
    X = _counts(types, np.minimum(batch, 1), effect=0.7, seed=3)  # batches 1 and 2 in one technology
    params = {**PARAMS, "max_epochs": 3, "batch_adversary": 0.3}

    def fitted(gate, y=types, groups=batch):
        model = BetaVAEClassifier(**params, batch_adversary_types=gate).fit(X, y, batch=groups)
        return model, model.transform(X, batch=groups)

    model, asked = fitted(True)
    assert model._adversary_types is None  # every type is held by another batch
    assert model._held_types == ((True, True, True),) * 3 + ((False, True, True),)
    assert not np.array_equal(asked, fitted(False)[1])
    # type 3 in batch 1 alone: the two-batch gate's table says all, and no table of holders is needed
    alone = np.where(types == 3, 1, batch)
    model = fitted(True, groups=alone)[0]
    assert model._held_types is None and model._adversary_types[3] == (True, False, True)
    two = np.minimum(batch, 1)
    assert fitted(True, groups=two)[0]._held_types is None


def test_partial_fit_chunks_that_label_one_batch_each_gate_as_all_their_labels_together():
    """A chunk labelling batch 0 only, then one labelling batch 1: the second call's table is the one of both chunks'
    labels (the second chunk alone would gate nothing: its batch 0 unlabelled reads as holding every type); a failed
    call changes nothing, and a new fit starts the count again."""
    from skvae import BetaVAEClassifier

    rng = np.random.RandomState(3)
    types = rng.randint(4, size=400)
    batch = np.where(types == 3, 1, rng.randint(2, size=400))
    X = _counts(types, batch, effect=0.7, seed=3)
    first = np.arange(400) < 200  # both batches in each chunk (the first call fixes the categories)
    y_first, y_second = np.where(batch == 0, types, -1)[first], np.where(batch == 1, types, -1)[~first]
    table = ((True, True), (True, True), (True, True), (True, False))  # type 3: batch 1 alone
    model = BetaVAEClassifier(**PARAMS, batch_adversary=0.3)
    model.partial_fit(X[first], y_first, classes=np.arange(4), batch=batch[first])
    assert model._adversary_types == table  # no type 3 among batch 0's labels
    assert not hasattr(model, "_labelled_here")  # the call's count is handed over, not kept beside the total
    alone = BetaVAEClassifier(**PARAMS, batch_adversary=0.3)
    assert alone.partial_fit(X[~first], y_second, classes=np.arange(4), batch=batch[~first])._adversary_types is None
    model.partial_fit(X[~first], y_second, batch=batch[~first])
    assert model._adversary_types == table
    with pytest.raises(ValueError):
        model.partial_fit(X[~first][:, :-1], y_second, batch=batch[~first])
    with pytest.warns(UserWarning, match=r"without a label of type\(s\) \[3\]"):  # the types' statistics' warning
        model.partial_fit(X[first], y_first, batch=batch[first])
    assert model._adversary_types == table
    assert model.fit(X[first], y_first, batch=batch[first])._adversary_types is None
