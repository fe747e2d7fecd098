"""Preemption: SIGUSR1 / SIGTERM set a flag; the loop checkpoints at the next step boundary and exits.

SLURM sends the signal configured by `--signal` (see slurm/config.yaml) shortly before the time limit, and SIGTERM on
preemption or scancel. We never checkpoint inside the handler (it could interrupt a half-written tensor); the flag
is read once per step and agreed across ranks, so all ranks stop at the same step.

Exit status `REQUEUE_EXIT_CODE` = 75 (EX_TEMPFAIL, sysexits.h: "temporary failure, retry later") means "stopped
cleanly with a resumable last.pt": SLURM requeues it where the site lists 75 in RequeueExit, and Snakemake reruns it
under `retries`; the rerun resumes from last.pt.
"""

from __future__ import annotations

import signal
from types import FrameType

REQUEUE_EXIT_CODE = 75
PREEMPTION_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


class PreemptionFlag:
    """Context manager installing the handlers; `requested` holds the signal number received, or None."""

    def __init__(self) -> None:
        self.requested: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = signum

    def __enter__(self) -> "PreemptionFlag":
        for sig in PREEMPTION_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def ignore_in_worker(worker_id: int) -> None:
    """DataLoader `worker_init_fn`: SLURM signals every process of the step, workers included. A worker killed by
    SIGTERM makes the DataLoader raise in the main process before it can checkpoint, so workers ignore the signals
    and leave shutdown to the main process (they exit when it closes the loader or dies)."""
    for sig in PREEMPTION_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


class Preempted(Exception):
    """Raised after the state is written (training's last.pt, a rollout's partial outputs), carrying the signal; the
    CLI turns it into REQUEUE_EXIT_CODE."""

    def __init__(self, signum: int, step: int, saved: str = "last.pt", unit: str = "step") -> None:
        super().__init__(f"received {signal.Signals(signum).name}; saved {saved} at {unit} {step}, exiting with "
                         f"{REQUEUE_EXIT_CODE} so the job can be requeued and resumed")
        self.signum, self.step = signum, step
