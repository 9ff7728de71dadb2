"""AdamW with per-variable learning-rate multipliers (LiT's unlocked image tower)."""

import re

import keras


@keras.saving.register_keras_serializable(package="keras_siglip")
class MultipliedLearningRateAdamW(keras.optimizers.AdamW):
    """AdamW whose learning rate is scaled for the variables whose path matches a pattern.

    The paper's "unlocked" LiT variant trains the pretrained image tower at 0.1x
    the learning rate. Scaling gradients would not do that (Adam normalises them
    away); this scales the update itself, which is linear in the learning rate.

    Args:
        learning_rate_multipliers: dict mapping a regular expression, searched in
            each variable's path, to a factor; the first match wins, unmatched
            variables use factor 1.
        **kwargs: `keras.optimizers.AdamW` arguments.

    Example:
    >>> optimizer = MultipliedLearningRateAdamW(
    ...     learning_rate=1e-3, learning_rate_multipliers={"^image_encoder/": 0.1})
    """

    def __init__(self, learning_rate_multipliers=None, **kwargs):
        super().__init__(**kwargs)
        self.learning_rate_multipliers = dict(learning_rate_multipliers or {})
        self._patterns = [(re.compile(p), float(f)) for p, f in self.learning_rate_multipliers.items()]

    def learning_rate_multiplier(self, variable):
        for pattern, factor in self._patterns:
            if pattern.search(variable.path):
                return factor
        return 1.0

    def build(self, variables):
        super().build(variables)
        # TensorFlow hands update_step its raw tf.Variable (no path): key by identity.
        self._factors = {self._var_key(v): self.learning_rate_multiplier(v) for v in variables}

    def update_step(self, gradient, variable, learning_rate):
        factor = self._factors.get(self._var_key(variable), 1.0)
        if factor != 1.0:
            learning_rate = learning_rate * factor
        return super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        config = super().get_config()
        config["learning_rate_multipliers"] = self.learning_rate_multipliers
        return config
