"""Pack the shapes model's text encoder small enough to travel to a GPU machine with no network.

The device tool carries at most 64 MiB per call, and all-MiniLM-L6-v2 is 90 MB in fp32. The
shapes grammar uses a few hundred WordPiece tokens, so keep only those rows of the word
embedding (WordPiece is greedy longest-match, so a sub-vocabulary that holds every piece the
full tokenizer produced tokenizes those prompts identically) and store the weights in fp16.
The DiT trained with it sees the same token states as with the packaged fp32 encoder up to
fp16 rounding (printed below).

    python tools/pack_text_encoder.py --out .carry/minilm
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch


def grammar_prompts(n: int, seed: int) -> list[str]:
    from omnidit.shapes.grammar import prompt_for
    from omnidit.shapes.world import sample_spec

    rng = np.random.default_rng(seed)
    return [prompt_for(sample_spec(rng, video=i % 2 == 1), rng, paraphrase=True) for i in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=".carry/minilm")
    ap.add_argument("--prompts", type=int, default=100_000)
    args = ap.parse_args()

    from transformers import AutoModel, AutoTokenizer, BertTokenizer  # transformers >= 5 (vocab as a dict)

    from omnidit.shapes.adherence import eval_prompts
    from omnidit.tokenizers.text import SentenceTextEncoder, default_sentence_encoder_path

    src = default_sentence_encoder_path()
    tok = AutoTokenizer.from_pretrained(src, local_files_only=True)
    prompts = grammar_prompts(args.prompts, seed=0) + [""]
    prompts += eval_prompts(500, seed=0, video=False) + eval_prompts(500, seed=0, video=True)
    used = set(tok.all_special_ids)
    for i in range(0, len(prompts), 4096):
        for ids in tok(prompts[i:i + 4096])["input_ids"]:
            used.update(ids)
    keep = sorted(used)  # old ids, in their old order
    inv = {tid: t for t, tid in tok.get_vocab().items()}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    vocab = {inv[old]: new for new, old in enumerate(keep)}
    new_tok = BertTokenizer(vocab=vocab, do_lower_case=getattr(tok, "do_lower_case", True))
    new_tok.save_pretrained(out)

    model = AutoModel.from_pretrained(src, local_files_only=True).eval()
    emb = model.get_input_embeddings().weight.data[keep].clone()
    model.resize_token_embeddings(len(keep))
    model.get_input_embeddings().weight.data.copy_(emb)
    model.half().save_pretrained(out, safe_serialization=True)

    # Check: same tokens (mapped back to old ids), same states up to fp16 rounding.
    old_of_new = torch.tensor(keep)
    test = grammar_prompts(2000, seed=99)
    a, b = tok(test, padding="max_length", max_length=32, truncation=True, return_tensors="pt"), \
        new_tok(test, padding="max_length", max_length=32, truncation=True, return_tensors="pt")
    assert torch.equal(old_of_new[b.input_ids], a.input_ids), "pruned tokenizer splits differently"
    ref = SentenceTextEncoder.from_path(src).encode(test[:256])
    got = SentenceTextEncoder.from_path(out).encode(test[:256])
    rel = float((got.hidden_states - ref.hidden_states).norm() / ref.hidden_states.norm())
    size = sum(f.stat().st_size for f in out.iterdir()) / 2**20
    print(f"kept {len(keep)} of {len(inv)} tokens; {size:.1f} MiB in {out}; token states rel. diff {rel:.2e}")


if __name__ == "__main__":
    main()
