"""Package-wide settings: how much :mod:`skvae.tl` shows while it trains, as scanpy's ``settings.verbosity``.

The estimators stay silent unless their ``verbose`` asks (scikit-learn's way); the
scanpy-style tools show a fit's progress by default where a person is watching.
"""

import sys
from numbers import Integral


class Settings:
    """skvae's settings; the instance is ``skvae.settings``.

    Attributes
    ----------
    verbosity : int, default=1
        What :func:`skvae.tl.embed` and :func:`skvae.tl.annotate` show while a
        model trains (``fit``, ``map_query``), for each skvae estimator left at
        ``verbose=0``: 0 nothing; 1 its progress where a person watches (a
        terminal or a notebook: a tqdm bar where tqdm is installed, else a line
        per epoch), nothing in a script writing to a file or pipe; 2 its progress
        always. An estimator's own ``verbose`` of 1 or more is kept as it is.

    Examples
    --------
    >>> import skvae
    >>> skvae.settings.verbosity
    1
    >>> skvae.settings.verbosity = 0  # skvae.tl trains silently
    >>> skvae.settings.verbosity = 1
    """

    def __init__(self):
        self._verbosity = 1

    @property
    def verbosity(self):
        return self._verbosity

    @verbosity.setter
    def verbosity(self, value):
        if isinstance(value, bool) or not isinstance(value, Integral) or not 0 <= value <= 2:
            raise ValueError(f"skvae.settings.verbosity must be 0 (silent), 1 (progress where a person watches) or 2 "
                             f"(progress always), not {value!r}.")
        self._verbosity = int(value)

    def shows_progress(self):
        """Whether the tools show a fit's progress now (``verbosity``, and whether a person watches).

        Returns
        -------
        bool
        """
        watched = "ipykernel" in sys.modules or sys.stderr.isatty()
        return self._verbosity >= 2 or (self._verbosity == 1 and watched)

    def __repr__(self):
        return f"skvae.settings(verbosity={self._verbosity})"


settings = Settings()
