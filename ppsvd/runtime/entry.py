"""The program a self-launched worker runs: `python -m ppsvd.runtime.entry SPEC.json`.

The launcher starts its workers the way torchrun starts a script, as processes of their own
(PyTorch's elastic agent with a command as the entry point), never by re-importing the caller's
main module (multiprocessing's spawn): so `ppsvd.run(...)` works in a plain script with no
`if __name__ == "__main__":` guard, in a notebook and under `python -c`. The worker's spec
comes as JSON in a private file the launcher wrote (runtime/worker.WorkerSpec); nothing is
unpickled.

The first thing it does, before importing torch (seconds), is take over SIGINT, SIGTERM and
SIGHUP (runtime/signals.py): a Ctrl-C while it still starts ends it quietly with 128 + the signal.
"""

from __future__ import annotations

import sys

from ppsvd.runtime.signals import StopSignal, catch_stop_signals, leave, stop_raising


def main(argv: list[str]) -> None:
    code: int | None = None
    try:
        received = catch_stop_signals()  # inside the `try`: a signal from the moment it is caught is a StopSignal here
        from ppsvd.runtime.worker import WorkerSpec, worker_main  # heavy: torch; a signal now is a StopSignal

        code = worker_main(WorkerSpec.load(argv[1]), received)
        stop_raising()  # work over: a later signal (the launcher stopping a run a peer failed) is only noted
    except StopSignal as stop:  # before the stage loop started, or after it ended: nothing to clean up
        code = 128 + stop.signum if code is None else code
    leave(code)  # os._exit, also after success: see signals.leave


if __name__ == "__main__":
    main(sys.argv)
