"""map_query: new batches learned with the reference frozen (scArches' surgery)."""

import warnings

import numpy as np
import pandas as pd
import pytest

from skvae import BetaVAEClassifier, BetaVAEEmbedder, BetaVSCEmbedder


def _cells(n=900, n_genes=50, seed=0, strength=0.8):
    """Counts of 3 types in 3 batches (a per-gene batch effect); the third batch is the query."""
    rng = np.random.RandomState(seed)
    types, batch = rng.randint(3, size=n), rng.randint(3, size=n)
    profiles = rng.gamma(0.5, 2.0, size=(3, n_genes))
    effect = np.exp(rng.normal(0.0, strength, size=(3, n_genes)))
    counts = rng.poisson(profiles[types] * effect[batch] * 3).astype(np.float32)
    return counts, np.array(["x", "y", "z"], dtype=object)[types], np.array(["a", "b", "query"], dtype=object)[batch]


def _fit(cls=BetaVAEEmbedder, counts=None, batch=None, y=None, **settings):
    model = cls(**{"likelihood": "nb", "n_components": 4, "max_epochs": 30, "random_state": 0,
                   "hidden_layer_sizes": (32,), **settings})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model.fit(counts, batch=batch) if y is None else model.fit(counts, y, batch=batch)


@pytest.mark.parametrize("settings", [
    {},  # the study's linear input layer, merged with the next at inference
    {"input_activation": True, "batch_norm": True, "dropout": 0.1},  # the count recipe's network
    {"encode_batch": True, "dispersion": "gene-batch", "hidden_layer_sizes": (32, 16)},
    {"batch_adversary": 0.3, "hidden_layer_sizes": (32, 16)},
    {"batch_model": "genes", "input_activation": True, "batch_norm": True},  # a factor per gene and batch
])
def test_the_reference_is_bit_identical_and_the_query_moves(settings):
    counts, _, batch = _cells()
    reference = batch != "query"
    model = _fit(counts=counts[reference], batch=batch[reference], **settings)
    read = {"batch": batch[reference]} if settings.get("encode_batch") or settings.get("batch_model") else {}
    codes = model.transform(counts[reference], **read)
    decoded = model.inverse_transform(codes[:20], batch="a")
    state = {key: value.clone() for key, value in model.module_.state_dict().items()}
    before = model.transform(counts[~reference], **({"batch": np.full((~reference).sum(), "a")} if read else {}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.map_query(counts[~reference], batch=batch[~reference], max_epochs=10)
    np.testing.assert_array_equal(model.transform(counts[reference], batch=batch[reference]), codes)
    np.testing.assert_array_equal(model.inverse_transform(codes[:20], batch="a"), decoded)
    assert model.batch_categories_.tolist() == ["a", "b", "query"]
    assert model.n_reference_categories_.tolist() == [2]
    after = model.transform(counts[~reference], batch=batch[~reference])
    if settings.get("encode_batch") or settings.get("batch_model"):
        assert np.abs(after - before).max() > 1e-3  # an encoder that reads the batch places the query anew
    else:  # one that reads none is not trained: the query's codes are transform's, never farther from the reference
        np.testing.assert_array_equal(after, before)
    # every weight of the reference is as it was; the tables' known rows too, and every table's new row was learned
    # (but a batch-free encoder's, all zeros)
    tables = [key for key, value in model.module_.state_dict().items() if key.endswith(".weight")
              and "offsets" in key and value.shape[0] == 3]
    assert any(key.startswith("decoder.") or key.startswith("gene_offsets") for key in tables)
    for key, value in state.items():
        new = model.module_.state_dict()[key]
        if new.shape == value.shape:
            assert np.array_equal(new.numpy(), value.numpy()), key
    for key in tables:
        new = model.module_.state_dict()[key].numpy()
        known = state[key].numpy() if key in state else np.zeros_like(new[:2])
        assert np.array_equal(new[:2], known), key
        if key.startswith("encoder.") and not settings.get("encode_batch"):
            assert not new.any(), key
        else:
            assert not np.allclose(new[2], known.mean(axis=0)), key  # moved from where it started


def test_mapping_learns_the_query_batch():
    counts, _, batch = _cells(n=1200)
    reference = batch != "query"
    scores = []
    for epochs in (1, 40):
        model = _fit(counts=counts[reference], batch=batch[reference], max_epochs=40, input_activation=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.map_query(counts[~reference], batch=batch[~reference], max_epochs=epochs)
        scores.append(model.score(counts[~reference], batch=batch[~reference]))
    # the query's evidence lower bound rises with the epochs of mapping: its batch is learned
    assert scores[1] > scores[0]


def test_several_columns_and_the_sparse_coding_model():
    counts, _, batch = _cells()
    reference = batch != "query"
    obs = pd.DataFrame({"sample": batch, "technology": np.where(batch == "a", "10x", "smart")})
    model = _fit(BetaVSCEmbedder, counts[reference], obs[reference])
    codes = model.transform(counts[reference])
    query = obs[~reference].assign(technology="drop-seq")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.map_query(counts[~reference], batch=query, max_epochs=5)
    assert model.batch_categories_["technology"].tolist() == ["10x", "smart", "drop-seq"]
    np.testing.assert_array_equal(model.transform(counts[reference], batch=obs[reference]), codes)


def test_a_mapped_classifier_keeps_the_references_predictions_and_saves(tmp_path):
    counts, types, batch = _cells()
    reference = batch != "query"
    model = _fit(BetaVAEClassifier, counts[reference], batch[reference], y=types[reference])
    probabilities = model.predict_proba(counts[reference])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.map_query(counts[~reference], batch=batch[~reference], max_epochs=10)
    np.testing.assert_array_equal(model.predict_proba(counts[reference], batch=batch[reference]), probabilities)
    assert (model.predict(counts[~reference], batch=batch[~reference]) == types[~reference]).mean() > 0.9
    model.save(tmp_path / "mapped.pt")
    loaded = BetaVAEClassifier.load(tmp_path / "mapped.pt")
    np.testing.assert_array_equal(loaded.predict_proba(counts[~reference], batch=batch[~reference]),
                                  model.predict_proba(counts[~reference], batch=batch[~reference]))
    # after mapping the encoder reads batches: a call without them is refused, not silently unmapped
    with pytest.raises(ValueError, match="batch"):
        model.transform(counts[:5])
    # partial_fit continues the mapped model (a new optimiser); fit builds a new reference, batch-free again
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.partial_fit(counts[:100], types[:100], batch=batch[:100])
        model.set_params(max_epochs=2).fit(counts[reference], types[reference], batch=batch[reference])
    assert not hasattr(model, "n_reference_categories_") and not model.module_.encode_batch
    assert model.transform(counts[:5]).shape == (5, 4)


def test_map_query_refusals_leave_the_model_as_it_was():
    counts, _, batch = _cells(n=300)
    reference = batch != "query"
    plain = _fit(counts=counts[reference])
    with pytest.raises(ValueError, match="fitted without batches"):
        plain.map_query(counts[~reference], batch=batch[~reference])
    model = _fit(counts=counts[reference], batch=batch[reference])
    with pytest.raises(ValueError, match="no category this"):
        model.map_query(counts[reference], batch=batch[reference])
    with pytest.raises(ValueError, match="features"):
        model.map_query(counts[~reference, :10], batch=batch[~reference])
    with pytest.raises(ValueError, match="needs each query cell's batch"):
        model.map_query(counts[~reference], batch=None)
    assert model.batch_categories_.tolist() == ["a", "b"]
    assert not hasattr(model, "n_reference_categories_")
    model.transform(counts[:5])  # still the batch-free encoder
