"""The how-to page's snippets, run in order as a user pastes them, on two small synthetic 10x folders."""

import gzip
import re
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import scipy.sparse as sp

anndata = pytest.importorskip("anndata")

HOWTO = Path(__file__).parents[1] / "docs" / "howto.rst"


def _snippets():
    """The ``.. code-block:: python`` blocks of the page, dedented, in order."""
    blocks = re.findall(r"\.\. code-block:: python\n\n((?:   .*\n|\n)+)", HOWTO.read_text())
    return ["\n".join(line[3:] for line in block.splitlines()) for block in blocks]


def _write_10x(folder, genes, n_cells, seed):
    rng = np.random.RandomState(seed)
    profiles = rng.gamma(0.4, 2.0, size=(3, len(genes)))
    counts = rng.poisson(profiles[rng.randint(3, size=n_cells)] * (1.5 if seed else 1.0))
    folder.mkdir()
    with gzip.open(folder / "matrix.mtx.gz", "wb") as stream:
        scipy.io.mmwrite(stream, sp.coo_matrix(counts.T))
    (folder / "genes.tsv").write_text("".join(f"ENSG{i:05d}\tGENE{i}\n" for i in genes))
    (folder / "barcodes.tsv").write_text("".join(f"{'A' if c % 2 else 'C'}{c:04d}-1\n" for c in range(n_cells)))


@pytest.mark.filterwarnings("ignore::skvae.PosteriorCollapseWarning")
def test_the_howto_snippets_run_in_order(tmp_path, monkeypatch):
    _write_10x(tmp_path / "pbmc3k", range(300), 150, 0)
    _write_10x(tmp_path / "pbmc_facs", range(20, 280), 120, 1)  # fewer genes: the pair joins on the shared ones
    monkeypatch.chdir(tmp_path)
    snippets = _snippets()
    assert len(snippets) == 10
    namespace = {}
    for snippet in snippets:
        # the page's settings, made small: fewer genes than the toy data has, and few epochs
        snippet = snippet.replace('"data/', '"').replace(
            "make_count_embedder(random_state=0)", "make_count_embedder(n_top_genes=100, max_epochs=3, random_state=0)"
        ).replace("make_count_classifier(random_state=0)",
                  "make_count_classifier(n_top_genes=100, max_epochs=20, random_state=0)")
        exec(compile(snippet, str(HOWTO), "exec"), namespace)
    adata, query, model = namespace["adata"], namespace["query"], namespace["model"]
    assert adata.shape == (270, 260) and set(adata.obs["sample"]) == {"pbmc3k", "facs"}
    # the query's codes are the reference's own for the same cells: the columns agree
    np.testing.assert_array_equal(query.obsm["X_skvae"], adata[query.obs_names].obsm["X_skvae"])
    assert namespace["joint"].obsm["X_skvae"].shape == (270 + 120, 10)
    assert set(query.obs["predicted"]) <= {"type A", "type B"}
    corrected = namespace["corrected"]
    assert corrected.shape == (270, 100) and list(corrected.var_names) == list(model[:-1].get_feature_names_out())
    # differential expression over the two samples (paired), of the model's genes, where scanpy looks for it
    table = namespace["table"]
    assert set(table["gene"]) == set(model[:-1].get_feature_names_out())
    assert adata.uns["skvae_de"]["params"]["groupby"] == "group" and len(adata.uns["skvae_de"]["names"]) == 100
    assert table["n_samples_1"].eq(2).all() and table["pvalue"].notna().any()
    # naming a new sample: the reference's codes do not move when the query is mapped, and every cell is named
    new_sample, both = namespace["new_sample"], namespace["both"]
    assert set(new_sample.obs["skvae_label"]) <= {"type A", "type B", "unknown"}
    assert new_sample.obs["skvae_probability"].between(0, 1).all() and new_sample.obs["skvae_unknown"].dtype == bool
    assert namespace["classifier"]["classifier"].batch_categories_.tolist() == ["pbmc3k", "facs"]  # mapped: appended
    assert both.obsm["X_skvae"].shape == (150 + 120, 10)
