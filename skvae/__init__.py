"""skvae: scikit-learn embedders for single-cell expression built on neural autoencoders."""

from . import tl
from ._settings import settings
from .classifier import BetaVAEClassifier
from .estimators import AutoencoderEmbedder, BetaVAEEmbedder, BetaVSCEmbedder, PosteriorCollapseWarning
from .pipeline import EmbeddingPipeline
from .recipes import make_count_classifier, make_count_embedder

__version__ = "0.1.0"

__all__ = [
    "AutoencoderEmbedder",
    "BetaVAEClassifier",
    "BetaVAEEmbedder",
    "BetaVSCEmbedder",
    "EmbeddingPipeline",
    "PosteriorCollapseWarning",
    "__version__",
    "make_count_classifier",
    "make_count_embedder",
    "settings",
    "tl",
]
