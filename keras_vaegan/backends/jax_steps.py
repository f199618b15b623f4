"""JAX: a stateless step. Variables come in as values and go out updated.

Each loss is a pure function of the variable values, evaluated inside a
``keras.StatelessScope`` (the sub-models are called as usual and read their
variables from the scope); ``jax.value_and_grad`` differentiates it, and each
optimizer's ``stateless_apply`` updates its own sub-model. Non-trainable
state (seed generators, the history pool), the optimizers' state (loss
scales included) and the metric trackers are threaded through as values, so
the whole step is jitted. Under ``keras.distribution.DataParallel`` the step
sees the global batch, so means are already over the global batch.
"""

from __future__ import annotations

from typing import Callable

import jax
import keras

from keras_vaegan.backends.distribution import Distribution
from keras_vaegan.backends.loss_scaling import scale_ratios, unpack_batch
from keras_vaegan.errors import VAEGANError


def accelerator_available() -> bool:
    return any(device.platform != "cpu" for device in jax.devices())


def accelerator_name() -> str | None:
    """The first accelerator's model name, or None on a CPU (what a benchmark ran on)."""
    device = jax.devices()[0]
    return None if device.platform == "cpu" else device.device_kind


def distribution(strategy: str) -> Distribution:
    """keras.distribution.DataParallel over the local devices (auto: several accelerators)."""
    if strategy == "multiworker":
        # Tried over two CPU processes (jax.distributed.initialize + DataParallel, each
        # process feeding its rows): the steps train in step, but the chief's end-of-epoch
        # writes (model.save_weights) are cross-process device_puts the others never join.
        raise VAEGANError(None, "--strategy multiworker is not supported with JAX: the "
                                "processes train in step, but saving the chief's checkpoint "
                                "needs every process (docs/distributed.md); use "
                                "KERAS_BACKEND=tensorflow for multi-worker training")
    devices = jax.devices()
    if strategy == "auto" and (len(devices) < 2 or not accelerator_available()):
        return Distribution("none")
    if strategy not in ("auto", "mirrored"):
        raise VAEGANError(None, f"unknown --strategy '{strategy}'")
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
    return Distribution("keras.distribution.DataParallel", len(devices), jax.process_index() == 0)


def _positions(model, variables) -> list[int]:
    index = {id(v): i for i, v in enumerate(model.trainable_variables)}
    return [index[id(v)] for v in variables]


def _update_metrics(model, metrics_variables, terms):
    mapping = list(zip(model.metrics_variables, metrics_variables))
    with keras.StatelessScope(state_mapping=mapping) as scope:
        logs = model.update_trackers(terms)
    return logs, [scope.get_current_value(v) for v in model.metrics_variables]


def train_step(model, state, data):
    trainable, non_trainable, optimizer_variables, metrics_variables = state
    mri, ct = unpack_batch(data)
    trainable = list(trainable)
    optimizers = model.optimizer.optimizers
    opt_values = dict(zip([id(opt) for opt in optimizers],
                          model.optimizer.split(optimizer_variables)))
    trainable_refs = model.trainable_variables
    non_trainable_refs = model.non_trainable_variables

    def optimizer_mapping():
        return [(v, value) for opt in optimizers
                for v, value in zip(opt.variables, opt_values[id(opt)])]

    def update(nets, objective, non_trainable):
        """One update: grads of ``objective`` for ``nets``, applied by their optimizers."""
        positions = _positions(model, [v for net, _ in nets for v in net.trainable_variables])
        first_optimizer = nets[0][1]

        def loss_fn(selected, non_trainable):
            values = list(trainable)
            for i, value in zip(positions, selected):
                values[i] = value
            mapping = (list(zip(trainable_refs, values))
                       + list(zip(non_trainable_refs, non_trainable)) + optimizer_mapping())
            with keras.StatelessScope(state_mapping=mapping) as scope:
                loss, aux = objective()
                scaled = first_optimizer.scale_loss(loss)
            return scaled, (aux, [scope.get_current_value(v) for v in non_trainable_refs])

        (_, (aux, non_trainable)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            [trainable[i] for i in positions], non_trainable)
        with keras.StatelessScope(state_mapping=optimizer_mapping()):
            ratios = [None if r is None else keras.ops.convert_to_tensor(r)
                      for r in scale_ratios(nets)]
        start = 0
        for (net, optimizer), ratio in zip(nets, ratios):
            count = len(net.trainable_variables)
            own = positions[start:start + count]
            part = grads[start:start + count]
            if ratio is not None:
                part = [g * ratio.astype(g.dtype) for g in part]
            new_values, opt_values[id(optimizer)] = optimizer.stateless_apply(
                opt_values[id(optimizer)], part, [trainable[i] for i in own])
            for i, value in zip(own, new_values):
                trainable[i] = value
            start += count
        return aux, non_trainable

    def generator_objective():
        total, terms, fakes = model.generator_objective(mri, ct, training=True)
        return total, (terms, fakes)

    (g_terms, fakes), non_trainable = update(model.generator_updates, generator_objective,
                                             non_trainable)
    fake_ct, fake_mri = (jax.lax.stop_gradient(f) for f in fakes)

    def discriminator_objective():
        shown_ct, shown_mri = model.pooled_fakes(fake_ct, fake_mri)
        terms = model.discriminator_objective(mri, ct, shown_ct, shown_mri)
        return terms["d_ct"] + terms["d_mri"], terms

    d_terms, non_trainable = update(model.discriminator_updates, discriminator_objective,
                                    non_trainable)
    logs, metrics_variables = _update_metrics(model, metrics_variables, {**g_terms, **d_terms})
    optimizer_variables = [v for opt in optimizers for v in opt_values[id(opt)]]
    return logs, (trainable, non_trainable, optimizer_variables, metrics_variables)


def test_step(model, state, data):
    trainable, non_trainable, metrics_variables = state
    mri, ct = unpack_batch(data)
    mapping = (list(zip(model.trainable_variables, trainable))
               + list(zip(model.non_trainable_variables, non_trainable)))
    with keras.StatelessScope(state_mapping=mapping) as scope:
        terms = model.evaluation_terms(mri, ct)
    non_trainable = [scope.get_current_value(v) for v in model.non_trainable_variables]
    logs, metrics_variables = _update_metrics(model, metrics_variables, terms)
    return logs, (trainable, non_trainable, metrics_variables)


# --- prediction: a compiled forward pass ----------------------------------------------


def compiled_forward(compiled, net) -> Callable:
    """Prediction's compiled pass of ``net`` for ``compiled.shape`` (see ``inference.compiled``)."""
    def pure(trainable, non_trainable, images):
        compiled.traces += 1
        state = non_trainable  # the latent's seed state, threaded through both mirror passes

        def forward(x):
            nonlocal state
            (image, _, _), state = net.stateless_call(
                trainable, state, x, training=False, sample=compiled.sample)
            return image

        return compiled.averaged(forward, images), state

    jitted = jax.jit(pure)

    def run(images):
        image, non_trainable = jitted([v.value for v in net.trainable_variables],
                                      [v.value for v in net.non_trainable_variables], images)
        if compiled.sample:  # the latent's seed state moved on: keep it, as an eager call does
            for variable, value in zip(net.non_trainable_variables, non_trainable):
                variable.assign(value)
        return image

    return run
