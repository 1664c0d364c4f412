"""Job runners for the app's isolation tests (tests/test_app.py). They live in a module of their own so that a job's
worker process (multiprocessing "spawn") can import them by name without importing gradio."""

import ctypes
import signal
import time

from apps import jobs


def crash_hang_or_finish(job, device):
    """'crash' in the prompt: a real segfault; 'hang': sleeps ignoring Stop and SIGTERM, as native code does;
    otherwise a few quick steps, then done."""
    if "crash" in job.cfg.prompt:
        ctypes.string_at(0)  # reads address 0: SIGSEGV
    if "hang" in job.cfg.prompt:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        while True:
            time.sleep(0.1)
    for i in range(3):
        job.update(step=i + 1)
        time.sleep(0.05)
    job.update(state=jobs.DONE, message="fine")
