"""Sunny to rainy: weather mimicking + DANN + batch-norm statistics that fit the weights.

Source: labeled images taken in good weather. Target: unlabeled images in rain.
Source images are rendered in rain (or in the preset that best matches the target,
with auto=True) and a domain discriminator behind a gradient reversal layer aligns
the features (DANN).

Batch norm depends on where the weights come from:

* pretrained backbone (``pretrained=True``, the command line's choice when ImageNet
  or a saved model is loaded): the pretrained statistics stay frozen while training
  (small batches would spoil them), then are re-estimated on the target (AdaBN).
* randomly initialised backbone (``pretrained=False``): batch norm trains with the
  network. Freezing it would pin random-init statistics (mean 0, variance 1) that
  no layer was trained with, and AdaBN on top would swap in statistics the network
  never saw.

    domadapt run sunny_to_rainy --source sunny/ --target rainy/ --epochs 5 --out runs/rain
"""

import domadapt as da


def recipe(target_images=None, source_images=None, auto=False, severity=0.6, pretrained=True):
    if auto and source_images is not None and target_images is not None:
        augment = da.MimicAugment.auto(source_images, target_images, candidates=["rain", "fog", "overcast", "night"],
                                       severity=severity)
    else:
        augment = da.MimicAugment("rain", severity=severity, p=0.7)
    if not pretrained:
        return augment + da.DANN()
    return augment + da.DANN() + da.FineTune(trainable="all", batchnorm="adapt")


if __name__ == "__main__":
    from domadapt.cli import recipe_main

    recipe_main(__file__)
