"""Command line: ``skvae study`` (also ``python -m skvae study``)."""

import argparse
import sys

from .runner import MODELS, _check_models, run_study


def _models(text):
    try:
        return _check_models(m.strip() for m in text.split(",") if m.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _n_jobs(text):
    value = int(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be a positive number of threads or -1 (every core), not 0")
    return value


def _build_parser():
    parser = argparse.ArgumentParser(prog="skvae", description="skvae: neural embeddings of single-cell data.")
    commands = parser.add_subparsers(dest="command", required=True)
    study = commands.add_parser(
        "study",
        help="reproduce the PBMC3k study end to end and write a report",
        description="Train PCA, an autoencoder, a beta-VAE and a beta-VSC on PBMC3k, evaluate them "
        "(t-SNE + KMeans against the cell types, over several seeds) and write report.md with figures.",
    )
    study.add_argument("--epochs", type=_positive_int, default=200, help="training epochs (default: 200)")
    study.add_argument("--models", type=_models, default=list(MODELS),
                       help=f"comma-separated subset of {','.join(MODELS)} (default: all)")
    study.add_argument("--seeds", type=_positive_int, default=3,
                       help="runs per model, each with its own training and t-SNE + KMeans seed (default: 3)")
    study.add_argument("--tsne-3d", action="store_true", help="also draw a 3-D t-SNE of each embedding (slower)")
    study.add_argument("--out", default="skvae-report", help="report folder (default: ./skvae-report)")
    study.add_argument("--data-home", default=None, help="dataset folder (default: $SKVAE_DATA or ~/skvae_data)")
    study.add_argument("--n-jobs", type=_n_jobs, default=None,
                       help="training threads (default: 1, the safest on a busy machine; -1: every core)")
    study.add_argument("--quiet", action="store_true", help="no progress lines")
    study.add_argument("--no-epoch-lines", action="store_true", help="progress per model only, not per epoch")
    return parser


def main(argv=None):
    """Run the ``skvae`` command: ``skvae study [options]``.

    Parameters
    ----------
    argv : list of str, default=None
        The arguments after the program name; ``None`` reads them from ``sys.argv``.

    Returns
    -------
    status : int
        0 when the report was written; 1 when the study could not run (offline,
        damaged data, an unusable ``--out``), said in one line on stderr; 130 when
        interrupted. No report folder is left half written.

    Examples
    --------
    Bad arguments stop with a usage message (on stderr) and exit status 2, before any work:

    >>> from skvae.study.cli import main
    >>> try:
    ...     main(["study", "--models", "pca,umap"])
    ... except SystemExit as stop:
    ...     print(stop.code)
    2
    """
    args = _build_parser().parse_args(argv)
    if args.command == "study":
        verbose = 0 if args.quiet else 1 if args.no_epoch_lines else 2
        try:
            run_study(epochs=args.epochs, models=args.models, n_seeds=args.seeds, out=args.out,
                      data_home=args.data_home, verbose=verbose, n_jobs=args.n_jobs, tsne_3d=args.tsne_3d)
        except (OSError, ValueError) as exc:  # offline, tampered data, an unusable --out: one line, no traceback
            print(f"skvae study: error: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("skvae study: interrupted; no report was written.", file=sys.stderr)
            return 130
    return 0
