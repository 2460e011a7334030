import os

# scikit-learn's check_array_api_input runs only when SciPy's array API support is on;
# it must be set before SciPy is first imported.
os.environ.setdefault("SCIPY_ARRAY_API", "1")

from hypothesis import settings

# First calls into torch are slow (lazy initialisation); CI machines are noisy.
settings.register_profile("skvae", deadline=None)
settings.load_profile("skvae")

import matplotlib

matplotlib.use("Agg")  # tests draw figures without a display
