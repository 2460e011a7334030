"""scikit-learn's estimator contract, every check, for every public estimator."""

import pytest
from sklearn.utils.estimator_checks import parametrize_with_checks

from skvae import AutoencoderEmbedder, BetaVAEEmbedder, BetaVSCEmbedder

# The checks fit dozens of times on tiny data: a small network and few epochs keep them fast.
_CHEAP = dict(hidden_layer_sizes=(16, 8), max_epochs=20)


@parametrize_with_checks(
    [
        AutoencoderEmbedder(**_CHEAP),
        BetaVAEEmbedder(**_CHEAP),
        BetaVSCEmbedder(**_CHEAP),
        # a count likelihood: the checks then give non-negative data (the positive_only tag)
        AutoencoderEmbedder(**_CHEAP, likelihood="nb"),
        BetaVAEEmbedder(**_CHEAP, likelihood="nb"),
        BetaVSCEmbedder(**_CHEAP, likelihood="nb"),
    ]
)
@pytest.mark.filterwarnings("ignore::skvae.PosteriorCollapseWarning")  # tiny fits: nothing to encode
@pytest.mark.filterwarnings("ignore:X has non-integer values")  # the checks' data are not counts
def test_sklearn_compatible_estimator(estimator, check):
    check(estimator)
