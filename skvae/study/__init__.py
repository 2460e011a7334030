"""The study application: PBMC3k end to end, its scores, figures and command line.

Built on the library (:mod:`skvae.estimators`, :mod:`skvae.datasets`,
:mod:`skvae.preprocessing`); nothing in the library depends on it.
"""

from .runner import MODELS, make_embedders, run_study

__all__ = ["MODELS", "make_embedders", "run_study"]
