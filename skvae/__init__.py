"""skvae: scikit-learn embedders for single-cell expression built on neural autoencoders."""

from .estimators import AutoencoderEmbedder, BetaVAEEmbedder, BetaVSCEmbedder

__version__ = "0.1.0"

__all__ = ["AutoencoderEmbedder", "BetaVAEEmbedder", "BetaVSCEmbedder", "__version__"]
