"""Multi-process generation: sequence parallelism (Ulysses, Ring, USP) and CFG parallelism.

    state.py     ParallelConfig, process groups (one Axis per parallel axis), init/destroy
    shard.py     split/gather of the video tokens and RoPE table at the DiT's edges
    attention.py the sequence-parallel joint attention (the DiT's one attention hook)
    kernels.py   local attention with log-sum-exp, and exact merging of partial results
    runtime.py   ParallelRuntime: what a Pipeline holds to run across processes
    planner.py   choose degrees; communication volume per step of each choice

Single-device code never imports this package; the DiT only sees `set_joint_attention`.
"""

from omnidit.parallel.runtime import ParallelRuntime
from omnidit.parallel.state import Axis, ParallelConfig, ParallelState, destroy_parallel, init_parallel, local_state

__all__ = [
    "Axis",
    "ParallelConfig",
    "ParallelRuntime",
    "ParallelState",
    "destroy_parallel",
    "init_parallel",
    "local_state",
]
