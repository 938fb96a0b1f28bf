"""How much does the text encoder's output change when one word of a prompt changes, per layer?

    python experiments/text_word_separation.py

The DiT can only learn an attribute as well as its text states tell the words apart. Prints, for
each layer of the packaged all-MiniLM-L6-v2, the relative change of the token states (sum of
per-token L2 changes / sum of token norms) when one attribute word is swapped.
"""

from __future__ import annotations

import argparse

import torch

SWAPS = {"direction": ("left", "right"), "size": ("large", "small"), "colour": ("red", "blue"),
         "shape": ("square", "circle")}


def main() -> None:
    from omnidit.tokenizers import load_text_encoder

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompt", default="a large red square on a black background, moving left")
    args = ap.parse_args()
    te = load_text_encoder({"kind": "sentence"}, device="cpu")

    @torch.no_grad()
    def states(prompt: str):
        t = te.tokenizer([prompt], return_tensors="pt", padding="max_length", max_length=te.max_length,
                         truncation=True)
        return te.model(**t, output_hidden_states=True).hidden_states, t["attention_mask"][0].bool()

    base, mask = states(args.prompt)
    print(f"relative change of the token states, per layer (0 = embeddings; the DiT reads the last): {args.prompt!r}")
    for name, (old, new) in SWAPS.items():
        if old not in args.prompt.split() and f"{old}," not in args.prompt:
            continue
        other, _ = states(args.prompt.replace(old, new, 1))
        row = [float((a[0] - b[0])[mask].norm(dim=-1).sum() / a[0][mask].norm(dim=-1).sum()) for a, b in zip(base, other)]
        print(f"  {name:9s} {old} -> {new}: " + " ".join(f"{v:.3f}" for v in row))


if __name__ == "__main__":
    main()
