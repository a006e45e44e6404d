"""domadapt: domain adaptation for Keras 3 models.

Wrap any Keras backbone in :class:`DomainAdapter`, add strategies that use
unlabeled target data, measure the domain gap with :mod:`domadapt.gap`.
"""

import os as _os

_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from domadapt.adapter import DomainAdapter  # noqa: E402
from domadapt.strategy import Recipe, Step, Strategy  # noqa: E402

__version__ = "0.1.0"

__all__ = ["DomainAdapter", "Recipe", "Step", "Strategy"]
