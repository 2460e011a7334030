"""Reading 10x Genomics matrices and fetching PBMC3k, in the style of ``sklearn.datasets``."""

import gzip
import hashlib
import os
import shutil
import tarfile
import tempfile
import time
import urllib.request
import zlib
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.io
import scipy.sparse as sp
from sklearn.utils import Bunch

from .preprocessing import filter_cells_genes

PBMC3K_URL = "https://cf.10xgenomics.com/samples/cell/pbmc3k/pbmc3k_filtered_gene_bc_matrices.tar.gz"
# sha256 of the uncompressed files inside 10x's tarball (filtered_gene_bc_matrices/hg19/)
PBMC3K_SHA256 = {
    "matrix.mtx": "7d92358b9d29128a225c50f2a662d6ccca9c71bc665e0af82692ed1361eb94e4",
    "genes.tsv": "8778dd78085086be6dcafa8334f95f7cf76b25526e8ef2b63186db5127a1492c",
    "barcodes.tsv": "58c2a224a2b4258f7e8799a18890bda6d23824b247b80db2b08a0dcc36a4c660",
}
_DOWNLOAD_TIMEOUT_S = 60
# A scratch folder of a download older than this was left by a killed process: it is removed.
_STALE_DOWNLOAD_S = 3600
# float32 holds every integer up to 2**24 exactly; larger counts would be rounded silently.
_LARGEST_EXACT_COUNT = 2**24
# What a damaged gzip file or a truncated stream raises while it is read.
_READ_ERRORS = (EOFError, gzip.BadGzipFile, zlib.error, UnicodeDecodeError)


def get_data_home(data_home=None):
    """Folder that holds skvae's datasets.

    Parameters
    ----------
    data_home : str or path-like, default=None
        Used as is when given; else ``$SKVAE_DATA``, else ``~/skvae_data``.

    Returns
    -------
    data_home : pathlib.Path

    Examples
    --------
    >>> from skvae.datasets import get_data_home
    >>> get_data_home("/data/single-cell").as_posix()
    '/data/single-cell'
    """
    return Path(data_home or os.environ.get("SKVAE_DATA") or Path.home() / "skvae_data").expanduser()


def _find(folder, *names):
    """First existing file among ``names``, each also tried with ``.gz``; None if none."""
    for name in names:
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


def _open_binary(path):
    """The file's content, uncompressed for ``.gz`` files."""
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def read_10x_mtx(path, *, as_anndata=False):
    """Read a 10x Genomics matrix folder as cells x genes counts.

    Both layouts are understood: Cell Ranger 1-2 (``matrix.mtx``, ``genes.tsv``,
    ``barcodes.tsv``) and Cell Ranger 3+ (``matrix.mtx.gz``, ``features.tsv.gz``,
    ``barcodes.tsv.gz``); any file may be gzipped.

    Parameters
    ----------
    path : str or path-like
        The folder.
    as_anndata : bool, default=False
        Return an ``anndata.AnnData`` (needs the ``anndata`` extra), as
        ``scanpy.read_10x_mtx`` would: the counts in ``X`` and in
        ``layers["counts"]``, gene symbols (made unique) as ``var_names``, Ensembl
        ids in ``var["gene_ids"]``, barcodes as ``obs_names``.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch` or anndata.AnnData
        ``data``: scipy.sparse CSR float32 matrix of shape (n_cells, n_genes);
        ``feature_names``: gene symbols made unique as scanpy does (the second
        ``X`` becomes ``X-1``); ``gene_ids``: Ensembl ids; ``obs_names``: barcodes.
        With ``as_anndata=True``, the AnnData described above.

    Examples
    --------
    >>> from skvae.datasets import fetch_pbmc3k, get_data_home, read_10x_mtx
    >>> _ = fetch_pbmc3k()  # downloads the files if they are not there yet
    >>> counts = read_10x_mtx(get_data_home() / "pbmc3k")
    >>> counts.data.shape, counts.feature_names[:3].tolist()
    ((2700, 32738), ['MIR1302-10', 'FAM138A', 'OR4F5'])
    >>> read_10x_mtx(get_data_home() / "pbmc3k", as_anndata=True).var["gene_ids"].iloc[0]
    'ENSG00000243485'
    """
    if not isinstance(as_anndata, (bool, np.bool_)):
        raise TypeError(f"as_anndata must be True or False, not {as_anndata!r}.")
    folder = Path(path)
    matrix = _find(folder, "matrix.mtx")
    genes = _find(folder, "features.tsv", "genes.tsv")
    barcodes = _find(folder, "barcodes.tsv")
    missing = [name for name, found in [("matrix.mtx", matrix), ("features.tsv or genes.tsv", genes),
                                        ("barcodes.tsv", barcodes)] if found is None]
    if missing:
        raise FileNotFoundError(f"{folder} is not a 10x matrix folder: no {', '.join(missing)}.")
    data = _read_10x_files(matrix, genes, barcodes)
    if not as_anndata:
        return data
    from .tl import _import_anndata

    adata = _import_anndata().AnnData(data.data, layers={"counts": data.data.copy()})
    adata.obs_names = data.obs_names.astype(str)
    adata.var_names = data.feature_names.astype(str)
    adata.var["gene_ids"] = data.gene_ids.astype(str)
    return adata


def _read_10x_files(matrix, genes, barcodes):
    """The Bunch of :func:`read_10x_mtx` from these three files, each checked."""
    counts = _read_counts(matrix)
    features = _read_tsv(genes)
    cells = _read_tsv(barcodes)[0].to_numpy()
    if counts.shape != (len(cells), len(features)):
        raise ValueError(
            f"{matrix.name} is {counts.shape[1]} genes x {counts.shape[0]} cells but the folder lists "
            f"{len(features)} genes and {len(cells)} barcodes."
        )
    return Bunch(
        data=counts,
        feature_names=_make_unique(features[1 if features.shape[1] > 1 else 0].to_numpy()),
        gene_ids=features[0].to_numpy(),
        obs_names=cells,
    )


def _read_counts(path):
    """The matrix of a MatrixMarket file (sparse "coordinate" or dense "array") as cells x genes float32 CSR."""
    try:
        with _open_binary(path) as stream:
            matrix = scipy.io.mmread(stream)
    except (ValueError, IndexError, *_READ_ERRORS) as exc:
        raise ValueError(f"{path} is not a readable MatrixMarket file: {exc}") from None
    counts = sp.csr_matrix(matrix.T)
    values = counts.data
    if not np.issubdtype(values.dtype, np.number) or np.iscomplexobj(values):
        raise ValueError(f"{path} holds {values.dtype} values, not counts.")
    if values.size:
        if not np.isfinite(values).all():
            raise ValueError(f"{path} holds NaN or infinite values, not counts.")
        if values.min() < 0 or (values != np.round(values)).any():
            raise ValueError(f"{path} holds negative or non-integer values: it is not a matrix of UMI counts.")
        if values.max() > _LARGEST_EXACT_COUNT:
            raise ValueError(f"{path} holds counts up to {values.max():.0f}, beyond 2**24: float32 would round them.")
    return counts.astype(np.float32)


def _read_tsv(path):
    """A headerless tab-separated file of strings, with errors that name it."""
    try:
        table = pd.read_csv(path, sep="\t", header=None, dtype=str)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, *_READ_ERRORS) as exc:
        raise ValueError(f"{path} is not a readable tab-separated file: {exc}") from None
    if table.isna().any().any():
        raise ValueError(f"{path} has empty fields.")
    return table


def _make_unique(names):
    """Suffix repeated names with -1, -2, ... in order of appearance (scanpy's convention)."""
    names = pd.Series(names, dtype=object)
    repeat = names.groupby(names).cumcount()
    return np.where(repeat > 0, names + "-" + repeat.astype(str), names).astype(object)


def _sha256(path):
    """sha256 of a file's content, of the uncompressed content for ``.gz`` files."""
    digest = hashlib.sha256()
    with _open_binary(path) as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _verify_pbmc3k(folder):
    """The three files of PBMC3k in ``folder``, each checked against its sha256: exactly the files to read."""
    files = {}
    for name, expected in PBMC3K_SHA256.items():
        found = files[name] = _find(folder, name)
        try:
            matches = _sha256(found) == expected
        except _READ_ERRORS:  # a truncated or damaged .gz
            matches = False
        if not matches:
            raise OSError(f"{found} does not match PBMC3k's sha256 checksum; delete it to download it again.")
    return files


def _remove_stale_downloads(parent):
    """Scratch folders of downloads that a killed process left behind."""
    for scratch in parent.glob(".pbmc3k-download-*"):
        if time.time() - scratch.stat().st_mtime > _STALE_DOWNLOAD_S:
            shutil.rmtree(scratch, ignore_errors=True)


def _download_pbmc3k(folder, url):
    """Download 10x's tarball and put its three verified files into ``folder``.

    Members are read, never extracted by their own names, so an archive cannot write
    outside ``folder`` nor create links. All work happens in a temporary folder;
    only files that passed their checksum are moved into place, each atomically.
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_downloads(folder.parent)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=".pbmc3k-download-") as scratch:
        scratch = Path(scratch)
        archive = scratch / "pbmc3k.tar.gz"
        try:
            with urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as response, open(archive, "wb") as out:
                shutil.copyfileobj(response, out)
            with tarfile.open(archive, "r:gz") as tar:
                members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
                for name in PBMC3K_SHA256:
                    if name not in members:
                        raise OSError(f"the archive from {url} has no file {name}.")
                    with tar.extractfile(members[name]) as source, open(scratch / name, "wb") as target:
                        shutil.copyfileobj(source, target)
        except (OSError, EOFError, tarfile.TarError) as exc:
            raise OSError(f"Could not download PBMC3k from {url}: {exc}") from exc
        for name, expected in PBMC3K_SHA256.items():
            if _sha256(scratch / name) != expected:
                raise OSError(f"{name} downloaded from {url} does not match its sha256 checksum; nothing was kept.")
        folder.mkdir(exist_ok=True)
        for name in PBMC3K_SHA256:
            os.replace(scratch / name, folder / name)


def _pbmc3k_folders(home):
    """Where PBMC3k's files may be: skvae's layout, the folder itself, 10x's extracted tarball."""
    tarball = Path("filtered_gene_bc_matrices") / "hg19"
    return [home / "pbmc3k", home, home / "pbmc3k" / tarball, home / tarball]


def _local_pbmc3k(home):
    """The first of :func:`_pbmc3k_folders` that holds all three files, or None."""
    return next((folder for folder in _pbmc3k_folders(home) if all(_find(folder, name) for name in PBMC3K_SHA256)),
                None)


def _not_found_message(searched, why):
    names = ", ".join(PBMC3K_SHA256)
    folders = "; ".join(str(folder) for folder in searched)
    return (
        f"PBMC3k's files ({names}, each possibly .gz) are not on this machine, and downloading them failed: "
        f"{why}. Searched: {folders}. To use a copy you have, put the three files, or 10x's extracted tarball, "
        f"in {searched[0]}, or point skvae at the folder that holds pbmc3k/: the SKVAE_DATA environment "
        "variable, data_home= in Python, or --data-home on the command line."
    )


def load_pbmc3k_labels():
    """Cell types of PBMC3k from the Seurat tutorial's clustering, shipped with skvae.

    Returns
    -------
    labels : pandas.Series
        Cell type per barcode (index), for the 2,638 cells that pass QC.

    Examples
    --------
    >>> from skvae.datasets import load_pbmc3k_labels
    >>> labels = load_pbmc3k_labels()
    >>> len(labels), labels.nunique()
    (2638, 9)
    """
    with resources.files("skvae").joinpath("data/pbmc3k_celltypes.csv").open() as stream:
        return pd.read_csv(stream, index_col="barcode")["cell_type"]


def fetch_pbmc3k(data_home=None, *, download_if_missing=True, qc=True):
    """Load 10x Genomics' PBMC3k counts, with cell-type labels; download if needed.

    Looks for 10x's three files (``matrix.mtx``, ``genes.tsv``, ``barcodes.tsv``,
    each possibly gzipped) in ``data_home/pbmc3k/``, in ``data_home`` itself, and in
    the layout of 10x's extracted tarball (``.../filtered_gene_bc_matrices/hg19/``);
    downloads the tarball into ``data_home/pbmc3k/`` when none holds them; and
    checks every file's sha256 before reading it. When the files can be neither
    found nor downloaded, the error lists the folders searched and how to point
    skvae at a local copy.

    Parameters
    ----------
    data_home : str or path-like, default=None
        Folder of skvae's datasets; see :func:`get_data_home`.
    download_if_missing : bool, default=True
        Download the data when it is not in ``data_home``; else raise OSError.
    qc : bool, default=True
        Apply the Seurat tutorial's quality control (see
        :func:`skvae.preprocessing.filter_cells_genes`): 2,638 cells x 13,714 genes.
        Without it: all 2,700 cells x 32,738 genes.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        ``data``: scipy.sparse CSR float32 UMI counts of shape (n_cells, n_genes);
        ``feature_names``: unique gene symbols; ``gene_ids``: Ensembl ids;
        ``obs_names``: barcodes; ``target``: int cell-type code per cell (-1 for
        cells that fail QC, which have no label); ``target_names``: the 9 cell types.

    Examples
    --------
    >>> from skvae.datasets import fetch_pbmc3k
    >>> pbmc = fetch_pbmc3k()
    >>> pbmc.data.shape, len(pbmc.target_names)
    ((2638, 13714), 9)
    """
    home = get_data_home(data_home)
    folder = _local_pbmc3k(home)
    if folder is None:
        searched = _pbmc3k_folders(home)
        folder = home / "pbmc3k"
        if not download_if_missing:
            raise OSError(_not_found_message(searched, "download_if_missing=False"))
        try:
            _download_pbmc3k(folder, PBMC3K_URL)
        except OSError as exc:
            raise OSError(_not_found_message(searched, str(exc))) from None
    # read exactly the files whose checksums were verified (not, say, a features.tsv placed beside them)
    files = _verify_pbmc3k(folder)
    counts = _read_10x_files(files["matrix.mtx"], files["genes.tsv"], files["barcodes.tsv"])

    labels = load_pbmc3k_labels()
    target_names = np.array(sorted(labels.unique()), dtype=object)
    cell_types = pd.Categorical(labels.reindex(counts.obs_names), categories=target_names)
    counts.target, counts.target_names = np.asarray(cell_types.codes, dtype=np.int64), target_names

    if qc:
        kept = filter_cells_genes(counts.data, counts.feature_names)
        counts.data = counts.data[kept.cell_mask][:, kept.gene_mask]
        for key in ("feature_names", "gene_ids"):
            counts[key] = counts[key][kept.gene_mask]
        for key in ("obs_names", "target"):
            counts[key] = counts[key][kept.cell_mask]
    return counts
