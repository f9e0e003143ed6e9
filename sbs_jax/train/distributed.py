"""Multi-process start-up: `jax.distributed.initialize` from flags or the launch scripts' environment.

TPU pods initialise themselves (`SBS_COORDINATOR_ADDRESS=auto`); GPU clusters and local multi-process runs
pass the coordinator address, the number of processes and this process's id (flags win over environment).
"""
from __future__ import annotations

import os

import jax


def maybe_initialize(coordinator_address: str | None = None, num_processes: int | None = None,
                     process_id: int | None = None) -> bool:
    """Initialise the JAX distributed runtime when configured; returns whether it did. Call before any JAX
    computation."""
    address = coordinator_address or os.environ.get("SBS_COORDINATOR_ADDRESS")
    if not address:
        return False
    if address == "auto":
        jax.distributed.initialize()
        return True
    num_processes = num_processes if num_processes is not None else os.environ.get("SBS_NUM_PROCESSES")
    process_id = process_id if process_id is not None else os.environ.get("SBS_PROCESS_ID")
    if num_processes is None or process_id is None:
        raise ValueError(f"coordinator address {address!r} given without the number of processes and this "
                         "process's id (--num_processes/--process_id or SBS_NUM_PROCESSES/SBS_PROCESS_ID)")
    jax.distributed.initialize(coordinator_address=address, num_processes=int(num_processes),
                               process_id=int(process_id))
    return True
