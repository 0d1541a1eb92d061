"""One BLAS thread for training: small models on small CPUs train faster that way.

numpy's OpenBLAS starts a thread per core for every matrix product. For the layer sizes a
device trains (tens to a few thousand units, batches of 32), the threads gain little, and
when anything else wants the CPU (the app, MQTT, other devices in a simulation) the
spinning threads fight it. Median local training on a 2-core machine, one thread against
two, with another process busy on one core: 0.085 s against 0.35 s
(`fedge demo --devices 1 --rounds 10`) and 0.059 s against 2.2 s (`--devices 3 --rounds
20`). On the idle machine the two were within 25% of each other either way.

threadpoolctl changes the limit at run time, after numpy is loaded, which an environment
variable cannot. The limit is process-wide; an app that embeds the SDK decides for itself
whether to call this (the `fedge` command does, unless the user set a thread count).
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

THREAD_ENV_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def limit_blas_threads(threads: int = 1) -> bool:
    """Limit numpy's BLAS to `threads` threads for this process, unless the environment
    already names a count (the user's choice wins). True when a limit was set."""
    if threads < 1:
        raise ValueError(f"threads must be >= 1, not {threads}")
    chosen = [name for name in THREAD_ENV_VARS if os.environ.get(name)]
    if chosen:
        log.debug("BLAS threads left as %s says", chosen[0])
        return False
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        log.info("threadpoolctl is not installed: BLAS keeps its default thread count "
                 "(set OPENBLAS_NUM_THREADS=%d before starting for the same effect)", threads)
        return False
    threadpool_limits(limits=threads, user_api="blas")
    return True
