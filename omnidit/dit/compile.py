"""Regional `torch.compile` of the DiT: each repeated block is compiled in place, not the whole model.

The transformer is N copies of two block classes (dual-stream, single-stream). `nn.Module.compile`
on each block compiles the class's `forward` once: parameters are graph inputs (dynamo inlines
built-in modules), so every block of a class reuses one graph, and compile time is that of one
block per class whatever the depth. Everything around the blocks stays eager: the embedders, the
final layer, the step cache's skip decisions (omnidit/dit/cache.py) and the sampler.

What stays out of the graphs, and why:
- The joint-attention hook (`DiT.joint_attention`, marked `torch.compiler.disable`): the
  sequence-parallel hook runs collectives, and the default one branches on each sample's text
  length, which a graph would specialise on (a recompile per prompt length). Each block is
  therefore two graphs, before and after attention, and the kernel itself runs as in eager.
- The step cache: a skipped step never enters a block; a step where only some samples compute
  runs the blocks on that sub-batch. Batch size and token count are the only shapes that vary,
  so after the first change dynamo marks them dynamic and later ones reuse that graph
  (`dynamic=None`, torch's default): a bounded number of compiles, none per step
  (tests/test_compile.py counts them).

`nn.Module.compile` keeps the module and its state-dict keys as they are (no `_orig_mod.`
prefix), so LoRA loading, FP8 weights and checkpoints see the same names.
"""

from __future__ import annotations

from torch import nn

BACKENDS = ("inductor", "aot_eager", "eager")  # inductor: generated kernels; the others: for tests and debugging


def repeated_blocks(dit: nn.Module) -> list[nn.Module]:
    """The DiT's repeated blocks in call order (dual-stream, then single-stream)."""
    return [*dit.transformer_blocks, *getattr(dit, "single_transformer_blocks", [])]


def compile_blocks(dit: nn.Module, *, backend="inductor", mode: str | None = None,
                   dynamic: bool | None = None) -> int:
    """Compile each repeated block of `dit` in place (see the module docstring) -> how many.

    `backend`: a name in BACKENDS or a callable dynamo backend (tests count graphs with one);
    `mode`: inductor's ("default", "reduce-overhead", "max-autotune"); `dynamic`: torch.compile's.
    Calling it again recompiles with the new options. The first forward of each new shape pays
    the compile time; `Pipeline.compile` is the same on a pipeline's DiT.
    """
    if isinstance(backend, str) and backend not in BACKENDS:
        raise ValueError(f"compile backend must be one of {BACKENDS} (or a dynamo backend callable), got {backend!r}")
    from omnidit.dit.offload import offload_state

    if offload_state(dit) is not None:  # its hooks move each block's weights between devices around every call
        raise ValueError("compile and offload=blocks do not combine: compile without offload, or offload uncompiled")
    blocks = repeated_blocks(dit)
    for block in blocks:
        block.compile(backend=backend, mode=mode, dynamic=dynamic)
    return len(blocks)

