"""Fault injection for the interruption tests: kill the process at a named point of an epoch's end.

``KERAS_VAEGAN_FAULT=name:epoch`` (epoch counted from 1, as the snapshot
and checkpoint names are) sends SIGKILL to this process when it reaches
that point, so the tests can prove that a kill between any two writes of
an epoch's end loses no record. Unset in normal use: a point then costs
one dictionary look-up.
"""

from __future__ import annotations

import os
import signal

import keras

FAULT_ENV = "KERAS_VAEGAN_FAULT"


def fault_point(name: str, epoch: int) -> None:
    """Kill this process here (SIGKILL) when ``KERAS_VAEGAN_FAULT`` is ``name:epoch``."""
    if os.environ.get(FAULT_ENV) == f"{name}:{epoch}":
        os.kill(os.getpid(), signal.SIGKILL)


class FaultPoint(keras.callbacks.Callback):
    """A fault point between two end-of-epoch callbacks (epoch counted from 1)."""

    def __init__(self, name: str):
        super().__init__()
        self.name = name

    def on_epoch_end(self, epoch, logs=None):
        fault_point(self.name, epoch + 1)
