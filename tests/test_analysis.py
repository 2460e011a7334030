"""Analyses over a fitted model (skvae.analysis): they read it through its public methods and return values."""

import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from skvae import BetaVAEClassifier, BetaVAEEmbedder, make_count_classifier, make_count_embedder
from skvae.analysis import corrected_expression, type_statistics


def _fitted(cls=BetaVAEEmbedder, y=None, **options):
    rng = np.random.RandomState(0)
    types = np.arange(120) % 3
    counts = rng.poisson(rng.gamma(0.6, 3.0, size=(3, 50))[types]).astype(np.float64)
    batch = np.where(np.arange(120) < 60, "a", "b")
    counts[batch == "b", :10] *= 3  # a batch effect on 10 genes
    model = cls(n_components=2, hidden_layer_sizes=(16,), likelihood="nb", max_epochs=20, random_state=0, **options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(counts, *(() if y is None else (types,)), batch=batch)
    return model, counts, batch, types


def test_corrected_expression_decodes_every_cell_in_the_batch_asked_for():
    model, counts, batch, _ = _fitted()
    in_a = corrected_expression(model, counts, to_batch="a")
    np.testing.assert_array_equal(in_a, model.inverse_transform(model.transform(counts), batch="a"))
    both = corrected_expression(model, counts, to_batch=["a", "b"])
    np.testing.assert_allclose(both, (in_a + corrected_expression(model, counts, to_batch="b")) / 2, rtol=1e-6)
    assert in_a.shape == counts.shape and (in_a >= 0).all()


def test_corrected_expression_says_what_a_model_needs():
    model, counts, _, _ = _fitted()
    with pytest.raises(ValueError, match="give to_batch"):
        corrected_expression(model, counts)
    with pytest.raises(ValueError, match="empty list"):
        corrected_expression(model, counts, to_batch=[])
    with pytest.raises(ValueError, match="categories not seen in fit"):
        corrected_expression(model, counts, to_batch="z")
    plain = BetaVAEEmbedder(n_components=2, hidden_layer_sizes=(16,), likelihood="nb", max_epochs=2,
                            random_state=0).fit(counts)
    with pytest.raises(ValueError, match="fitted without batches"):
        corrected_expression(plain, counts, to_batch="a")
    assert corrected_expression(plain, counts).shape == counts.shape


def test_corrected_expression_of_a_pipeline_is_of_its_selected_genes():
    _, counts, batch, _ = _fitted()
    recipe = make_count_embedder(n_top_genes=20, max_epochs=2, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        recipe.fit(counts, batch=batch)
    assert corrected_expression(recipe, counts, to_batch="a").shape == (120, 20)


def test_type_statistics_read_the_classifier_as_it_learned_the_types():
    model, counts, _, types = _fitted(BetaVAEClassifier, y=True)
    table = type_statistics(model)
    assert table.index.tolist() == [0, 1, 2] and table["n_labelled"].tolist() == [40, 40, 40]
    assert (table["spread"] > 0).all() and np.isfinite(table["median_distance"]).all()
    # each type's markers: genes it expresses above the other types, as the unknown flag checks them
    for c, row in zip(range(3), table["markers"], strict=True):
        assert len(row) >= 1 and row == model.class_markers_[c][model.class_markers_[c] >= 0].tolist()
        logged = np.log1p(1e4 * counts / counts.sum(axis=1, keepdims=True))  # log-normalised, as markers are chosen
        means = np.array([logged[types == t].mean(axis=0) for t in range(3)])
        assert all((means[c, g] > np.delete(means, c, axis=0)[:, g]).all() for g in row)
    assert ((table["marker_share"] > 0) & (table["marker_share"] < 1)).all()


def test_type_statistics_name_the_markers_by_the_genes_of_a_recipe():
    rng = np.random.RandomState(0)
    types = np.arange(150) % 3
    counts = pd.DataFrame(rng.poisson(rng.gamma(0.6, 3.0, size=(3, 30))[types]).astype(np.float64),
                          columns=[f"gene{i}" for i in range(30)])
    recipe = make_count_classifier(n_top_genes=20, max_epochs=2, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        recipe.fit(counts, types)
    table = type_statistics(recipe)
    kept = set(recipe[:-1].get_feature_names_out())
    assert all(isinstance(name, str) and name in kept for row in table["markers"] for name in row)


def _donors(n_donors=6, cells=40, genes=40, seed=0, effect_genes=4, batch_effect=False):
    """Counts of donors (half treated), a treatment effect on the first genes, and optionally a batch effect."""
    rng = np.random.RandomState(seed)
    donor = np.repeat(np.arange(n_donors), cells)
    treated = donor >= n_donors // 2
    means = rng.gamma(1.0, 3.0, size=genes) * np.exp(rng.normal(scale=0.2, size=(n_donors, genes)))[donor]
    means = means * np.where(treated[:, None] & (np.arange(genes) < effect_genes), 4.0, 1.0)
    batch = np.where(np.isin(donor, [0, 1, n_donors // 2]), "a", "b")
    if batch_effect:
        means = means * np.where((batch == "b")[:, None], np.exp(rng.normal(scale=1.0, size=genes)), 1.0)
    return rng.poisson(means).astype(np.float64), np.where(treated, "treated", "control"), donor, batch


def _model(counts, batch=None, epochs=10):
    model = BetaVAEEmbedder(n_components=3, hidden_layer_sizes=(16,), likelihood="nb", max_epochs=epochs,
                            random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model.fit(counts, batch=batch)


def test_differential_expression_over_donors_finds_the_treated_genes_and_reads_as_deseq2():
    pytest.importorskip("pydeseq2")
    from skvae.analysis import differential_expression

    counts, condition, donor, _ = _donors()
    result = differential_expression(_model(counts), counts, condition, "treated", "control", samples=donor)
    called, treated = set(result.index[result["is_de"]]), {"gene0", "gene1", "gene2", "gene3"}
    assert treated <= called and len(called - treated) <= 1  # at 5 % FDR, a false call may come
    assert result.loc[list(treated), "log2FoldChange"].between(1.5, 2.5).all()  # simulated log2(4) = 2
    assert result.attrs["design"] == "~ group" and not result.attrs["paired"]
    assert result[["n_samples_1", "n_samples_2"]].iloc[0].tolist() == [3, 3]
    assert {"log2FoldChange", "lfcSE", "pvalue", "padj", "is_de", "mean_1", "fraction_2"} <= set(result.columns)
    # each group's mean counts per 10,000 and share of cells with a count (no batches: the counts as they are)
    per_10k = counts / counts.sum(axis=1, keepdims=True) * 1e4
    treated = condition == "treated"
    np.testing.assert_allclose(result["mean_1"], per_10k[treated].mean(axis=0))
    np.testing.assert_allclose(result["fraction_2"], (counts[~treated] > 0).mean(axis=0))
    # one against the rest gives the same here (the rest is the control group)
    rest = differential_expression(_model(counts), counts, condition, "treated", samples=donor)
    np.testing.assert_allclose(rest["pvalue"], result["pvalue"])
    # DESeq2's own shrinkage lowers some genes' dispersions below their own estimates: never larger p-values overall
    deseq2 = differential_expression(_model(counts), counts, condition, "treated", samples=donor, shrinkage="deseq2")
    assert result.attrs["shrinkage"] == "upward" and deseq2.attrs["shrinkage"] == "deseq2"
    assert np.nanmedian(deseq2["pvalue"]) <= np.nanmedian(result["pvalue"])
    assert (deseq2["lfcSE"] <= result["lfcSE"] + 1e-9).mean() > 0.95  # the upward dispersions widen the errors
    with pytest.raises(ValueError, match="shrinkage"):
        differential_expression(_model(counts), counts, condition, "treated", samples=donor, shrinkage="none")


def test_differential_expression_without_samples_gives_effect_sizes_and_says_why():
    from skvae.analysis import differential_expression

    counts, condition, _, _ = _donors()
    with pytest.warns(UserWarning, match="no p-values"):
        result = differential_expression(_model(counts, epochs=30), counts, condition, "treated")
    assert result["pvalue"].isna().all() and not result["is_de"].any() and "samples=" in result.attrs["note"]
    assert result["log2FoldChange"][:4].mean() > result["log2FoldChange"][4:].mean() + 0.5


def test_a_paired_design_within_donors_and_batches_corrected_through_the_decoder():
    pytest.importorskip("pydeseq2")
    from skvae.analysis import differential_expression

    counts, _, donor, batch = _donors(batch_effect=True)
    # two "types" within every donor: a paired design, one batch per donor, groups sharing both batches
    kind = np.where(np.arange(len(counts)) % 2 == 0, "x", "y")
    model = _model(counts, batch=batch)
    result = differential_expression(model, counts, kind, "x", "y", samples=donor, batch=batch)
    assert result.attrs["design"] == "~ sample + group" and result.attrs["paired"]
    assert result.attrs["shared_batches"] == ["a", "b"]
    assert result["is_de"].sum() <= 1  # no difference between the two random halves
    with pytest.raises(ValueError, match="fitted with batches"):
        differential_expression(model, counts, kind, "x", samples=donor)
    # several batch columns, as a DataFrame or a dict: decoded under the first column's shared batches
    import pandas as pd

    obs = pd.DataFrame({"batch": batch, "tech": np.where(np.arange(len(batch)) % 3, "x", "y")})
    two = _model(counts, batch=obs)
    for passed in (obs, {key: obs[key].to_numpy() for key in obs}):
        columns = differential_expression(two, counts, kind, "x", "y", samples=donor, batch=passed)
        assert columns.attrs["shared_batches"] == ["a", "b"] and columns["is_de"].sum() <= 1
    # batch= checked as every method checks it, before the test: a missing column, a wrong length
    with pytest.raises(ValueError, match=r"lacks the column\(s\) \['batch'\]"):
        differential_expression(two, counts, kind, "x", "y", samples=donor, batch=obs[["tech"]])
    with pytest.raises(ValueError, match="batch"):
        differential_expression(model, counts, kind, "x", "y", samples=donor, batch=batch[:-1])
    # a donor without cells of one group (a rare type it lacks) has nothing to pair: left out, with a warning
    kind[donor == 5] = "x"
    with pytest.warns(UserWarning, match=r"Samples \['5'\] have cells of one group only"):
        fewer = differential_expression(model, counts, kind, "x", "y", samples=donor, batch=batch)
    assert fewer[["n_samples_1", "n_samples_2"]].iloc[0].tolist() == [5, 5] and fewer.attrs["paired"]


def test_groups_spread_unevenly_over_the_batches_get_a_warning_and_a_note():
    pytest.importorskip("pydeseq2")
    from skvae.analysis import differential_expression

    counts, condition, donor, batch = _donors(batch_effect=True)  # controls 2:1 over batches a:b, treated 1:2
    model = _model(counts, batch=batch)
    with pytest.warns(UserWarning, match=r"spread unevenly over the batches \(batch 'a' holds 67 % of group1's "
                                         r"samples and 33 % of group2's\)"):
        uneven = differential_expression(model, counts, condition, "control", "treated", samples=donor, batch=batch)
    assert uneven.attrs["batch_imbalance"] == pytest.approx(1 / 3) and "stricter fdr" in uneven.attrs["note"]
    # every donor's cells half in each batch: the groups spread alike, nothing to say
    alike = np.where(np.arange(len(counts)) % 2 == 0, "a", "b")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        even = differential_expression(_model(counts, batch=alike), counts, condition, "control", "treated",
                                       samples=donor, batch=alike)
    assert even.attrs["batch_imbalance"] == pytest.approx(0) and "note" not in even.attrs


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abc"), st.integers(0, 5)), min_size=2, max_size=40), st.integers(1, 5))
def test_batch_imbalance_is_a_symmetric_distance_between_the_groups_spreads(cells, split):
    from skvae.analysis._de import batch_imbalance

    batches = np.array([batch for batch, _ in cells], dtype=object)
    samples = np.array([sample for _, sample in cells])
    first = samples < split  # each sample in one group
    if first.all() or not first.any():
        return
    distance, shares = batch_imbalance(batches, samples, first)
    swapped, _ = batch_imbalance(batches, samples, ~first)
    assert 0.0 <= distance <= 1.0 + 1e-12 and distance == pytest.approx(swapped)
    np.testing.assert_allclose(shares.sum(), 1.0)  # each group's average composition sums to 1
    if not set(batches[first]) & set(batches[~first]):
        assert distance == pytest.approx(1.0)  # no shared batch
    # the same cells' batches on every sample of both groups: no imbalance
    assert batch_imbalance(np.tile(batches[:2], 2), [0, 0, 1, 1], [True, True, False, False])[0] == 0.0


@pytest.mark.parametrize(("change", "message"), [
    (dict(group1="missing"), "has no cells"),
    (dict(group1="treated", group2="treated"), "the same group"),
    (dict(groups=np.array([None] * 240, dtype=object)), "missing labels"),
    (dict(samples=np.where(np.arange(240) < 120, 0, 1)), "at least 2 in each"),
    (dict(samples=np.where(np.arange(240) % 3 == 0, 7, np.repeat(np.arange(6), 40))), "each sample belongs to one"),
    (dict(samples=np.full(240, np.nan)), "missing values"),
    (dict(fdr=1.5), "fdr must be"),
    (dict(fdr=True), "fdr must be"),
])
def test_differential_expression_refuses_what_it_cannot_test(change, message):
    pytest.importorskip("pydeseq2")
    from skvae.analysis import differential_expression

    counts, condition, donor, _ = _donors()
    arguments = dict(groups=condition, group1="treated", group2=None, samples=donor)
    arguments.update(change)
    with pytest.raises(ValueError, match=message):
        differential_expression(_model(counts, epochs=1), counts, arguments.pop("groups"), arguments.pop("group1"),
                                **arguments)


def test_differential_expression_refuses_confounded_groups_and_a_model_of_scaled_data():
    from skvae.analysis import differential_expression

    counts, condition, donor, _ = _donors()
    confounded = np.where(condition == "treated", "b", "a")  # each group in a batch of its own
    with pytest.raises(ValueError, match="confounded"):
        differential_expression(_model(counts, batch=confounded), counts, condition, "treated", samples=donor,
                                batch=confounded)
    scaled = BetaVAEEmbedder(n_components=2, hidden_layer_sizes=(8,), max_epochs=1, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scaled.fit(np.log1p(counts))
    with pytest.raises(ValueError, match="tests counts"):
        differential_expression(scaled, np.log1p(counts), condition, "treated", samples=donor)


def test_tl_differential_expression_writes_what_rank_genes_groups_readers_read(tmp_path):
    pytest.importorskip("pydeseq2")
    anndata = pytest.importorskip("anndata")
    import pandas as pd

    import skvae

    counts, condition, donor, _ = _donors()
    kind = np.where(np.arange(len(counts)) % 2 == 0, "x", "y")
    adata = anndata.AnnData(counts.astype(np.float32), obs=pd.DataFrame(
        {"donor": donor.astype(str), "condition": condition, "kind": kind}, index=[f"c{i}" for i in range(len(counts))]))
    adata.var_names = [f"g{i}" for i in range(counts.shape[1])]
    model = BetaVAEEmbedder(n_components=3, hidden_layer_sizes=(16,), likelihood="nb", max_epochs=5, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        skvae.tl.embed(adata, model)
    table = skvae.tl.differential_expression(adata, model, groupby="kind", sample_key="donor", key_added="de")
    assert sorted(table["group"].unique()) == ["x", "y"]  # every group against the rest (paired within donors)
    record = adata.uns["de"]
    assert record["params"]["groupby"] == "kind" and record["params"]["reference"] == "rest"
    for field in ("names", "scores", "logfoldchanges", "pvals", "pvals_adj"):
        assert record[field].dtype.names == ("x", "y") and len(record[field]) == counts.shape[1]
    # each group's genes by p-value, named as adata names them
    assert list(record["names"]["x"]) == table.loc[table["group"] == "x", "gene"].tolist()
    assert np.all(np.diff(record["pvals"]["x"][np.isfinite(record["pvals"]["x"])]) >= 0)
    assert set(record["names"]["x"]) == set(adata.var_names)
    # scanpy.get.rank_genes_groups_df reads each field's column of the group, after checking params["method"]
    assert record["params"]["method"] != "logreg"
    read = pd.concat([pd.DataFrame(record[field])["x"] for field in ("names", "scores", "logfoldchanges", "pvals",
                                                                      "pvals_adj")], axis=1)
    ours = table[table["group"] == "x"]
    np.testing.assert_allclose(read.iloc[:, 3].astype(float), ours["pvalue"], equal_nan=True)
    # and it survives an h5ad file, as rank_genes_groups' does
    adata.write_h5ad(tmp_path / "de.h5ad")
    again = anndata.read_h5ad(tmp_path / "de.h5ad").uns["de"]
    assert list(again["names"]["x"]) == list(record["names"]["x"])
    np.testing.assert_array_equal(again["pvals"]["y"], record["pvals"]["y"])
    with pytest.raises(ValueError, match="not a column of adata.obs"):
        skvae.tl.differential_expression(adata, model, groupby="cluster")
    with pytest.warns(UserWarning, match="no p-values"):
        without = skvae.tl.differential_expression(adata, model, groupby="condition", group1="treated")
    assert without["pvalue"].isna().all()
    # every group against the rest: the note of no p-values once; a donor lacking a group still says so each time
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        skvae.tl.differential_expression(adata, model, groupby="kind")
    assert sum("no p-values" in str(warning.message) for warning in caught) == 1
    adata.obs.loc[adata.obs["donor"] == "5", "kind"] = "x"
    with pytest.warns(UserWarning, match=r"Samples \['5'\] have cells of one group only"):
        skvae.tl.differential_expression(adata, model, groupby="kind", sample_key="donor")
