"""Source validation accuracy."""

import numpy as np

from domadapt.validators.base import Validator, labeled, outputs


class SourceAccuracy(Validator):
    """Accuracy on held-out labeled source images. Higher is better.

    The baseline validator: it ignores the target entirely, so it cannot see
    negative transfer, but a sharp drop flags an adaptation that broke the classifier.
    """

    name = "source_accuracy"
    requires = ("labeled_source",)
    higher_is_better = True

    def __call__(self, model, source=None, target=None, *, feature_extractor=None):
        self.check_task(model)
        images, labels = labeled(source, "source", model)
        probabilities, _ = outputs(model, images, domain="source")
        return float(np.mean(np.argmax(probabilities, axis=1) == labels))
