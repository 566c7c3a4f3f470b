"""`medtune train --processes N`: N training processes on this machine, started as `torchrun --standalone
--nproc_per_node N` starts them, through torch's own launcher, so a multi-GPU run is one medtune command.

Several machines stay torchrun's job (README, "Several machines"): it owns the rendezvous across hosts.
"""

from __future__ import annotations

import logging
import os
import sys
import uuid

from medtune.cli.errors import INTERRUPTED
from medtune.cli.quiet import VERBOSE_ENV


def launch_local(processes: int, command: list[str]) -> int:
    """Run `python -m medtune.cli COMMAND...` in `processes` processes that meet through a rendezvous on this machine
    (each finds its rank, world size and GPU in its environment, as under torchrun). Returns 0, or the exit code of
    the first process that failed (128 + the signal for one killed by a signal); the others are stopped then.

    Ctrl-C or SIGTERM to this process is passed on to the processes, which finish their step and save a checkpoint
    (given up to TORCH_ELASTIC_SHUTDOWN_TIMEOUT seconds, default here 300, not torchrun's 30: a large run's save
    takes longer); the exit code is then 130, as `train`'s for an interruption."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    os.environ.setdefault("OMP_NUM_THREADS", "1")  # torchrun's default for several processes: each would use every core
    if not os.environ.get(VERBOSE_ENV):  # the processes print their own errors; the launcher's log would repeat them
        for name in [*logging.root.manager.loggerDict]:  # each of its modules' loggers sets its own level
            if name.startswith("torch.distributed.elastic"):
                logging.getLogger(name).setLevel(logging.CRITICAL)
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=processes,
        run_id=str(uuid.uuid4()),
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",  # a free port, as torchrun --standalone picks
        max_restarts=0,
        shutdown_timeout=int(os.environ.get("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", "300")),
    )
    try:
        elastic_launch(config, sys.executable)("-m", "medtune.cli", *command)
    except ChildFailedError as error:
        rank, failure = error.get_first_failure()
        if failure.exitcode >= 0:
            return failure.exitcode
        print(f"error: training process {rank} of {processes} was killed by {failure.signal_name()}", file=sys.stderr)
        return 128 - failure.exitcode
    except SignalException:  # the processes have been stopped and have said at which step they saved
        return INTERRUPTED
    return 0
