"""A training step whose loss or gradients are not finite changes nothing: it is skipped and counted.

One overflow (a bfloat16 logit, a huge gradient) would otherwise turn every
weight and the optimizer's moments into NaN for good. `SigLIP.train_step`
runs Keras's step, then keeps its new state only where everything it produced
is finite (chosen inside the compiled step: no host sync, on every
backend); otherwise the weights, the optimizer's slots and its step count
stay as they were, and the `skipped_steps` metric (in `fit`'s logs and
history, per epoch) counts the step. A NaN loss or gradient reaches the
updated weights through the optimizer, so checking what the step produced
covers both.

On JAX the step is a function of the state and the check chooses the old or
the new state (one `lax.cond`); on TensorFlow and PyTorch the step updates the
variables in place, so their values from before the step are kept aside
(one copy of the model's and optimizer's state, alive for the step).
"""

import keras
from keras import ops


def _all_finite(values):
    checks = [ops.all(ops.isfinite(value)) for value in values if "float" in keras.backend.standardize_dtype(value.dtype)]
    return ops.all(ops.stack(checks)) if checks else ops.convert_to_tensor(True)


def guarded_variables(model):
    """The variables a step changes and a skipped step must leave alone."""
    return list(model.trainable_variables) + list(model.non_trainable_variables) + list(model.optimizer.variables)


def keep_if_finite_jax(model, old_state, new_state, counter):
    """JAX: `(state, skipped)`: `new_state` where all of it is finite, else `old_state`, and `counter`'s total.

    `counter` (a `keras.metrics.Sum`) counts the skipped steps in the state's metric variables.
    """
    import jax

    trainable, non_trainable, optimizer, metrics = new_state
    finite = _all_finite(list(trainable) + list(non_trainable) + list(optimizer))
    # One conditional, not an elementwise select per variable: XLA compiles a select over the whole state
    # as one huge fusion (the tiny test model's step: 29 s to compile instead of 6 s), and runs it every step.
    kept = jax.lax.cond(finite, lambda: tuple(map(list, new_state[:3])), lambda: tuple(map(list, old_state[:3])))
    positions = {id(v): i for i, v in enumerate(model.metrics_variables)}
    metrics = list(metrics)
    for variable in counter.variables:
        index = positions[id(variable)]
        metrics[index] = metrics[index] + ops.cast(ops.logical_not(finite), metrics[index].dtype)
        total = metrics[index]
    return (*kept, metrics), total


def keep_if_finite_in_place(model, before, counter):
    """TensorFlow / PyTorch: puts back `before` (values of `guarded_variables`) unless all is finite."""
    variables = guarded_variables(model)
    finite = _all_finite([v.value for v in variables])
    for variable, old in zip(variables, before):
        variable.assign(ops.where(finite, variable.value, old))
    counter.update_state(ops.cast(ops.logical_not(finite), "float32"))
