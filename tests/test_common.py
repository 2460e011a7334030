"""scikit-learn's estimator contract, every check, for every public estimator."""

import pytest
from sklearn.utils.estimator_checks import parametrize_with_checks

from skvae import AutoencoderEmbedder, BetaVAEClassifier, BetaVAEEmbedder, BetaVSCEmbedder

# The checks fit dozens of times on tiny data: a small network and few epochs keep them fast.
_CHEAP = dict(hidden_layer_sizes=(16, 8), max_epochs=20)
# scikit-learn exempts its own semi-supervised classifiers from this check by name (LabelPropagation, LabelSpreading,
# SelfTrainingClassifier: estimator_checks._choose_check_classifiers_labels); it fits the labels [-1, 1], and -1
# marks an unlabelled cell
_SEMI_SUPERVISED = {"check_classifiers_classes": "-1 marks an unlabelled cell, as in scikit-learn's semi-supervised "
                                                 "classifiers, which the check exempts by name"}


@parametrize_with_checks(
    [
        AutoencoderEmbedder(**_CHEAP),
        BetaVAEEmbedder(**_CHEAP),
        BetaVSCEmbedder(**_CHEAP),
        # a count likelihood: the checks then give non-negative data (the positive_only tag)
        AutoencoderEmbedder(**_CHEAP, likelihood="nb"),
        BetaVAEEmbedder(**_CHEAP, likelihood="nb"),
        BetaVSCEmbedder(**_CHEAP, likelihood="nb"),
        # the classifier: both contracts, a classifier's and a transformer's (not with a count likelihood: the
        # checks' classes differ in the ratio of their two features and in their total, which it normalises away)
        BetaVAEClassifier(**_CHEAP),
    ],
    expected_failed_checks=lambda estimator: _SEMI_SUPERVISED if isinstance(estimator, BetaVAEClassifier) else {},
)
@pytest.mark.filterwarnings("ignore::skvae.PosteriorCollapseWarning")  # tiny fits: nothing to encode
@pytest.mark.filterwarnings("ignore:X has non-integer values")  # the checks' data are not counts
def test_sklearn_compatible_estimator(estimator, check):
    check(estimator)
