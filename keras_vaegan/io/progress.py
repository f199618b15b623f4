"""Progress of long work, reported without printing: the library calls, the CLI draws.

``predict`` and ``evaluate`` take ``progress: Progress | None`` and call it
as ``progress(done, total)`` after each unit of work (a slice), with the
total known so far (it may shrink when a bad volume is skipped). The CLI
passes a ``click.progressbar`` with rate and ETA on stderr
(``keras_vaegan.cli.ProgressBar``); Python users pass their own callable, or
nothing.
"""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    def __call__(self, done: int, total: int) -> None: ...
