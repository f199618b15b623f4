"""Swap chosen layers' ``call`` for the length of a ``with`` block (graph tracing only).

Two graphs are traced from a model whose layers need another body there
than in eager Keras: the compiled prediction pass (few-filter convolutions
as depthwise sums, ``tensorflow_steps``) and the SavedModel export
(bilinear upsampling with a symbolic size, ``inference.export``). Both set
an instance attribute that shadows the class's ``call`` and delete it
afterwards, so the layer, its weights and its saved config are untouched
and an exception inside the block leaves no layer patched.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def replaced_calls(models, replacement: Callable) -> Iterator[list]:
    """Within the block, layer ``L`` of ``models`` runs ``replacement(L)`` when that is not None.

    Yields the layers replaced. ``replacement`` sees every nested layer
    (not the models themselves) and returns the new ``call`` or None.
    """
    patched = []
    try:
        for model in models:
            for layer in model._flatten_layers(include_self=False, recursive=True):
                call = replacement(layer)
                if call is not None:
                    object.__setattr__(layer, "call", call)
                    patched.append(layer)
        yield patched
    finally:
        for layer in patched:
            object.__delattr__(layer, "call")
