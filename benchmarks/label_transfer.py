"""Label transfer: name a query's cells from a labelled reference, and flag the types the reference lacks.

Rows (``--rows``):
- ``pca``, ``harmony``, ``scvi``, ``skvae``: every embedding of :func:`integration.embeddings` (uncorrected PCA,
  Harmony, scVI's defaults, skvae's recipe without and with batches) fitted once on all cells of a data set with
  their batches and no labels, then a distance-weighted 15-NN classifier from the reference cells' codes;
- ``classifier``: skvae's :class:`~skvae.BetaVAEClassifier` with the count recipe's settings, fitted on the reference
  and query cells with the reference's labels only (scANVI's route), ``predict``; ``--classification-weights``
  compares weights, ``--batch-model genes`` fits the classifier and mapped rows with factors per gene and batch;
- ``mapped``: the same classifier fitted on the reference alone (its batches and labels), the query mapped onto it
  with ``map_query`` (the reference frozen), ``predict``; also whether the reference's codes stayed bit-identical
  and the query's mixing with the reference (:func:`mixing`) before and after mapping;
- ``scanvi``: scANVI from scVI's defaults on reference and query, the reference's labels only, ``predict``
  (scvi-tools' tutorial: 20 epochs, 100 cells sampled per label);
- ``scarches``: scVI with scArches' settings on the reference, the query learned with ``load_query_data`` (200
  epochs, no weight decay), 15-NN on the codes.
For the rows fitted per direction, the genes are the reference's 2,000 most variable (a reference fixes its genes
before any query comes).

Directions:
- ``pair``, reference pbmc_facs -> query pbmc3k (FCGR3A+ monocytes, dendritic cells and platelets are absent from
  the reference), and reference pbmc3k -> query pbmc_facs (CD34+ cells absent); coarse labels as in
  ``integration.py``.
- ``semisynthetic``: batch 3 as the query of batches 1 and 2 (every type shared: no unknown AUROC).
- ``deep-query``: real pbmc_facs cells without NK and CD34+ as the reference, deep cells simulated from the other
  half of every population as the query, 10x the depth with a per-gene technology effect of log-ratio sd 0.5
  (:func:`integration.load_deep_query`).

Columns: accuracy and macro-F1 over the query cells whose type the reference has; AUROC of an unknown score (absent
types against shared ones: ``1 - max probability`` for k-NN and scANVI, ``1 - typicality`` for skvae's classifier,
whose ``1 - max probability`` is given too, with the share of absent and shared cells ``is_unknown`` flags, as the
rule is, without the profile test (as before round 13), with each cell judged alone (``unknown_neighbors=0``),
without the marker test's technology allowance, without all three (the round 11 rule), by the codes' test alone
(each cell alone, as before round 11), and as the
previous, reference-calibrated rule flags them on the same model; the ``mapped`` row also gives the reference-only
model's naming and flags of the query before it is mapped); the F1 of each shared type (``--per-type``); with
``--thresholds``, the shares flagged at other ``unknown_threshold`` values (the same typicality; also without the
profile test and by the round 11 rule, and the share of correctly named cells flagged); the shares flagged and the
AUROC on the cells whose profile agrees with their label (" (label-consistent)", :func:`agrees_with_label`: a sorted
population's cells that express another sort's programme are left out); fit seconds. Rows with a seed: one per ``--seeds`` seed,
summarised as mean ± sd.

Usage: python benchmarks/label_transfer.py [--data-home ../shared/data] [--datasets pair,semisynthetic]
                                           [--rows pca,harmony,skvae,classifier,mapped,scanvi,scarches]
                                           [--seeds 0,1,2] [--threads 1] [--per-type] [--batch-model genes]
"""

import argparse
import contextlib
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score
from sklearn.neighbors import KNeighborsClassifier, NearestNeighbors

sys.path.insert(0, str(Path(__file__).parent))  # the benchmark folder is not a package
import integration
from integration import LOADERS, SCARCHES, agrees_with_label, embeddings, summarise

import skvae
from skvae import BetaVAEClassifier
from skvae.preprocessing import HighlyVariableGenes
from skvae.recipes import RECOMMENDED_COUNT_SETTINGS

#: unknown_threshold values whose flagged shares flag_rates also gives (--thresholds)
THRESHOLDS = ()

#: (data set, reference batch, query batch)
DIRECTIONS = {
    "pair": [("pbmc_facs", "pbmc3k"), ("pbmc3k", "pbmc_facs")],
    "semisynthetic": [(("batch 1", "batch 2"), "batch 3")],
    "deep-query": [("reference (10x)", "query (deep)")],
    "toy": [("a", "b")],  # a smoke test of the script
}


def transfer(codes, batch, labels, reference, query, k=15):
    """Scores of a distance-weighted k-NN from the reference cells' codes to the query's, and each shared type's F1."""
    reference = np.isin(batch, np.atleast_1d(reference))
    query = batch == query
    classifier = KNeighborsClassifier(n_neighbors=k, weights="distance").fit(codes[reference], labels[reference])
    probabilities = classifier.predict_proba(codes[query])
    return scored(labels[query], classifier.classes_[probabilities.argmax(axis=1)], 1 - probabilities.max(axis=1),
                  classifier.classes_)


def scored(truth, predicted, unknown_score, classes):
    """Accuracy, macro-F1 over the query's cells of types the reference has, unknown AUROC; each shared type's F1."""
    shared = np.isin(truth, classes)
    types = [label for label in classes if label in set(truth[shared])]
    scores = {"accuracy": accuracy_score(truth[shared], predicted[shared]),
              "macro-F1": f1_score(truth[shared], predicted[shared], labels=types, average="macro"),
              "unknown AUROC": roc_auc_score(~shared, unknown_score) if (~shared).any() else np.nan}
    per_type = dict(zip(types, f1_score(truth[shared], predicted[shared], labels=types, average=None), strict=True))
    return scores, per_type


def _reference_genes(counts, batch, reference):
    """The reference's 2,000 most variable genes (a reference fixes its genes before any query comes)."""
    reference = np.isin(batch, np.atleast_1d(reference))
    genes = HighlyVariableGenes(min(2000, counts.shape[1])).fit(counts[reference], batch=batch[reference])
    return genes.transform(counts), reference


def _anndata(counts, batch, labels=None):
    import anndata

    obs = pd.DataFrame({"batch": batch, "label": "Unknown" if labels is None else labels})
    obs.index = obs.index.astype(str)
    return anndata.AnnData(sp.csr_matrix(counts, dtype=np.float32), obs=obs)


def scanvi(counts, batch, labels, reference, query, seed):
    """scANVI from scVI's defaults, fitted on reference and query cells with the reference's labels only.

    scvi-tools' tutorial route: ``SCVI`` (defaults, ``batch_key``) then ``SCANVI.from_scvi_model`` trained 20 epochs
    with 100 cells sampled per label; ``predict(soft=True)`` on the query, ``1 - max probability`` as the unknown score.
    """
    import scvi

    scvi.settings.seed = seed
    selected, is_reference = _reference_genes(counts, batch, reference)
    use = is_reference | (batch == query)
    given = np.where(is_reference, labels, "Unknown").astype(object)
    adata = _anndata(selected[use], batch[use], given[use])

    def fit():
        scvi.model.SCVI.setup_anndata(adata, batch_key="batch", labels_key="label")
        model = scvi.model.SCVI(adata)
        model.train(accelerator="cpu", enable_progress_bar=False)
        model = scvi.model.SCANVI.from_scvi_model(model, unlabeled_category="Unknown")
        model.train(max_epochs=20, n_samples_per_label=100, accelerator="cpu", enable_progress_bar=False)
        return model

    model, seconds = timed_model(fit)
    on_query = (batch[use] == query)
    probabilities = model.predict(adata[on_query].copy(), soft=True)
    classes = np.asarray(probabilities.columns)
    values = probabilities.to_numpy()
    keep = classes != "Unknown"
    values, classes = values[:, keep], classes[keep]
    return scored(labels[batch == query], classes[values.argmax(axis=1)], 1 - values.max(axis=1), classes), seconds


def scarches(counts, batch, labels, reference, query, seed, k=15):
    """scArches surgery of scVI: a reference model (scArches' settings), the query's batch learned with the reference
    frozen (``load_query_data``, 200 epochs, no weight decay, as scvi-tools' tutorial), then 15-NN on the codes."""
    import scvi

    scvi.settings.seed = seed
    selected, is_reference = _reference_genes(counts, batch, reference)
    on_query = batch == query
    reference_data = _anndata(selected[is_reference], batch[is_reference])
    query_data = _anndata(selected[on_query], batch[on_query])

    def fit():
        scvi.model.SCVI.setup_anndata(reference_data, batch_key="batch")
        model = scvi.model.SCVI(reference_data, **SCARCHES)
        model.train(accelerator="cpu", enable_progress_bar=False)
        mapped = scvi.model.SCVI.load_query_data(query_data, model)
        mapped.train(max_epochs=200, plan_kwargs={"weight_decay": 0.0}, accelerator="cpu", enable_progress_bar=False)
        return model, mapped

    (model, mapped), seconds = timed_model(fit)
    codes = np.vstack([model.get_latent_representation(), mapped.get_latent_representation()])
    where = np.concatenate([batch[is_reference], batch[on_query]])
    return transfer(codes, where, np.concatenate([labels[is_reference], labels[on_query]]), reference, query, k), \
        seconds


def skvae_classifier(counts, batch, labels, reference, query, seed, epochs, **settings):
    """skvae's semi-supervised classifier (the count recipe's settings) fitted on reference and query cells with the
    reference's labels only; ``predict`` names the query, ``1 - typicality`` is the unknown score.

    Also returned, as evidence for the unknown rule: the AUROC of ``1 - max probability`` and the share of absent and
    of shared types' cells that ``is_unknown`` flags at the default threshold; and, as evidence for predicting with
    the types' Gaussians, the macro-F1 of the model's linear classifier head.
    """
    selected, is_reference = _reference_genes(counts, batch, reference)
    use = is_reference | (batch == query)
    given = np.where(is_reference, labels, None).astype(object)
    model = BetaVAEClassifier(**{**RECOMMENDED_COUNT_SETTINGS, "random_state": seed, "n_jobs": integration.THREADS,
                                 "max_epochs": epochs, **settings})
    _, seconds = timed_model(lambda: model.fit(selected[use], given[use], batch=batch[use]))
    on_query, query_batch = selected[batch == query], batch[batch == query]
    probabilities = model.predict_proba(on_query, batch=query_batch)
    typical = model.typicality(on_query, batch=query_batch)
    truth = labels[batch == query]
    scores, per_type = scored(truth, model.classes_[probabilities.argmax(axis=1)], 1 - typical, model.classes_)
    shared = np.isin(truth, model.classes_)
    scores["AUROC 1-max p"] = roc_auc_score(~shared, 1 - probabilities.max(axis=1)) if (~shared).any() else np.nan
    # the linear classifier that shapes the codes in training, as a predictor (the estimator predicts with Gaussians)
    with torch.no_grad():
        logits = model.module_.classifier(torch.as_tensor(model.transform(on_query, batch=query_batch),
                                                          dtype=torch.float32)).numpy()
    scores["macro-F1 linear head"] = scored(truth, model.classes_[logits.argmax(axis=1)], 1 - typical,
                                            model.classes_)[0]["macro-F1"]
    scores.update(flag_rates(model, on_query, query_batch, truth))
    return (scores, per_type), seconds


#: a value of ``changed``: the attribute is deleted within the block
ABSENT = object()


@contextlib.contextmanager
def changed(model, **attributes):
    """Within the block, ``model``'s ``attributes`` take the values given (``ABSENT``: deleted); restored after."""
    before = {name: model.__dict__.get(name, ABSENT) for name in attributes}

    def assign(values):
        for name, value in values.items():
            if value is ABSENT:
                model.__dict__.pop(name, None)
            else:
                setattr(model, name, value)

    assign(attributes)
    try:
        yield
    finally:
        assign(before)


def codes_only(model):
    """Within the block, ``model``'s typicality is its codes' alone (no marker test)."""
    return changed(model, class_markers_=model.class_markers_[:, :0])


def each_cell_alone(model):
    """Within the block, ``model``'s typicality is each cell's own (``unknown_neighbors=0``; as before round 12)."""
    return changed(model, unknown_neighbors=0)


def no_technology_allowance(model):
    """Within the block, ``model``'s marker test does not widen for a batch's technology (as before round 12)."""
    return changed(model, class_shares_=ABSENT)


def no_profile_test(model):
    """Within the block, ``model``'s typicality asks nothing of a cell's profile likelihood (as before round 13)."""
    return changed(model, class_profile_quantiles_=ABSENT)


def no_counterpart_test(model):
    """Within the block, ``model``'s typicality does not ask whether a cell's cluster has a counterpart among the
    reference's (``unknown_counterparts=None``; as before round 19)."""
    return changed(model, unknown_counterparts=None)


def previous_rule(model):
    """Within the block, ``model``'s typicality is the previous rule's: the reference's own distances, no query
    calibration, no correction for a type's count of labelled cells, each cell alone (for comparisons on the same
    model)."""
    return changed(model, class_counts_=ABSENT, _shift_scales=lambda *args: 1.0,
                   class_markers_=model.class_markers_[:, :0], unknown_neighbors=0)


def flag_rates(model, X, batch, truth, suffix=""):
    """The shares of absent and shared types' cells ``is_unknown`` flags, by the rule, by the codes' test alone and
    by the previous rule, and the AUROC of each rule's ``1 - typicality``; per absent type, the share flagged; for the
    rule and the rule without the counterpart test, the same on the cells whose profile agrees with their label
    (:func:`agrees_with_label`, " (label-consistent)")."""
    shared = np.isin(truth, model.classes_)
    consistent = agrees_with_label(X, truth)
    scores = {}
    for rule, contexts in (("", ()), (" (no counterpart test)", (no_counterpart_test,)),
                           (" (no profile test)", (no_profile_test, no_counterpart_test)),
                           (" (each cell alone)", (each_cell_alone,)),
                           (" (no technology allowance)", (no_technology_allowance,)),
                           (" (round 11 rule)", (each_cell_alone, no_technology_allowance, no_profile_test,
                                                 no_counterpart_test)),
                           (" (codes only)", (codes_only, each_cell_alone, no_counterpart_test)),
                           (" (previous rule)", (previous_rule, no_counterpart_test))):
        with contextlib.ExitStack() as stack:
            for context in contexts:
                stack.enter_context(context(model))
            typical = model.typicality(X, batch=batch)
        flagged = typical < model.unknown_threshold
        scores[f"flagged absent{rule}{suffix}"] = flagged[~shared].mean() if (~shared).any() else np.nan
        scores[f"flagged shared{rule}{suffix}"] = flagged[shared].mean()
        scores[f"unknown AUROC{rule}{suffix}"] = roc_auc_score(~shared, 1 - typical) if (~shared).any() else np.nan
        if rule in ("", " (no counterpart test)") and (~shared & consistent).any():
            absent, known = ~shared & consistent, shared & consistent
            scores[f"flagged absent (label-consistent){rule}{suffix}"] = flagged[absent].mean()
            scores[f"flagged shared (label-consistent){rule}{suffix}"] = flagged[known].mean()
            scores[f"unknown AUROC (label-consistent){rule}{suffix}"] = roc_auc_score(
                absent[absent | known], 1 - typical[absent | known])
        if not rule:
            # the known types' cells named right and still flagged (a right name turned "unknown")
            right = shared & (model.predict(X, batch=batch) == truth)
            scores[f"flagged right-named{suffix}"] = flagged[right].mean()
            for label in np.unique(truth[~shared]):
                scores[f"flagged {label}{suffix}"] = flagged[truth == label].mean()
        if rule in ("", " (no counterpart test)", " (no profile test)", " (round 11 rule)"):
            for threshold in THRESHOLDS:  # the rule at other unknown_threshold values, on the same typicality
                scores[f"flagged shared @{threshold:g}{rule}{suffix}"] = (typical[shared] < threshold).mean()
                if not rule:
                    scores[f"flagged right-named @{threshold:g}{suffix}"] = (typical[right] < threshold).mean()
                if (~shared).any():
                    scores[f"flagged absent @{threshold:g}{rule}{suffix}"] = (typical[~shared] < threshold).mean()
                if not rule and (~shared & consistent).any():
                    scores[f"flagged absent (label-consistent) @{threshold:g}{suffix}"] = (
                        typical[~shared & consistent] < threshold).mean()
    return scores


def skvae_mapped(counts, batch, labels, reference, query, seed, epochs, k=15, **settings):
    """skvae's classifier fitted on the reference alone (its batches, its labels), then the query mapped onto it with
    ``map_query`` (the reference frozen) and named; also the query's mixing with the reference before and after.

    Mixing: each cell's share of its 15 nearest codes (reference and query together) from the other side, over the
    share perfect mixing gives, capped at 1, averaged over the cells; "before" embeds the query with the reference's
    batch-free encoder (``transform``), "after" with the mapped model. With ``batch_model="genes"`` the encoder reads
    the batch, and a batch it has not seen cannot be embedded before mapping: no "before" scores.
    """
    selected, is_reference = _reference_genes(counts, batch, reference)
    on_query = batch == query
    model = BetaVAEClassifier(**{**RECOMMENDED_COUNT_SETTINGS, "random_state": seed, "n_jobs": integration.THREADS,
                                 "max_epochs": epochs, **settings})
    reference_codes = []

    truth = labels[on_query]
    before = {}

    def fit():
        model.fit(selected[is_reference], labels[is_reference], batch=batch[is_reference])
        reference_codes.append(model.transform(selected[is_reference], batch=batch[is_reference]))
        if model.batch_model == "genes":
            before["seconds"] = 0.0
            model.map_query(selected[on_query], batch=batch[on_query])
            return model
        reference_codes.append(model.transform(selected[on_query]))  # before mapping
        # the reference-only model names the query (a batch it has not seen) as it is
        start = time.perf_counter()
        named = model.predict(selected[on_query])
        before["accuracy (reference only)"] = accuracy_score(truth[np.isin(truth, model.classes_)],
                                                             named[np.isin(truth, model.classes_)])
        before.update(flag_rates(model, selected[on_query], batch[on_query], truth, " (reference only)"))
        before["seconds"] = time.perf_counter() - start
        model.map_query(selected[on_query], batch=batch[on_query])
        return model

    _, seconds = timed_model(fit)
    seconds -= before.pop("seconds")
    after = model.transform(selected[is_reference], batch=batch[is_reference])
    query_codes = model.transform(selected[on_query], batch=batch[on_query])
    probabilities = model.predict_proba(selected[on_query], batch=batch[on_query])
    typical = model.typicality(selected[on_query], batch=batch[on_query])
    scores, per_type = scored(truth, model.classes_[probabilities.argmax(axis=1)], 1 - typical, model.classes_)
    scores.update(flag_rates(model, selected[on_query], batch[on_query], truth))
    scores.update(before)
    scores["reference codes unchanged"] = float(np.array_equal(after, reference_codes[0]))
    side = np.r_[np.zeros(len(after), bool), np.ones(len(query_codes), bool)]
    scores["mixing before"] = mixing(np.vstack(reference_codes), side, k) if len(reference_codes) == 2 else np.nan
    scores["mixing after"] = mixing(np.vstack([after, query_codes]), side, k)
    return (scores, per_type), seconds


def mixing(codes, side, k=15):
    """Mean over cells of their k nearest other cells' share from the other side, over perfect mixing's, capped at 1."""
    neighbours = NearestNeighbors(n_neighbors=k + 1).fit(codes).kneighbors(codes, return_distance=False)[:, 1:]
    other = (side[neighbours] != side[:, None]).mean(axis=1)
    expected = np.where(side, (~side).sum(), side.sum()) / (len(side) - 1)
    return float(np.minimum(other / expected, 1.0).mean())


def timed_model(fit):
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = fit()
    return model, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-home", default=os.environ.get("SKVAE_DATA", Path(__file__).parents[1] / ".." / "shared" / "data"))
    parser.add_argument("--datasets", default="pair,semisynthetic")
    parser.add_argument("--rows", default="pca,harmony,skvae", help="of pca, harmony, scvi, skvae, classifier, mapped, scanvi, scarches (PCA always)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--per-type", action="store_true", help="also the F1 of each shared type")
    parser.add_argument("--threads", type=int, default=-1, help="torch threads of skvae's fits (-1: every core)")
    parser.add_argument("--thresholds", default="",
                        help="comma-separated unknown_threshold values: the classifier rows also give the shares of "
                             "shared and absent types' cells flagged at each (the same fitted models)")
    parser.add_argument("--batch-model", default="layers",
                        help="batch_model of the classifier and mapped rows (layers or genes)")
    parser.add_argument("--classification-weights", default="",
                        help="comma-separated classification_weight values of the classifier row (default: its default)")
    args = parser.parse_args()
    integration.THREADS = args.threads
    global THRESHOLDS
    THRESHOLDS = tuple(float(value) for value in args.thresholds.split(",") if value)
    weights = [float(weight) for weight in args.classification_weights.split(",") if weight] or [None]
    rows, seeds = set(args.rows.split(",")), [int(seed) for seed in args.seeds.split(",")]
    model_note = "" if args.batch_model == "layers" else f", batch_model={args.batch_model!r}"
    print(f"skvae {skvae.__version__}, torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores; seeds {seeds}")
    tables = []
    for dataset in filter(None, args.datasets.split(",")):
        counts, batch, labels = LOADERS[dataset](args.data_home)
        print(f"\n== {dataset}: {counts.shape[0]} cells", flush=True)
        def add(name, reference, query, result, seconds, dataset=dataset):
            scores, per_type = result
            row = {"data": f"{dataset}: {'+'.join(np.atleast_1d(reference))} -> {query}", **scores,
                   **({f"F1 {label}": value for label, value in per_type.items()} if args.per_type else {}),
                   "fit s": seconds}
            print(f"  {name}: {row['data']} fit {seconds:.1f} s, " + ", ".join(
                f"{key} {value:.3f}" for key, value in scores.items()), flush=True)
            tables.append(pd.Series(row, name=name))

        for name, codes, seconds in embeddings(counts, batch, rows & {"pca", "harmony", "scvi", "skvae"}, args.epochs,
                                               seeds):
            for reference, query in DIRECTIONS[dataset]:
                add(name, reference, query, transfer(codes, batch, labels, reference, query), seconds)
        for seed in seeds:
            for reference, query in DIRECTIONS[dataset]:
                for weight in (weights if "classifier" in rows else []):
                    settings = {"batch_model": args.batch_model, **({} if weight is None else
                                                                    {"classification_weight": weight})}
                    result, seconds = skvae_classifier(counts, batch, labels, reference, query, seed, args.epochs,
                                                       **settings)
                    add(f"skvae BetaVAEClassifier (recipe settings{'' if weight is None else f', weight {weight}'}"
                        f"{model_note}, "
                        f"reference labels), seed {seed}", reference, query, result, seconds)
                if "mapped" in rows:
                    result, seconds = skvae_mapped(counts, batch, labels, reference, query, seed, args.epochs,
                                                   batch_model=args.batch_model)
                    add(f"skvae BetaVAEClassifier on the reference{model_note}, map_query, seed {seed}", reference, query,
                        result, seconds)
                for row, method in (("scanvi", scanvi), ("scarches", scarches)):
                    if row in rows:
                        import scvi

                        result, seconds = method(counts, batch, labels, reference, query, seed)
                        label = {"scanvi": "scANVI {} from scVI defaults (reference labels), predict",
                                 "scarches": "scVI {} scArches settings, query surgery, 15-NN"}[row]
                        add(f"{label.format(scvi.__version__)}, seed {seed}", reference, query, result, seconds)
    table = pd.DataFrame(tables)
    table = table[[column for column in table.columns if column != "fit s"] + ["fit s"]]
    with pd.option_context("display.width", 250, "display.max_columns", 30):
        for data, part in table.groupby("data", sort=False):
            print(f"\n{data}")
            print(summarise(part.dropna(axis=1, how="all")).to_string())


if __name__ == "__main__":
    main()
