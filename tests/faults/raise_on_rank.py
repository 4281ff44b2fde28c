"""`torchrun ... tests/faults/raise_on_rank.py RANK STEP [distill overrides]`: python -m distill, with a RuntimeError on
process RANK when it starts step STEP (1-based): a fault on one rank of a multi-process run
(tests/test_multiprocess_faults.py). The wall time of the fault goes to the file $FAULT_MARK."""
import os
import sys
import time
from pathlib import Path

import distill.loop
from distill.__main__ import main

RANK, STEP = int(sys.argv.pop(1)), int(sys.argv.pop(1))
real_step = distill.loop.distill_step


def failing_step(distiller, guard, counters):
    if int(os.environ.get("RANK", "0")) == RANK and counters.step + 1 == STEP:
        Path(os.environ["FAULT_MARK"]).write_text(str(time.time()))
        raise RuntimeError(f"injected fault on rank {RANK} at step {STEP}")
    return real_step(distiller, guard, counters)


distill.loop.distill_step = failing_step
main()
