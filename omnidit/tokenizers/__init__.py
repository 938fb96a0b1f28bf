"""Text encoders (transformers) and the video VAE (diffusers).

Always import this package as `omnidit.tokenizers`: a top-level `tokenizers` on sys.path
would shadow Hugging Face's `tokenizers`, which transformers needs.
"""

if __name__ == "tokenizers":
    # This folder was imported as a top-level `tokenizers` because omnidit/ itself is on
    # sys.path (e.g. a script run from inside it). Hand the name over to Hugging Face's
    # package, which transformers needs, instead of shadowing it.
    import importlib.machinery
    import importlib.util
    import os
    import sys

    _ours = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
    _path = [p for p in sys.path if os.path.realpath(p or os.getcwd()) != _ours]
    _spec = importlib.machinery.PathFinder.find_spec("tokenizers", _path)
    if _spec is None or _spec.loader is None:
        raise ImportError("Hugging Face `tokenizers` is not installed (omnidit/tokenizers is not a substitute)")
    _hf = importlib.util.module_from_spec(_spec)
    sys.modules["tokenizers"] = _hf  # the import system returns whatever is here after we finish
    _spec.loader.exec_module(_hf)
else:
    from omnidit.tokenizers.text import (
        HunyuanTextEncoder,
        SentenceTextEncoder,
        TextEmbeddings,
        TextEncoder,
        default_sentence_encoder_path,
        load_text_encoder,
    )
    from omnidit.tokenizers.vae import VideoVAE, frames_to_uint8

    __all__ = [
        "HunyuanTextEncoder",
        "SentenceTextEncoder",
        "TextEmbeddings",
        "TextEncoder",
        "VideoVAE",
        "default_sentence_encoder_path",
        "frames_to_uint8",
        "load_text_encoder",
    ]
