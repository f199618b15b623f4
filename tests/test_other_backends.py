"""The model, training and CLI tests marked ``backend`` pass on JAX and PyTorch too.

Keras picks its backend once per process, so each other backend runs the
marked tests in a subprocess with KERAS_BACKEND set. Skipped when the
backend's package is not installed (``pip install -e ".[jax,torch]"``).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import keras
import pytest

TESTS = os.path.dirname(os.path.abspath(__file__))


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["tensorflow", "jax", "torch"])
def test_backend_marked_tests_pass_on(backend):
    if backend == keras.backend.backend() or os.environ.get("KERAS_VAEGAN_INNER_BACKEND_RUN"):
        pytest.skip(f"{backend} tests run in this process")
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed")
    env = {**os.environ, "KERAS_BACKEND": backend, "KERAS_VAEGAN_INNER_BACKEND_RUN": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-m", "backend", "-p", "no:cacheprovider", TESTS],
        capture_output=True, text=True, env=env, timeout=1800)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
