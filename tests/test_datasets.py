"""Reading 10x folders and fetching PBMC3k: the local copy, and the download path over a local server."""

import functools
import gzip
import http.server
import io
import tarfile
import threading

import numpy as np
import pytest

import skvae.datasets
from skvae.datasets import fetch_pbmc3k, get_data_home, load_pbmc3k_labels, read_10x_mtx

CELL_TYPES = {"Naive CD4 T", "Memory CD4 T", "CD14+ Mono", "B", "CD8 T", "FCGR3A+ Mono", "NK", "DC", "Platelet"}


@pytest.fixture(scope="module")
def pbmc3k_files():
    """The three uncompressed files of 10x's tarball, as bytes (from SKVAE_DATA, else downloaded)."""
    fetch_pbmc3k(qc=False)
    folder = get_data_home() / "pbmc3k"
    files = {}
    for name in skvae.datasets.PBMC3K_SHA256:
        path = skvae.datasets._find(folder, name)
        files[name] = (gzip.open if path.suffix == ".gz" else open)(path, "rb").read()
    return files


def make_tarball(files, extra_members=()):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=1) as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(f"filtered_gene_bc_matrices/hg19/{name}")
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
        for info, content in extra_members:
            tar.addfile(info, io.BytesIO(content) if content else None)
    return buffer.getvalue()


@pytest.fixture
def serve(tmp_path, monkeypatch):
    """Serve bytes at a URL on 127.0.0.1 and point PBMC3K_URL at it."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    def publish(content):
        (root / "pbmc3k.tar.gz").write_bytes(content)
        monkeypatch.setattr(skvae.datasets, "PBMC3K_URL", f"http://127.0.0.1:{server.server_port}/pbmc3k.tar.gz")

    yield publish
    server.shutdown()
    server.server_close()


def assert_nothing_left(data_home):
    assert not (data_home / "pbmc3k").exists() or not any((data_home / "pbmc3k").iterdir())
    assert not [p for p in data_home.iterdir() if p.name.startswith(".pbmc3k-download")]


def test_download_extract_verify_and_load(serve, pbmc3k_files, tmp_path):
    escape = tarfile.TarInfo("../../escaped.txt")
    escape.size = 3
    link = tarfile.TarInfo("filtered_gene_bc_matrices/hg19/link")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    serve(make_tarball(pbmc3k_files, [(escape, b"bad"), (link, None)]))
    data_home = tmp_path / "home"
    pbmc = fetch_pbmc3k(data_home)
    assert pbmc.data.shape == (2638, 13714)
    assert sorted(p.name for p in (data_home / "pbmc3k").iterdir()) == ["barcodes.tsv", "genes.tsv", "matrix.mtx"]
    assert not list(tmp_path.rglob("escaped.txt")) and not list(tmp_path.rglob("link"))
    assert [p.name for p in data_home.iterdir()] == ["pbmc3k"]


def test_checksum_mismatch_leaves_nothing(serve, pbmc3k_files, tmp_path):
    tampered = dict(pbmc3k_files, **{"barcodes.tsv": pbmc3k_files["barcodes.tsv"].replace(b"AAAC", b"TTTT", 1)})
    serve(make_tarball(tampered))
    with pytest.raises(OSError, match="barcodes.tsv .* does not match its sha256"):
        fetch_pbmc3k(tmp_path)
    assert_nothing_left(tmp_path)


def test_truncated_download_leaves_nothing(serve, pbmc3k_files, tmp_path):
    tarball = make_tarball(pbmc3k_files)
    serve(tarball[: len(tarball) // 2])
    with pytest.raises(OSError, match="Could not download PBMC3k"):
        fetch_pbmc3k(tmp_path)
    assert_nothing_left(tmp_path)


def test_archive_without_the_matrix_is_refused(serve, pbmc3k_files, tmp_path):
    serve(make_tarball({k: v for k, v in pbmc3k_files.items() if k != "matrix.mtx"}))
    with pytest.raises(OSError, match="no file matrix.mtx"):
        fetch_pbmc3k(tmp_path)
    assert_nothing_left(tmp_path)


def test_unreachable_url_and_no_download(tmp_path, monkeypatch):
    monkeypatch.setattr(skvae.datasets, "PBMC3K_URL", "http://127.0.0.1:9/missing.tar.gz")
    with pytest.raises(OSError, match="Could not download PBMC3k"):
        fetch_pbmc3k(tmp_path)
    with pytest.raises(OSError, match="download_if_missing=False"):
        fetch_pbmc3k(tmp_path, download_if_missing=False)
    assert_nothing_left(tmp_path)


def test_corrupted_local_copy_is_refused(pbmc3k_files, tmp_path):
    folder = tmp_path / "pbmc3k"
    folder.mkdir()
    for name, content in pbmc3k_files.items():
        (folder / name).write_bytes(content)
    (folder / "genes.tsv").write_bytes(pbmc3k_files["genes.tsv"][:-10])
    with pytest.raises(OSError, match="genes.tsv does not match PBMC3k's sha256"):
        fetch_pbmc3k(tmp_path, download_if_missing=False)


@pytest.mark.pbmc3k
def test_fetch_pbmc3k_after_qc_has_the_tutorials_cells_genes_and_types():
    pbmc = fetch_pbmc3k()
    assert pbmc.data.shape == (2638, 13714) and pbmc.data.format == "csr"
    assert set(pbmc.target_names) == CELL_TYPES
    assert pbmc.target.min() == 0 and len(np.unique(pbmc.target)) == 9
    assert len(pbmc.feature_names) == len(pbmc.gene_ids) == 13714 and len(pbmc.obs_names) == 2638
    assert np.array_equal(pbmc.data.data, np.round(pbmc.data.data)) and pbmc.data.data.min() >= 1


@pytest.mark.pbmc3k
def test_fetch_pbmc3k_without_qc_keeps_every_cell():
    pbmc = fetch_pbmc3k(qc=False)
    assert pbmc.data.shape == (2700, 32738) and pbmc.data.nnz == 2286884
    assert pbmc.data.sum() == 6390631
    assert (pbmc.target == -1).sum() == 62
    first = pbmc.obs_names.tolist().index("AAACATACAACCAC-1")
    assert pbmc.data[first].nnz == 781 and pbmc.data[first].sum() == 2421


@pytest.mark.pbmc3k
def test_labels_cover_the_cells_that_pass_qc():
    labels = load_pbmc3k_labels()
    assert set(labels) == CELL_TYPES
    assert set(labels.index) == set(fetch_pbmc3k().obs_names)


def write_folder(folder, genes, barcodes, matrix, compress):
    folder.mkdir()
    opener = gzip.open if compress else open
    suffix = ".gz" if compress else ""
    with opener(folder / f"matrix.mtx{suffix}", "wt") as f:
        f.write(matrix)
    with opener(folder / f"{'features' if compress else 'genes'}.tsv{suffix}", "wt") as f:
        f.write(genes)
    with opener(folder / f"barcodes.tsv{suffix}", "wt") as f:
        f.write(barcodes)


MATRIX = "%%MatrixMarket matrix coordinate integer general\n%\n3 2 3\n1 1 5\n3 1 1\n2 2 7\n"


@pytest.mark.parametrize("layout", ["v1", "v3"])
def test_read_10x_mtx_both_layouts(tmp_path, layout):
    v3 = layout == "v3"
    genes = "".join(f"ENSG{i}\t{s}" + ("\tGene Expression" if v3 else "") + "\n" for i, s in enumerate("ABA"))
    write_folder(tmp_path / layout, genes, "c1\nc2\n", MATRIX, compress=v3)
    counts = read_10x_mtx(tmp_path / layout)
    np.testing.assert_array_equal(counts.data.toarray(), [[5, 0, 1], [0, 7, 0]])
    assert counts.feature_names.tolist() == ["A", "B", "A-1"]
    assert counts.gene_ids.tolist() == ["ENSG0", "ENSG1", "ENSG2"]
    assert counts.obs_names.tolist() == ["c1", "c2"]


def test_read_10x_mtx_as_anndata_names_its_genes_and_keeps_the_counts(tmp_path):
    pytest.importorskip("anndata")
    write_folder(tmp_path / "v1", "".join(f"ENSG{i}\t{s}\n" for i, s in enumerate("ABA")), "c1\nc2\n", MATRIX,
                 compress=False)
    adata = read_10x_mtx(tmp_path / "v1", as_anndata=True)
    assert list(adata.var_names) == ["A", "B", "A-1"] and list(adata.var["gene_ids"]) == ["ENSG0", "ENSG1", "ENSG2"]
    assert list(adata.obs_names) == ["c1", "c2"]
    np.testing.assert_array_equal(adata.layers["counts"].toarray(), [[5, 0, 1], [0, 7, 0]])
    with pytest.raises(TypeError, match="as_anndata must be True or False, not 'yes'"):
        read_10x_mtx(tmp_path / "v1", as_anndata="yes")


def test_read_10x_mtx_reports_missing_and_inconsistent_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no matrix.mtx, features.tsv or genes.tsv, barcodes.tsv"):
        read_10x_mtx(tmp_path)
    write_folder(tmp_path / "bad", "g1\tA\n", "c1\nc2\n", MATRIX, compress=False)
    with pytest.raises(ValueError, match="3 genes x 2 cells but the folder lists 1 genes and 2 barcodes"):
        read_10x_mtx(tmp_path / "bad")


def test_data_home_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv("SKVAE_DATA", str(tmp_path))
    assert get_data_home() == tmp_path
    assert get_data_home(tmp_path / "x") == tmp_path / "x"
    monkeypatch.delenv("SKVAE_DATA")
    assert get_data_home().name == "skvae_data"


def _local_copy(pbmc3k_files, folder):
    folder.mkdir(parents=True)
    for name, content in pbmc3k_files.items():
        (folder / name).write_bytes(content)
    return folder


def test_a_features_file_placed_beside_the_verified_files_is_not_read(pbmc3k_files, tmp_path):
    folder = _local_copy(pbmc3k_files, tmp_path / "pbmc3k")
    genes = pbmc3k_files["genes.tsv"].decode().splitlines()
    tampered = "\n".join(line.split("\t")[0] + "\tTAMPERED" for line in genes) + "\n"
    (folder / "features.tsv").write_text(tampered)
    pbmc = fetch_pbmc3k(tmp_path, qc=False)
    assert "TAMPERED" not in set(pbmc.feature_names) and pbmc.feature_names[2] == "OR4F5"


def test_a_truncated_local_gz_gets_the_checksum_message(pbmc3k_files, tmp_path):
    folder = _local_copy(pbmc3k_files, tmp_path / "pbmc3k")
    (folder / "matrix.mtx").unlink()
    (folder / "matrix.mtx.gz").write_bytes(gzip.compress(pbmc3k_files["matrix.mtx"])[:5000])
    with pytest.raises(OSError, match="matrix.mtx.gz does not match PBMC3k's sha256 checksum"):
        fetch_pbmc3k(tmp_path)


def test_stale_download_folders_are_removed_and_fresh_ones_kept(serve, pbmc3k_files, tmp_path):
    import os
    import time

    stale, fresh = tmp_path / ".pbmc3k-download-stale", tmp_path / ".pbmc3k-download-fresh"
    for folder in (stale, fresh):
        folder.mkdir()
        (folder / "pbmc3k.tar.gz").write_bytes(b"half an archive")
    old = time.time() - 2 * skvae.datasets._STALE_DOWNLOAD_S
    os.utime(stale, (old, old))
    serve(make_tarball(pbmc3k_files))
    fetch_pbmc3k(tmp_path, qc=False)
    assert not stale.exists() and fresh.exists()


def _write_10x(folder, matrix_text, genes="g1\tA\ng2\tB\n", barcodes="c1\nc2\n"):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "matrix.mtx").write_text(matrix_text)
    (folder / "genes.tsv").write_text(genes)
    (folder / "barcodes.tsv").write_text(barcodes)
    return folder


def _coordinate(values, field="real"):
    lines = [f"%%MatrixMarket matrix coordinate {field} general", "2 2 2"]
    lines += [f"{i} {j} {v}" for (i, j), v in zip([(1, 1), (2, 2)], values)]
    return "\n".join(lines) + "\n"


def test_a_dense_matrix_market_array_is_read(tmp_path):
    folder = _write_10x(tmp_path / "x", "%%MatrixMarket matrix array integer general\n2 2\n1\n0\n3\n4\n")
    counts = read_10x_mtx(folder).data
    np.testing.assert_array_equal(counts.toarray(), [[1, 0], [3, 4]])  # genes x cells on file, cells x genes read


@pytest.mark.parametrize(
    ("matrix", "message"),
    [(_coordinate([1, -2]), "negative or non-integer"), (_coordinate([1, 2.5]), "negative or non-integer"),
     (_coordinate(["1 0", "2 1"], field="complex"), "complex"), (_coordinate([1, "nan"]), "NaN or infinite"),
     (_coordinate([1, 1e39]), "NaN or infinite|beyond 2\\*\\*24"), (_coordinate([1, 2**24 + 2]), "beyond 2\\*\\*24"),
     ("%%MatrixMarket matrix coordinate real general\n2 2 2\n1 1\n", "not a readable MatrixMarket")],
    ids=["negative", "fraction", "complex", "nan", "beyond-float32", "beyond-2^24", "malformed"],
)
def test_values_that_are_not_counts_are_refused_naming_the_file(matrix, message, tmp_path):
    folder = _write_10x(tmp_path / "x", matrix)
    with pytest.raises(ValueError, match=message) as error:
        read_10x_mtx(folder)
    assert "matrix.mtx" in str(error.value)


@pytest.mark.parametrize(("genes", "barcodes", "name"), [("", "c1\nc2\n", "genes.tsv"), ("g1\tA\ng2\tB\n", "", "barcodes.tsv"),
                                                         ('g1\t"A\ng2\tB\n', "c1\nc2\n", "genes.tsv")],
                         ids=["empty-genes", "empty-barcodes", "malformed-genes"])
def test_empty_or_malformed_tsv_files_are_named(genes, barcodes, name, tmp_path):
    folder = _write_10x(tmp_path / "x", _coordinate([1, 2]), genes=genes, barcodes=barcodes)
    with pytest.raises(ValueError, match=f"{name} is not a readable tab-separated file"):
        read_10x_mtx(folder)


@pytest.mark.parametrize("where", ["folder-itself", "10x-tarball-layout", "10x-layout-in-pbmc3k"])
def test_local_copies_in_the_layouts_users_have_are_found(where, pbmc3k_files, tmp_path, monkeypatch):
    monkeypatch.setattr(skvae.datasets, "PBMC3K_URL", "http://127.0.0.1:9/unused.tar.gz")  # never downloads
    folder = {"folder-itself": tmp_path, "10x-tarball-layout": tmp_path / "filtered_gene_bc_matrices" / "hg19",
              "10x-layout-in-pbmc3k": tmp_path / "pbmc3k" / "filtered_gene_bc_matrices" / "hg19"}[where]
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in pbmc3k_files.items():
        (folder / name).write_bytes(content)
    assert fetch_pbmc3k(tmp_path).data.shape == (2638, 13714)


def test_the_offline_error_says_where_it_looked_and_how_to_point_at_a_copy(tmp_path, monkeypatch):
    monkeypatch.setattr(skvae.datasets, "PBMC3K_URL", "http://127.0.0.1:9/pbmc3k.tar.gz")
    with pytest.raises(OSError) as error:
        fetch_pbmc3k(tmp_path)
    message = str(error.value)
    for needed in ("matrix.mtx, genes.tsv, barcodes.tsv", str(tmp_path / "pbmc3k"),
                   str(tmp_path / "filtered_gene_bc_matrices" / "hg19"), "SKVAE_DATA", "data_home=", "--data-home",
                   "Could not download PBMC3k"):
        assert needed in message
    assert "\n" not in message and not (tmp_path / "pbmc3k").exists()
