"""Write your own strategy in a few lines and combine it with the built-in ones.

Here: pull the mean target prediction toward uniform (a class-balance prior), so an
adapted model does not collapse onto a few classes, next to gradient reversal and
entropy minimisation.

    domadapt run custom_strategy --source sunny/ --target rainy/ --out runs/custom
"""

import keras

import domadapt as da


@keras.saving.register_keras_serializable(package="recipes")
class ClassBalance(da.Strategy):
    """KL(uniform || mean target prediction), times weight."""

    log_names = ("balance_loss",)

    def __init__(self, weight=0.1, **kwargs):
        super().__init__(**kwargs)
        self.weight = weight

    def loss(self, step):
        mean = keras.ops.mean(step.target_probabilities, axis=0)
        uniform = keras.ops.ones_like(mean) / keras.ops.cast(keras.ops.shape(mean)[0], "float32")
        kl = keras.ops.sum(uniform * (keras.ops.log(uniform) - keras.ops.log(mean + 1e-7)))
        return {"balance_loss": self.weight * kl}

    def get_config(self):
        return {**super().get_config(), "weight": self.weight}


def recipe(weight=0.1):
    return da.DANN() + da.EntropyMinimization(0.1) + ClassBalance(weight)


if __name__ == "__main__":
    from domadapt.cli import recipe_main

    recipe_main(__file__)
