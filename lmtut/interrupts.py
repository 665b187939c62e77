"""Chapter 6: Ctrl-C between steps, never inside one.

A ``KeyboardInterrupt`` raised in the middle of a training step could leave the model updated but the step not
counted, or the random generators past this step's dropout draws: a checkpoint written then would not resume
exactly. Inside :func:`deferred_interrupts`, SIGINT only takes note in the list it yields; the trainer raises the
interrupt once the step, its callbacks, its evaluation and its checkpoint are done, where the state is whole.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def deferred_interrupts() -> Iterator[list[int]]:
    """Within the block, SIGINT is noted in the yielded list instead of raising (main thread only).

    After the block, Ctrl-C raises ``KeyboardInterrupt`` as usual; the caller raises it for a noted one.
    """
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received  # signal handlers can only be set from the main thread
        return
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield received
    finally:
        signal.signal(signal.SIGINT, previous)
