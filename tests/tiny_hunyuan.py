"""A complete, tiny, random HunyuanVideo pipeline in diffusers format, built offline.

`make_tiny_hunyuan_pipeline_dir(path)` writes model_index.json, transformer/, vae/,
text_encoder/ (LlamaModel), tokenizer/, text_encoder_2/ (CLIPTextModel), tokenizer_2/ and
scheduler/ through `HunyuanVideoPipeline(...).save_pretrained`, so the folder is genuinely
diffusers-format and `HunyuanVideoPipeline.from_pretrained(path)` loads it back.

Tokenizers are built here from word lists (no hub access):
- tokenizer/: a word-level tokenizer whose pre-tokenizer is Llama-3's split regex, so the
  default HunyuanVideo template prefix is exactly 95 tokens, like the real one (crop_start=95).
- tokenizer_2/: a CLIPTokenizer over the 256 byte symbols plus whole-word merges.

Sizes: latent channels 4, VAE compression 8x spatial / 4x temporal (as HunyuanVideo),
transformer patch 2x2, heads 2 x 8, text dims 16. A 32x32, 5-frame, 2-step generation takes
well under a second on CPU.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

# Words the tiny tokenizers know as whole tokens (anything else maps to [UNK] / bytes).
WORDS = (
    "a an the cat dog bird fish red green blue yellow white black purple orange circle square "
    "triangle star ball box moving moves walks runs jumps spins left right up down on in over "
    "under grass sky water bouncing rotating big small two three one of and with video image"
).split()

LLAMA_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
# Llama-3's pre-tokenizer split pattern (kept so the template prefix splits like the real tokenizer).
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def make_llama_tokenizer():
    """Word-level tokenizer with Llama-3 splitting and specials; pads on the right with <|end_of_text|>."""
    from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    split = pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated")
    corpus = [DEFAULT_PROMPT_TEMPLATE["template"].format(""), " ".join(WORDS), " ".join(WORDS).title()]
    pieces: list[str] = []
    for text in corpus:
        for chunk in re.split(r"<\|[a-z_]+\|>", text):  # special tokens are added separately
            pieces += [p for p, _ in split.pre_tokenize_str(chunk)]
    vocab = {tok: i for i, tok in enumerate(LLAMA_SPECIALS + ["[UNK]"])}
    for p in pieces:
        vocab.setdefault(p, len(vocab))

    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = split
    tok.add_special_tokens(LLAMA_SPECIALS)
    bos = "<|begin_of_text|>"
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, vocab[bos])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos,
        eos_token="<|end_of_text|>",
        pad_token="<|end_of_text|>",
        unk_token="[UNK]",
        padding_side="right",
    )


def _bytes_to_unicode() -> list[str]:
    # GPT-2/CLIP byte-level alphabet: printable bytes map to themselves, the rest are shifted.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def make_clip_tokenizer():
    """CLIPTokenizer over byte symbols, with left-to-right merges that make each of WORDS one token."""
    from transformers import CLIPTokenizer

    alphabet = _bytes_to_unicode()
    vocab: dict[str, int] = {}
    for sym in alphabet + [c + "</w>" for c in alphabet]:
        vocab.setdefault(sym, len(vocab))
    merges: list[tuple[str, str]] = []
    for w in WORDS:
        syms = list(w[:-1]) + [w[-1] + "</w>"]
        cur = syms[0]
        for nxt in syms[1:]:
            if (cur, nxt) not in merges:
                merges.append((cur, nxt))
            cur = cur + nxt
            vocab.setdefault(cur, len(vocab))
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab.setdefault(special, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=merges)


def _perturb_(module: torch.nn.Module, generator: torch.Generator, scale: float) -> None:
    # Random init of diffusers/transformers leaves some layers at zero or unit scale; give every
    # parameter a non-trivial random component so parity tests exercise every weight.
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * scale)


def make_tiny_vae(*, seed: int = 0, generator: torch.Generator | None = None):
    """AutoencoderKLHunyuanVideo with HunyuanVideo's 8x spatial / 4x temporal compression, 4 latent channels."""
    from diffusers import AutoencoderKLHunyuanVideo

    if generator is None:
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
    vae = AutoencoderKLHunyuanVideo(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(8, 8, 8, 8),
        layers_per_block=1,
        norm_num_groups=4,
        spatial_compression_ratio=8,
        temporal_compression_ratio=4,
        mid_block_add_attention=True,
    ).eval()
    _perturb_(vae, generator, 0.02)
    return vae


def make_tiny_components(*, seed: int = 0) -> dict:
    """The seven components of a HunyuanVideoPipeline, tiny and random (float32, CPU)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, HunyuanVideoTransformer3DModel
    from transformers import CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaModel

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    tokenizer = make_llama_tokenizer()
    tokenizer_2 = make_clip_tokenizer()

    text_dim, pooled_dim = 16, 16
    llama = LlamaModel(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=text_dim,
            intermediate_size=32,
            num_hidden_layers=3,  # the pipeline reads hidden_states[-3]
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=512,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    ).eval()
    clip = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer_2),
            hidden_size=pooled_dim,
            intermediate_size=32,
            projection_dim=pooled_dim,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=77,
            bos_token_id=tokenizer_2.bos_token_id,
            eos_token_id=tokenizer_2.eos_token_id,
            pad_token_id=tokenizer_2.pad_token_id,
        )
    ).eval()
    transformer = HunyuanVideoTransformer3DModel(
        in_channels=4,
        out_channels=4,
        num_attention_heads=2,
        attention_head_dim=8,
        num_layers=1,
        num_single_layers=1,
        num_refiner_layers=1,
        mlp_ratio=2.0,
        patch_size=2,
        patch_size_t=1,
        qk_norm="rms_norm",
        guidance_embeds=True,
        text_embed_dim=text_dim,
        pooled_projection_dim=pooled_dim,
        rope_theta=256.0,
        rope_axes_dim=(2, 2, 4),
    ).eval()
    vae = make_tiny_vae(generator=gen)
    _perturb_(llama, gen, 0.05)
    _perturb_(clip, gen, 0.05)
    _perturb_(transformer, gen, 0.2)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=7.0)
    return dict(
        text_encoder=llama,
        tokenizer=tokenizer,
        transformer=transformer,
        vae=vae,
        scheduler=scheduler,
        text_encoder_2=clip,
        tokenizer_2=tokenizer_2,
    )


def make_tiny_hunyuan_pipeline_dir(path, *, seed: int = 0) -> Path:
    """Write a complete tiny random diffusers HunyuanVideo pipeline folder at `path`; return it."""
    from diffusers import HunyuanVideoPipeline

    path = Path(path)
    pipe = HunyuanVideoPipeline(**make_tiny_components(seed=seed))
    pipe.save_pretrained(path)
    return path
