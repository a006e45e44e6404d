"""Sunny to rainy: weather mimicking + gradient reversal + batch-norm handling.

Source: labeled images taken in good weather. Target: unlabeled images in rain.
Source images are rendered in rain (or in the preset that best matches the
target, with auto=True), a domain discriminator behind a gradient reversal layer
aligns the features, and FineTune keeps batch-norm statistics frozen during
training, then re-estimates them on the target (AdaBN).

    python recipes/sunny_to_rainy.py --source sunny/ --target rainy/ --epochs 5 --out runs/rain
"""

import domadapt as da


def recipe(target_images=None, source_images=None, auto=False, severity=0.6):
    if auto and source_images is not None and target_images is not None:
        augment = da.MimicAugment.auto(source_images, target_images, candidates=["rain", "fog", "overcast", "night"],
                                       severity=severity)
    else:
        augment = da.MimicAugment("rain", severity=severity, p=0.7)
    return augment + da.GradientReversal() + da.FineTune(trainable="all", batchnorm="adapt")


if __name__ == "__main__":
    from domadapt.cli import recipe_main

    recipe_main(__file__)
