"""How the suite shares the machine between pytest-xdist workers.

Two kinds of module get special treatment:

- *one-worker* modules share an expensive fixture (a finished search, a Ray
  cluster), so each runs whole on one worker and builds it once;
- *quiet* modules compare wall-clock figures, so they run last, on one worker,
  after every other worker has exited: on a 2-core machine a neighbour's
  training run moves a latency figure by 10% or more.

Every other test is spread one by one. A scheduler, not `xdist_group` marks:
`--dist loadgroup` silently stops grouping on pytest 9.2 (pytest-xdist#1386).
Imported by `tests/conftest.py`, and by `tests/test_xdist_scheduling.py`'s
inner suite, which checks that a quiet module really runs alone.
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict
from pathlib import Path


def make_scheduler(config, log, one_worker_modules: tuple[str, ...], quiet_modules: tuple[str, ...]):
    """The scheduler for `pytest_xdist_make_scheduler`, or None to leave an explicit `--dist` choice alone.

    Args:
        one_worker_modules: module paths (as in node ids) that run whole on one worker.
        quiet_modules: module paths that run whole, last, on one worker, with every
            other worker told to shut down first.
    """
    if config.getvalue("dist") != "load":
        return None
    from xdist.scheduler import LoadScopeScheduling

    whole = set(one_worker_modules) | set(quiet_modules)
    quiet = set(quiet_modules)

    class SharedAndQuietModules(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return module if module in whole else nodeid

        def __init__(self, config, log) -> None:
            super().__init__(config, log)
            self.quiet_put_last = False

        def _assign_work_unit(self, node) -> None:
            if not self.quiet_put_last:
                # The first assignment, right after `schedule` built the work
                # queue: move the quiet modules behind everything else.
                self.quiet_put_last = True
                units = list(self.workqueue.items())
                self.workqueue = OrderedDict(
                    [unit for unit in units if unit[0] not in quiet] + [unit for unit in units if unit[0] in quiet]
                )
            if not self.workqueue:
                return  # everything left went to the quiet worker
            scope = next(iter(self.workqueue))
            if scope not in quiet:
                super()._assign_work_unit(node)
                return
            # Only quiet modules are left: every other worker finishes what it
            # holds and exits, and this one gets all of them, back to back. (A
            # worker holding one test waits for a second or for shutdown before
            # it runs it, so they cannot be handed out one at a time.)
            for other in self.nodes:
                if other is not node and not other.shutting_down:
                    other.shutdown()
            while self.workqueue:
                super()._assign_work_unit(node)

    return SharedAndQuietModules(config, log)


def _finished_markers(config) -> Path:
    # Every worker's basetemp is <the controller's basetemp>/popen-gwN: the
    # parent is one folder per run, shared by all of its workers.
    return Path(config.option.basetemp).parent / "finished-workers"


def mark_worker_finished(config) -> None:
    """Record that this xdist worker has run and torn down everything; for `pytest_sessionfinish`.

    A marker file, not the process: a finished worker's process lives on until
    the controller tears every gateway down at the very end.
    """
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker is None:
        return
    markers = _finished_markers(config)
    markers.mkdir(exist_ok=True)
    (markers / worker).touch()


def finished_workers(config) -> list[str]:
    """The ids (gw0, gw1, ...) of the workers of this run that have finished."""
    markers = _finished_markers(config)
    return sorted(path.name for path in markers.iterdir()) if markers.is_dir() else []


def wait_until_alone(config, timeout_s: float) -> float:
    """Block until every other worker of this xdist run has finished; return the seconds waited (0 outside xdist).

    Raises:
        TimeoutError: naming the workers still running after `timeout_s`.
    """
    me = os.environ.get("PYTEST_XDIST_WORKER")
    if me is None:
        return 0.0
    others = {f"gw{index}" for index in range(int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))} - {me}
    start = time.monotonic()
    while running := sorted(others - set(finished_workers(config))):
        if time.monotonic() - start > timeout_s:
            raise TimeoutError(f"pytest-xdist workers {', '.join(running)} still running after {timeout_s:.0f} s")
        time.sleep(0.5)
    return time.monotonic() - start
