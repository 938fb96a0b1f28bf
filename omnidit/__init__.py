"""omnidit: one diffusion-transformer backbone for text-to-image and text-to-video."""

__version__ = "0.1.0"

__all__ = ["Pipeline", "Generation", "__version__"]


def __getattr__(name: str):
    # Lazy so that `import omnidit` (e.g. for the CLI's --help) does not pay for torch.
    if name in ("Pipeline", "Generation"):
        from omnidit import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'omnidit' has no attribute {name!r}")
