"""scikit-learn's estimator contract, every check, for every public estimator."""

from sklearn.utils.estimator_checks import parametrize_with_checks

from skvae import AutoencoderEmbedder, BetaVAEEmbedder, BetaVSCEmbedder

# The checks fit dozens of times on tiny data: a small network and few epochs keep them fast.
_CHEAP = dict(hidden_layer_sizes=(16, 8), max_epochs=20)


@parametrize_with_checks(
    [
        AutoencoderEmbedder(**_CHEAP),
        BetaVAEEmbedder(**_CHEAP),
        BetaVSCEmbedder(**_CHEAP),
    ]
)
def test_sklearn_compatible_estimator(estimator, check):
    check(estimator)
