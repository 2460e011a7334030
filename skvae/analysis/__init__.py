"""Analyses that read a fitted model: functions of a fitted estimator and cells, returning values.

The room for what comes after embedding and naming, kept out of the estimators (they
only fit, embed, decode and save): each function here takes a fitted estimator and the
cells (and their batches, samples, groups) as arrays, uses the estimator's public
methods only, and returns arrays or DataFrames.

- :func:`corrected_expression`: each cell's expression decoded under chosen batches
  (batch-corrected expression, scVI's ``transform_batch``).
- :func:`type_statistics`: a classifier's cell types as it learned them.
- :func:`differential_expression`: genes that differ between two groups of cells, tested over
  samples (pseudobulk PyDESeq2), batch-corrected through the decoder.
"""

from ._de import differential_expression
from ._expression import corrected_expression
from ._labels import type_statistics

__all__ = ["corrected_expression", "differential_expression", "type_statistics"]
