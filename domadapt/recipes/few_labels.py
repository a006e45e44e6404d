"""A handful of labeled target images: auto fine-tuning + gradient reversal on the rest.

FineTune("auto") decides how deep to unfreeze from the number of labeled target
images per class (feature extraction below 10 per class); the labeled target
images count twice in the loss; a domain discriminator aligns the unlabeled rest.

    python recipes/few_labels.py --source studio/ --target phone/ --target-labeled phone_labeled/ --out runs/few
"""

import domadapt as da


def recipe(target_weight=2.0):
    return da.FineTune(trainable="auto", target_weight=target_weight) + da.GradientReversal()


if __name__ == "__main__":
    from domadapt.cli import recipe_main

    recipe_main(__file__)
