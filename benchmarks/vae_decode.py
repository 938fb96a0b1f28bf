"""Wall time of one VAE decode on the CPU: omnidit's VideoVAE vs diffusers' module as is.

    python benchmarks/vae_decode.py                      # the shipped shapes VAE, 17 frames and 1
    python benchmarks/vae_decode.py --vae DIR --frames 33 --batch 1 8

`VideoVAE` sends no-grad CPU Conv3d calls to oneDNN (`omnidit/tokenizers/onednn_conv.py`) and
one-frame latents through 2D convs with time-summed kernels (`omnidit/tokenizers/image_conv.py`);
diffusers' `AutoencoderKLHunyuanVideo.decode` with the same weights and latents is the reference,
also fed a batch of two (which PyTorch sends to oneDNN by itself). Rows are interleaved; the
median of --repeats is reported with the reference / row ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from omnidit.model_folder import MODELS_DIR
from omnidit.tokenizers import VideoVAE


def main() -> None:
    from diffusers import AutoencoderKLHunyuanVideo

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vae", default=str(MODELS_DIR / "shapes" / "vae"))
    ap.add_argument("--frames", type=int, nargs="+", default=[17, 1])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, nargs="+", default=[1], help="latents decoded per call")
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()

    ours = VideoVAE.from_pretrained(args.vae)
    ref = AutoencoderKLHunyuanVideo.from_pretrained(args.vae, torch_dtype=torch.float32).eval()
    print(f"{torch.get_num_threads()} threads, {args.vae}")
    for frames, batch in ((f, b) for b in args.batch for f in args.frames):
        c, f, h, w = ours.latent_shape(frames, args.size, args.size)
        z = torch.randn(batch, c, f, h, w, generator=torch.Generator().manual_seed(0))
        zs = z / ours.scaling_factor
        rows = {
            "diffusers decode": lambda: ref.decode(zs).sample,
            "diffusers decode, beside a copy": lambda: ref.decode(torch.cat([zs, zs])).sample[:batch],
            "omnidit VideoVAE.decode": lambda: ours.decode(z),
        }
        times: dict[str, list[float]] = {k: [] for k in rows}
        with torch.no_grad():
            for fn in rows.values():
                fn()
            for _ in range(args.repeats):
                for name, fn in rows.items():
                    t0 = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - t0)
        base = statistics.median(times["diffusers decode"])
        for name, ts in times.items():
            med = statistics.median(ts)
            print(f"batch {batch} x {frames:3d} frames {args.size}x{args.size}  {name:34s} {1000 * med:8.1f} ms  "
                  f"{base / med:5.1f}x")


if __name__ == "__main__":
    main()
