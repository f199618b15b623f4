"""The model, training and CLI tests marked ``backend`` pass on JAX and PyTorch too.

Keras picks its backend once per process, so each other backend runs the
marked tests in a subprocess with KERAS_BACKEND set. Skipped when the
backend's package is not installed (``pip install -e ".[jax,torch]"``).
Each backend has its own class so that ``pytest -n 2 --dist loadscope``
(the README's command) runs the two long subprocess suites on different
workers.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import keras
import pytest

TESTS = os.path.dirname(os.path.abspath(__file__))


def run_backend_marked_tests(backend: str) -> None:
    if backend == keras.backend.backend() or os.environ.get("KERAS_VAEGAN_INNER_BACKEND_RUN"):
        pytest.skip(f"{backend} tests run in this process")
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed")
    env = {**os.environ, "KERAS_BACKEND": backend, "KERAS_VAEGAN_INNER_BACKEND_RUN": "1"}
    # the timeout only guards against a hang; beside other jobs on two cores the whole
    # suite took 70 minutes, so each backend's share can come near 1,800 s
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-m", "backend", "-p", "no:cacheprovider", TESTS],
        capture_output=True, text=True, env=env, timeout=3000)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]


@pytest.mark.slow
class TestJAX:
    def test_backend_marked_tests_pass(self):
        run_backend_marked_tests("jax")


@pytest.mark.slow
class TestPyTorch:
    def test_backend_marked_tests_pass(self):
        run_backend_marked_tests("torch")


@pytest.mark.slow
class TestTensorFlow:
    """Runs when the outer process itself uses another backend."""

    def test_backend_marked_tests_pass(self):
        run_backend_marked_tests("tensorflow")
