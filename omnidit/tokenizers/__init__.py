"""Text encoders (transformers) and the video VAE (diffusers).

Always import this package as `omnidit.tokenizers`: a top-level `tokenizers` on sys.path
would shadow Hugging Face's `tokenizers`, which transformers needs.
"""

if __name__ == "tokenizers":
    # This folder was found as a top-level `tokenizers` because omnidit/ itself is on sys.path
    # (a script run from inside it, or omnidit/ added to PYTHONPATH). That shadows Hugging Face's
    # package, which transformers imports; stop here with the fix instead of failing inside it.
    raise ImportError(
        f"{__file__} was imported as the top-level module `tokenizers`, shadowing Hugging Face's "
        "`tokenizers`: omnidit/ itself is on sys.path. Put the folder that contains omnidit/ there "
        "instead (run from the repository root, or `python -m omnidit ...`)."
    )

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
