"""A style gap (another camera, another scanner): target-referenced style transfer + MMD.

Each source image takes the low-frequency "style" of a target image (Fourier domain
adaptation; method="histogram" matches colour histograms instead), and an MMD term
pulls the feature distributions together.

    domadapt run style_gap --source scanner_a/ --target scanner_b/ --out runs/style
"""

import domadapt as da


def recipe(method="fda"):
    return da.MimicAugment.from_target(method=method, p=0.8) + da.MMD(weight=1.0)


if __name__ == "__main__":
    from domadapt.cli import recipe_main

    recipe_main(__file__)
