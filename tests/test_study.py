"""The study command on the real PBMC3k (reduced epochs) and the example scripts in quick mode."""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.pipeline import make_pipeline

from skvae import AutoencoderEmbedder
from skvae.datasets import fetch_pbmc3k
from skvae.preprocessing import ClippedStandardScaler, LogNormalizer
from skvae.study import run_study
from skvae.study.cli import main
from skvae.study.evaluation import latent_scores

EXAMPLES = sorted((Path(__file__).parents[1] / "examples").glob("*.py"))
# what each example must print: its result, not just something
EXPECTED_OUTPUT = {
    "grid_search_beta.py": r"best beta: (0\.5|1|2|4)(\.0)?\n",
    "pca_drop_in.py": r"ARI[\s\S]*kNN accuracy",
    "pipeline_tsne.py": r"t-SNE of 2638 cells saved to pipeline_tsne\.png",
    "vsc_sparsity.py": r"Share of \(cell, dimension\) pairs active \(gamma > 0\.5\): (0|1)\.\d\d",
}


@pytest.mark.slow
def test_study_command_writes_the_report(tmp_path, capsys):
    main(["study", "--epochs", "2", "--seeds", "2", "--out", str(tmp_path)])
    progress = capsys.readouterr().out
    assert "[beta-VSC] run 2/2: trained" in progress and "Epoch 2/2" in progress and "Drawing figures" in progress
    report = (tmp_path / "report.md").read_text()
    for model in ("PCA", "Autoencoder", "beta-VAE", "beta-VSC", "count model*"):
        assert f"| {model} | " in report
    assert "Beyond the original study" in report and "make_count_embedder" in report
    for figure in ("tsne_2d.png", "metrics.png", "training_loss.png", "vsc_spikes.png"):
        assert (tmp_path / figure).stat().st_size > 10_000 and f"({figure})" in report
    assert not (tmp_path / "tsne_3d.png").exists()  # only with --tsne-3d
    assert "filaments" in report and "not a ranking" in report
    # the report says what training ran with (one thread by default) and which run the figures show
    assert "training on 1 thread (n_jobs)" in report and "(first run: random_state=0)" in report
    scores = pd.read_csv(tmp_path / "scores.csv")
    assert len(scores) == 10 and scores["ARI"].between(-1, 1).all()
    # PCA's codes separate the tutorial's cell types (they were found from PCA)
    assert scores.query("model == 'PCA'")["kNN accuracy"].min() > 0.85
    # each run of a neural model trains with its own seed: their codes, hence their k-NN accuracies, differ
    assert scores.query("model == 'beta-VAE'")["kNN accuracy"].nunique() == 2
    summary = pd.read_csv(tmp_path / "summary.csv", index_col=0)
    assert list(summary.index) == ["PCA", "Autoencoder", "beta-VAE", "beta-VSC", "count model*"]
    assert all(dtype.kind == "f" for dtype in summary.dtypes)  # numbers, not "0.5 ± 0.1" strings
    assert {"ARI mean", "ARI sd", "kNN accuracy sd", "training time (s) mean"} <= set(summary.columns)
    # PCA's codes do not depend on a seed: no sd for its silhouette or k-NN, and no ± in the report
    assert np.isnan(summary.loc["PCA", "kNN accuracy sd"]) and summary.loc["beta-VAE", "kNN accuracy sd"] > 0
    pca_row = next(line for line in report.splitlines() if line.startswith("| PCA |")).split(" | ")
    assert "±" not in pca_row[5] and "±" not in pca_row[6] and "±" in pca_row[2]
    assert f"{summary.loc['beta-VSC', 'ARI mean']:.3f} ± {summary.loc['beta-VSC', 'ARI sd']:.3f}" in report


@pytest.mark.parametrize(
    ("arguments", "message"),
    [({"models": ["pca", "umap"]}, "choose among pca, ae, vae, vsc, counts"), ({"models": []}, "choose among"),
     ({"epochs": 0}, "epochs == 0, must be >= 1"), ({"n_seeds": 0}, "n_seeds == 0, must be >= 1"),
     ({"n_jobs": 0}, "n_jobs must be None, a positive number"), ({"n_jobs": 1.5}, "n_jobs must be None")],
)
def test_run_study_rejects_bad_arguments_before_any_work(arguments, message, tmp_path):
    out = tmp_path / "report"
    with pytest.raises(ValueError, match=message):
        run_study(out=out, data_home=tmp_path / "no-data", **arguments)
    assert not out.exists()


@pytest.mark.slow
def test_autoencoder_codes_separate_the_cell_types():
    pbmc = fetch_pbmc3k()
    X = make_pipeline(LogNormalizer(), ClippedStandardScaler()).fit_transform(pbmc.data).astype(np.float32)
    codes = AutoencoderEmbedder(max_epochs=30, random_state=0).fit_transform(X)
    assert latent_scores(codes, pbmc.target)["kNN accuracy"] > 0.8


@pytest.mark.slow
@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.name)
def test_example_runs_in_quick_mode(script, tmp_path):
    result = subprocess.run(
        [sys.executable, str(script), "--quick"], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(EXPECTED_OUTPUT[script.name], result.stdout), result.stdout[-3000:]
