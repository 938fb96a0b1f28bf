"""A complete, tiny, random HunyuanVideo-1.5 pipeline in diffusers format, built offline.

`make_tiny_hv15_pipeline_dir(path, task="t2v"|"i2v")` writes the folder through diffusers'
`HunyuanVideo15Pipeline(...)` / `HunyuanVideo15ImageToVideoPipeline(...).save_pretrained`, so it
is genuinely diffusers-format: model_index.json, transformer/, vae/ (AutoencoderKLHunyuanVideo15),
text_encoder/ (Qwen2_5_VLTextModel), tokenizer/ (Qwen2Tokenizer with a chat template),
text_encoder_2/ (T5EncoderModel, the ByT5 glyph encoder), tokenizer_2/ (ByT5Tokenizer),
scheduler/, guider/ and, for i2v, image_encoder/ (SiglipVisionModel) + feature_extractor/.

Tokenizers are built here (no hub access):
- tokenizer/: byte-level BPE trained here on the system turn and WORDS, so the chat-templated
  prefix before the prompt is 108 tokens, the count both pipelines crop (as the real tokenizer);
- tokenizer_2/: ByT5's tokenizer needs no vocabulary file.

Sizes: latent channels 4, VAE 16x spatial / 4x temporal (as HunyuanVideo-1.5), transformer patch
1, heads 2 x 8, text dims 16, SigLIP 28x28 pixels in 14x14 patches (4 image tokens). A 48x32,
5-frame, 2-step generation takes about a second on CPU.
"""

from __future__ import annotations

from pathlib import Path

import torch

WORDS = (
    "a an the cat dog sign red green blue white black says reads on in with video text hello open shop "
    "walks runs street"
).split()

QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# The shape of Qwen2.5's chat template for text-only messages.
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TASKS = ("t2v", "i2v")


def make_qwen_tokenizer():
    """Qwen2Tokenizer (byte-level BPE, Qwen2's pre-tokenizer) trained here on the chat-templated system
    turn and WORDS, so each of their words is one token and the prefix before the prompt is 108 tokens,
    as with the real tokenizer; pads on the right with <|endoftext|>, carries a Qwen-style chat template."""
    import json

    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    from omnidit.tokenizers.text_hv15 import HV15_SYSTEM_MESSAGE

    specials = dict(unk_token="<|endoftext|>", eos_token="<|im_end|>", pad_token="<|endoftext|>")
    pre = Qwen2Tokenizer(vocab={"<|endoftext|>": 0}, merges=[], **specials)._tokenizer.pre_tokenizer
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre
    trainer = trainers.BpeTrainer(vocab_size=100_000, min_frequency=1, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=QWEN_SPECIALS)
    corpus = [f"<|im_start|>system\n{HV15_SYSTEM_MESSAGE}<|im_end|>\n<|im_start|>user\n", " ".join(WORDS),
              "<|im_start|>assistant\n"]
    bpe.train_from_iterator(corpus, trainer)
    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    tok = Qwen2Tokenizer(vocab=model["vocab"], merges=merges, **specials)
    tok.add_special_tokens({"additional_special_tokens": QWEN_SPECIALS[1:]})
    tok.padding_side = "right"
    tok.chat_template = QWEN_CHAT_TEMPLATE
    return tok


def _perturb_(module: torch.nn.Module, generator: torch.Generator, scale: float) -> None:
    # Random init leaves some layers at zero or unit scale; give every parameter a random component
    # so the parity tests exercise every weight.
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * scale)


def make_tiny_hv15_vae(*, generator: torch.Generator):
    """AutoencoderKLHunyuanVideo15 with HunyuanVideo-1.5's 16x spatial / 4x temporal compression."""
    from diffusers import AutoencoderKLHunyuanVideo15

    vae = AutoencoderKLHunyuanVideo15(
        latent_channels=4, block_out_channels=(8, 8, 8, 8, 8), layers_per_block=1, spatial_compression_ratio=16,
        temporal_compression_ratio=4, scaling_factor=0.8,
    ).eval()
    _perturb_(vae, generator, 0.02)
    return vae


def make_tiny_hv15_components(*, task: str = "t2v", seed: int = 0, guidance_scale: float = 6.0,
                              shift: float = 5.0, use_meanflow: bool = False, target_size: int = 48) -> dict:
    """The components of a HunyuanVideo15Pipeline (t2v) or HunyuanVideo15ImageToVideoPipeline (i2v),
    tiny and random (float32, CPU)."""
    from diffusers import ClassifierFreeGuidance, FlowMatchEulerDiscreteScheduler, HunyuanVideo15Transformer3DModel
    from transformers import (ByT5Tokenizer, Qwen2_5_VLTextConfig, Qwen2_5_VLTextModel, SiglipImageProcessor,
                              SiglipVisionConfig, SiglipVisionModel, T5Config, T5EncoderModel)

    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    tokenizer, tokenizer_2 = make_qwen_tokenizer(), ByT5Tokenizer()
    dim = 16
    qwen = Qwen2_5_VLTextModel(Qwen2_5_VLTextConfig(
        vocab_size=len(tokenizer), hidden_size=dim, intermediate_size=32, num_hidden_layers=3,  # reads [-3]
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=2048,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
        rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [1, 1, 2]},  # head_dim / 2
    )).eval()
    byt5 = T5EncoderModel(T5Config(
        vocab_size=len(tokenizer_2), d_model=dim, d_kv=8, d_ff=32, num_layers=2, num_heads=2,
        relative_attention_num_buckets=8, feed_forward_proj="gated-gelu", is_encoder_decoder=False,
    )).eval()
    transformer = HunyuanVideo15Transformer3DModel(
        in_channels=2 * 4 + 1, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=1,
        num_refiner_layers=1, mlp_ratio=2.0, text_embed_dim=dim, text_embed_2_dim=dim, image_embed_dim=dim,
        rope_axes_dim=(2, 2, 4), target_size=target_size, task_type=task, use_meanflow=use_meanflow,
    ).eval()
    vae = make_tiny_hv15_vae(generator=gen)
    for m, scale in ((qwen, 0.05), (byt5, 0.05), (transformer, 0.2)):
        _perturb_(m, gen, scale)
    out = dict(text_encoder=qwen, tokenizer=tokenizer, transformer=transformer, vae=vae,
               scheduler=FlowMatchEulerDiscreteScheduler(shift=shift), text_encoder_2=byt5, tokenizer_2=tokenizer_2,
               guider=ClassifierFreeGuidance(guidance_scale=guidance_scale))
    if task == "i2v":
        siglip = SiglipVisionModel(SiglipVisionConfig(
            hidden_size=dim, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=28,
            patch_size=14,
        )).eval()
        _perturb_(siglip, gen, 0.05)
        out["image_encoder"] = siglip
        out["feature_extractor"] = SiglipImageProcessor(size={"height": 28, "width": 28})
    return out


def make_tiny_hv15_pipeline_dir(path, *, task: str = "t2v", seed: int = 0, **kwargs) -> Path:
    """Write a complete tiny random diffusers HunyuanVideo-1.5 pipeline folder at `path`; return it.
    `kwargs`: guidance_scale, shift, use_meanflow, target_size (make_tiny_hv15_components)."""
    from diffusers import HunyuanVideo15ImageToVideoPipeline, HunyuanVideo15Pipeline

    path = Path(path)
    cls = HunyuanVideo15ImageToVideoPipeline if task == "i2v" else HunyuanVideo15Pipeline
    cls(**make_tiny_hv15_components(task=task, seed=seed, **kwargs)).save_pretrained(path)
    return path
