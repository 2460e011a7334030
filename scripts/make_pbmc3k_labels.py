"""Regenerate skvae/data/pbmc3k_celltypes.csv: the Seurat PBMC3k tutorial's 9 cell types.

Needs the optional extra: ``pip install -e ".[labels]"`` (scanpy, leidenalg).

Steps, as the tutorial: the QC of :func:`skvae.preprocessing.filter_cells_genes`;
LogNormalize; the 2,000 vst genes (on counts); ScaleData (clip 10); PCA; a 20-nearest-
neighbour graph on 10 PCs; Leiden at resolution 0.5. Each cluster is then named by
its marker genes: clusters and cell types are matched one to one so that the summed
mean z-scored marker expression is largest (Hungarian assignment).

Usage: python scripts/make_pbmc3k_labels.py [--data-home DIR] [--out CSV]
"""

import argparse
from pathlib import Path

import igraph as ig
import leidenalg
import numpy as np
import pandas as pd
import scanpy as sc
from scipy.optimize import linear_sum_assignment
from sklearn.neighbors import NearestNeighbors

from skvae.datasets import PBMC3K_SHA256, get_data_home, read_10x_mtx
from skvae.preprocessing import ClippedStandardScaler, HighlyVariableGenes, LogNormalizer, filter_cells_genes

MARKERS = {
    "Naive CD4 T": ["IL7R", "CCR7"],
    "Memory CD4 T": ["IL7R", "S100A4"],
    "CD14+ Mono": ["CD14", "LYZ"],
    "B": ["MS4A1"],
    "CD8 T": ["CD8A"],
    "FCGR3A+ Mono": ["FCGR3A", "MS4A7"],
    "NK": ["GNLY", "NKG7"],
    "DC": ["FCER1A", "CST3"],
    "Platelet": ["PPBP"],
}


def cluster_snn(pcs, *, n_neighbors, resolution, prune=1 / 15):
    """Seurat's FindNeighbors + FindClusters: a shared-nearest-neighbour graph, then Leiden."""
    knn = NearestNeighbors(n_neighbors=n_neighbors).fit(pcs).kneighbors_graph(pcs)  # self included
    shared = (knn @ knn.T).tocoo()
    jaccard = shared.data / (2 * n_neighbors - shared.data)
    keep = (jaccard >= prune) & (shared.row < shared.col)
    graph = ig.Graph(n=pcs.shape[0], edges=list(zip(shared.row[keep], shared.col[keep])))
    partition = leidenalg.find_partition(
        graph, leidenalg.RBConfigurationVertexPartition, weights=jaccard[keep],
        resolution_parameter=resolution, seed=0,
    )
    return np.asarray(partition.membership)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-home", default=None)
    parser.add_argument("--out", default=Path(__file__).parents[1] / "skvae" / "data" / "pbmc3k_celltypes.csv")
    args = parser.parse_args()

    folder = get_data_home(args.data_home) / "pbmc3k"
    assert all((folder / n).exists() or (folder / f"{n}.gz").exists() for n in PBMC3K_SHA256), folder
    raw = read_10x_mtx(folder)
    kept = filter_cells_genes(raw.data, raw.feature_names)
    counts = raw.data[kept.cell_mask][:, kept.gene_mask]
    genes, barcodes = raw.feature_names[kept.gene_mask], raw.obs_names[kept.cell_mask]

    variable = HighlyVariableGenes(n_top_genes=2000).fit(counts).get_support()
    lognorm = LogNormalizer().fit_transform(counts)
    adata = sc.AnnData(ClippedStandardScaler().fit_transform(lognorm[:, variable]))
    sc.tl.pca(adata, n_comps=50, svd_solver="arpack", random_state=0)
    clusters = cluster_snn(adata.obsm["X_pca"][:, :10], n_neighbors=20, resolution=0.5)

    # mean expression of each marker per cluster, z-scored across clusters
    markers = sorted({g for gs in MARKERS.values() for g in gs})
    columns = [np.flatnonzero(genes == g)[0] for g in markers]
    expression = pd.DataFrame(lognorm[:, columns].toarray(), columns=markers)
    table = expression.groupby(clusters).mean()
    z = (table - table.mean()) / table.std()
    scores = np.array([[z.loc[c, MARKERS[t]].mean() for t in MARKERS] for c in table.index])
    if len(table) != len(MARKERS):
        raise SystemExit(f"Leiden found {len(table)} clusters, not {len(MARKERS)}; the naming needs one per type.")
    rows, cols = linear_sum_assignment(-scores)
    names = {table.index[r]: list(MARKERS)[c] for r, c in zip(rows, cols)}

    cell_types = pd.Series([names[c] for c in clusters], index=pd.Index(barcodes, name="barcode"), name="cell_type")
    print("Cluster sizes:")
    print(cell_types.value_counts().to_string())
    print("\nMean log-normalised marker expression per cell type:")
    print(table.rename(index=names).sort_index().round(2).to_string())
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    cell_types.to_csv(args.out)
    print(f"\nWrote {len(cell_types)} labels to {args.out}")


if __name__ == "__main__":
    main()
