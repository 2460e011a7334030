"""The command line: argument errors, runtime errors in one line, and a report folder written whole or not at all."""

import subprocess
import sys

import pytest

import skvae.datasets
import skvae.study.runner
from skvae.study.cli import main


def test_study_command_rejects_unknown_models_and_bad_counts(capsys):
    with pytest.raises(SystemExit):
        main(["study", "--models", "pca,umap"])
    assert "choose among pca, ae, vae, vsc" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["study", "--epochs", "0"])
    with pytest.raises(SystemExit):
        main(["study", "--n-jobs", "0"])
    assert "must be a positive number of threads or -1" in capsys.readouterr().err


def _one_error_line(capsys):
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("skvae study: error: ")
    return lines[0]


def test_an_out_that_is_a_file_is_one_line_and_status_1(tmp_path, capsys):
    (tmp_path / "report").write_text("a file")
    assert main(["study", "--models", "pca", "--out", str(tmp_path / "report")]) == 1
    assert "is a file" in _one_error_line(capsys)
    assert main(["study", "--models", "pca", "--out", str(tmp_path / "report" / "inner")]) == 1
    assert "lies under" in _one_error_line(capsys)


def test_a_folder_that_is_not_a_report_is_never_replaced(tmp_path, capsys):
    (tmp_path / "thesis.tex").write_text("precious")
    assert main(["study", "--models", "pca", "--out", str(tmp_path)]) == 1
    assert "not a skvae report folder" in _one_error_line(capsys)
    assert (tmp_path / "thesis.tex").read_text() == "precious"


def test_missing_data_offline_is_one_line_and_creates_no_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(skvae.datasets, "PBMC3K_URL", "http://127.0.0.1:9/pbmc3k.tar.gz")  # nothing listens there
    out = tmp_path / "report"
    assert main(["study", "--models", "pca", "--out", str(out), "--data-home", str(tmp_path / "data")]) == 1
    assert "Could not download PBMC3k" in _one_error_line(capsys)
    assert not out.exists()


def test_the_module_entry_point_exits_with_the_status(tmp_path):
    (tmp_path / "report").write_text("a file")
    result = subprocess.run([sys.executable, "-m", "skvae", "study", "--out", str(tmp_path / "report")],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 1 and "Traceback" not in result.stderr


@pytest.mark.slow
def test_a_failed_rerun_keeps_the_previous_report_whole(tmp_path, capsys, monkeypatch):
    out = tmp_path / "report"
    assert main(["study", "--models", "pca", "--epochs", "1", "--seeds", "1", "--out", str(out), "--quiet"]) == 0
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    assert "report.md" in before and "scores.csv" in before

    def fail(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(skvae.study.runner, "_write_report", fail)
    assert main(["study", "--models", "pca", "--epochs", "1", "--seeds", "2", "--out", str(out), "--quiet"]) == 1
    assert "No space left on device" in _one_error_line(capsys)
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before  # no new figures beside the old report
    assert [path.name for path in tmp_path.iterdir()] == ["report"]  # no partial folder left


@pytest.mark.parametrize("out", ["", ".", ".."])
def test_an_out_without_a_name_of_its_own_is_refused_before_any_work(out, capsys, monkeypatch):
    monkeypatch.setattr(skvae.study.runner, "fetch_pbmc3k", lambda *a, **k: pytest.fail("the study started"))
    assert main(["study", "--models", "pca", "--out", out]) == 1
    assert "needs a name of its own" in _one_error_line(capsys)


def test_a_model_listed_twice_is_refused(capsys):
    with pytest.raises(SystemExit):
        main(["study", "--models", "pca,pca"])
    assert "pca is listed more than once" in capsys.readouterr().err
