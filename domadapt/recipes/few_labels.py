"""A handful of labeled target images: fine-tune as deep as the labels allow, nothing else.

FineTune("auto") decides how deep to unfreeze from the number of labeled target
images per class (the head only below 10 per class, the last quarter of the backbone
below 100, ...); the labeled target images count ``target_weight`` times in the loss.

No feature-alignment term: below 10 labels per class the backbone is frozen, so a
discriminator's reversed gradient would reach no trainable variable, and above it
the project's benchmark (benchmarks/results/fine_tune_few_labels.md) measured
fine-tuning + gradient reversal below fine-tuning alone at 10, 50 and 200 labels per
class (0.532 vs 0.594, 0.458 vs 0.591, 0.506 vs 0.635).

    domadapt run few_labels --source studio/ --target phone/ --target-labeled phone_labeled/ --out runs/few
"""

import domadapt as da


def recipe(target_weight=2.0):
    return [da.FineTune(trainable="auto", target_weight=target_weight)]


if __name__ == "__main__":
    from domadapt.cli import recipe_main

    recipe_main(__file__)
