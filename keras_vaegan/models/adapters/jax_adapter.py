"""JAX: a stateless step. Variables come in as values and go out updated.

Each loss is a pure function of the variable values, evaluated inside a
``keras.StatelessScope`` (the sub-models are called as usual and read their
variables from the scope); ``jax.value_and_grad`` differentiates it, and each
optimizer's ``stateless_apply`` updates its own sub-model. Non-trainable
state (seed generators, the history pool) and the metric trackers are
threaded through the scope as well, so the whole step can be jitted.
"""

from __future__ import annotations

import jax
import keras

from keras_vaegan.models.vaecyclegan import unpack_batch


def _positions(model, variables) -> list[int]:
    index = {id(v): i for i, v in enumerate(model.trainable_variables)}
    return [index[id(v)] for v in variables]


def _loss_fn(model, objective, positions):
    """f(values at positions, all trainable, all non-trainable) -> (loss, (aux, non-trainable))."""
    trainable_refs = model.trainable_variables
    non_trainable_refs = model.non_trainable_variables

    def fn(selected, trainable, non_trainable):
        values = list(trainable)
        for i, value in zip(positions, selected):
            values[i] = value
        mapping = list(zip(trainable_refs, values)) + list(zip(non_trainable_refs, non_trainable))
        with keras.StatelessScope(state_mapping=mapping) as scope:
            loss, aux = objective()
        return loss, (aux, [scope.get_current_value(v) for v in non_trainable_refs])

    return fn


def _update_metrics(model, metrics_variables, terms):
    mapping = list(zip(model.metrics_variables, metrics_variables))
    with keras.StatelessScope(state_mapping=mapping) as scope:
        logs = model.update_trackers(terms)
    return logs, [scope.get_current_value(v) for v in model.metrics_variables]


def train_step(model, state, data):
    trainable, non_trainable, optimizer_variables, metrics_variables = state
    mri, ct = unpack_batch(data)
    g_nets = [(model.g_ct, model.g_ct_optimizer), (model.g_mri, model.g_mri_optimizer)]
    d_nets = [(model.d_ct, model.d_ct_optimizer), (model.d_mri, model.d_mri_optimizer)]
    opt_values = dict(zip(
        [id(opt) for opt in model.optimizer.optimizers],
        model.optimizer.split(optimizer_variables)))
    trainable = list(trainable)

    def generator_objective():
        total, terms, fakes = model.generator_objective(mri, ct, training=True)
        return total, (terms, fakes)

    def discriminator_objective(fakes):
        def objective():
            shown_ct, shown_mri = model.pooled_fakes(*fakes)
            terms = model.discriminator_objective(mri, ct, shown_ct, shown_mri)
            return terms["d_ct"] + terms["d_mri"], terms
        return objective

    def update(nets, objective, non_trainable):
        positions = _positions(model, [v for net, _ in nets for v in net.trainable_variables])
        fn = _loss_fn(model, objective, positions)
        (_, (aux, non_trainable)), grads = jax.value_and_grad(fn, has_aux=True)(
            [trainable[i] for i in positions], trainable, non_trainable)
        start = 0
        for net, optimizer in nets:
            count = len(net.trainable_variables)
            own = positions[start:start + count]
            new_values, opt_values[id(optimizer)] = optimizer.stateless_apply(
                opt_values[id(optimizer)], grads[start:start + count], [trainable[i] for i in own])
            for i, value in zip(own, new_values):
                trainable[i] = value
            start += count
        return aux, non_trainable

    (g_terms, fakes), non_trainable = update(g_nets, generator_objective, non_trainable)
    fakes = tuple(jax.lax.stop_gradient(f) for f in fakes)
    d_terms, non_trainable = update(d_nets, discriminator_objective(fakes), non_trainable)
    logs, metrics_variables = _update_metrics(model, metrics_variables, {**g_terms, **d_terms})
    optimizer_variables = [v for opt in model.optimizer.optimizers for v in opt_values[id(opt)]]
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
