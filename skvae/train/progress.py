"""What a fit shows while it trains: log records always, and a progress display when asked (``verbose``).

Every epoch's line goes to the ``"skvae"`` logger at INFO level, so a program that
configures logging (``logging.basicConfig(level="INFO")``, or scanpy's settings for its
own loggers' style) sees them, and nothing is printed by default. With ``verbose >= 1``
a fit also shows its progress: a tqdm bar (epochs done, time left, the current loss)
where tqdm is installed and the output is a terminal or a notebook, else one plain line
per epoch on standard output, with the time left.
"""

import importlib.util
import logging
import sys
import time

logger = logging.getLogger("skvae")


def _bar_wanted():
    """A bar only where one renders: tqdm installed, and a terminal or a notebook kernel."""
    if importlib.util.find_spec("tqdm") is None:
        return False
    return "ipykernel" in sys.modules or sys.stderr.isatty()


def _duration(seconds):
    """Seconds as a short human duration: '45 s', '3 min 20 s', '2 h 05 min'."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class EpochProgress:
    """Progress of one call's epochs: log records, and a bar or plain lines with ``verbose``.

    Parameters
    ----------
    max_epochs : int
        Epochs this call may run.
    verbose : int
        0: log records only. >= 1: also a progress display.
    bar : bool, default=None
        Force the tqdm bar on or off; None decides (tqdm installed, and a terminal or
        a notebook).

    Examples
    --------
    >>> from skvae.train.progress import EpochProgress
    >>> progress = EpochProgress(2, verbose=1, bar=False)
    >>> progress.epoch(1, "Epoch 1/2: loss 3.5", loss=3.5, seconds=1.0)  # doctest: +ELLIPSIS
    Epoch 1/2: loss 3.5, 1.00 s, ... left
    >>> progress.close()
    """

    def __init__(self, max_epochs, verbose, *, bar=None):
        self.max_epochs, self.verbose = max_epochs, verbose
        self._started = time.perf_counter()
        self._bar = None
        if verbose > 0 and (_bar_wanted() if bar is None else bar):
            from tqdm.auto import tqdm

            self._bar = tqdm(total=max_epochs, unit="epoch", desc="skvae", leave=True)

    def epoch(self, epoch, message, *, loss, seconds):
        """Report a finished epoch.

        Parameters
        ----------
        epoch : int
            The epoch of this call, from 1.
        message : str
            Its line: the losses.
        loss : float
            The training loss, shown on the bar.
        seconds : float
            The epoch's duration.
        """
        logger.info("%s, %.2f s", message, seconds)
        if self.verbose <= 0:
            return
        if self._bar is not None:
            self._bar.set_postfix(loss=f"{loss:.5g}", refresh=False)
            self._bar.update(1)
            return
        left = (time.perf_counter() - self._started) / epoch * (self.max_epochs - epoch)
        print(f"{message}, {seconds:.2f} s, {_duration(left)} left", flush=True)

    def note(self, message):
        """Report an event of the training (such as early stopping).

        Parameters
        ----------
        message : str
        """
        logger.info(message)
        if self.verbose > 0:
            (self._bar.write if self._bar is not None else print)(message)

    def close(self):
        """End the display."""
        if self._bar is not None:
            self._bar.close()
