"""Measure how far apart two domains are, on pixels or on any backbone's features.

Every metric takes ``(source_features, target_features)`` as arrays or tensors of
shape (num_samples, num_features), validates them, and returns a float; for each,
lower means closer.

Example:

```python
import numpy as np, domadapt as da
rng = np.random.default_rng(0)
source, target = rng.normal(size=(500, 16)), rng.normal(0.5, 1, size=(500, 16))
print(da.gap.mmd(source, target), da.gap.frechet(source, target), da.gap.proxy_a_distance(source, target))
```
"""

from domadapt.gap.classifier import domain_classifier_auc, proxy_a_distance
from domadapt.gap.features import features
from domadapt.gap.kernels import MMDTestResult, kid, mmd, mmd_test
from domadapt.gap.label_shift import LabelShiftResult, label_shift, label_shift_check, prior_corrected
from domadapt.gap.report import GapReport, measure
from domadapt.gap.statistics import coral, frechet

__all__ = [
    "GapReport",
    "LabelShiftResult",
    "MMDTestResult",
    "coral",
    "domain_classifier_auc",
    "features",
    "frechet",
    "kid",
    "label_shift",
    "label_shift_check",
    "measure",
    "mmd",
    "mmd_test",
    "prior_corrected",
    "proxy_a_distance",
]
