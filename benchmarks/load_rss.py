"""Peak host RSS while loading a DiT checkpoint: omnidit's `DiT.from_pretrained` vs diffusers'.

    python benchmarks/load_rss.py --gb 2.2                 # writes a random model to /tmp once, then measures
    python benchmarks/load_rss.py --measure ours DIR       # one measurement (a fresh process), JSON on stdout

Each load runs in its own subprocess: RSS high-water mark (ru_maxrss) after the imports (the
baseline: torch, diffusers and omnidit imported by every loader alike) and after the load with
every weight read once (a tensor still backed by the memory-mapped file is resident only once
touched); the extra is reported against the safetensors bytes on disk. The random model has HunyuanVideo's
width (3072, 24 heads) with as many blocks as reach the asked size, stored in bfloat16.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

LOADERS = ("ours", "ours-fp8", "diffusers")


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def measure(loader: str, folder: str) -> dict:
    """Load `folder` with `loader` in this process: {baseline_mb, peak_mb, extra_mb, seconds}."""
    import diffusers  # noqa: F401  (every loader pays the same imports)
    import torch

    from omnidit.dit import DiT

    torch.set_num_threads(1)
    base = _rss_mb()
    t0 = time.perf_counter()
    if loader == "ours":
        model = DiT.from_pretrained(folder, dtype=torch.bfloat16)
    elif loader == "ours-fp8":
        model = DiT.from_pretrained(folder, dtype=torch.bfloat16, weights="fp8")
    elif loader == "diffusers":
        from diffusers import HunyuanVideoTransformer3DModel

        model = HunyuanVideoTransformer3DModel.from_pretrained(folder, torch_dtype=torch.bfloat16)
    else:
        raise ValueError(f"loader must be one of {LOADERS}, got {loader!r}")
    seconds = time.perf_counter() - t0
    with torch.no_grad():  # touch every weight: memory-mapped pages count once they are read
        for t in [*model.parameters(), *model.buffers()]:
            (t if t.element_size() > 1 else t.view(torch.uint8)).sum()  # float8 has no CPU sum
    peak = _rss_mb()
    from omnidit.dit.fp8 import model_bytes

    return {"loader": loader, "baseline_mb": round(base, 1), "peak_mb": round(peak, 1),
            "extra_mb": round(peak - base, 1), "model_mb": round(model_bytes(model) / 2**20, 1),
            "seconds": round(seconds, 2)}


def file_mb(folder: str | Path) -> float:
    return sum(p.stat().st_size for p in Path(folder).glob("*.safetensors")) / 2**20


def write_model(folder: Path, gb: float) -> None:
    """A random HunyuanVideo-width DiT of about `gb` GB in bfloat16 (tensor by tensor, then saved)."""
    import torch

    from omnidit.dit import DiT, preset
    from omnidit.dit.checkpoint import save_folder
    from omnidit.dit.fp8 import model_bytes

    def cfg(singles: int):
        return preset("hunyuan-video").replace(num_layers=1, num_single_layers=singles)

    singles = 1
    while True:
        with torch.device("meta"):
            size = model_bytes(DiT(cfg(singles)).to(torch.bfloat16))
        if size >= gb * 1e9:
            break
        singles += 1
    with torch.device("meta"):
        meta = DiT(cfg(singles))
    g = torch.Generator().manual_seed(0)
    state = {k: (torch.randn(v.shape, generator=g) * 0.02).to(torch.bfloat16) for k, v in meta.state_dict().items()}
    save_folder(folder, meta.config, state)


def _run(loader: str, folder: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--measure", loader, str(folder)], capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--measure", nargs=2, metavar=("LOADER", "DIR"), help="one measurement in this process")
    ap.add_argument("--gb", type=float, default=2.2, help="size of the random model (bfloat16 bytes)")
    ap.add_argument("--dir", default="/tmp/omnidit-load-rss", help="where the random model is written (not the repo)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(*args.measure)))
        return
    folder = Path(args.dir)
    if not (folder / "config.json").is_file() or file_mb(folder) < args.gb * 1e9 / 2**20:
        code = (f"import sys, pathlib; sys.path.insert(0, {str(Path(__file__).parent)!r}); import load_rss; "
                f"load_rss.write_model(pathlib.Path({str(folder)!r}), {args.gb})")
        subprocess.run([sys.executable, "-c", code], check=True)  # its 2+ GB of tensors freed before measuring
    size = file_mb(folder)
    rows = []
    print(f"model: {folder} ({size:.0f} MiB of safetensors)")
    print(f"{'loader':<10} {'baseline MiB':>12} {'peak MiB':>9} {'extra MiB':>9} {'extra / file':>12} {'s':>6}")
    for loader in LOADERS:
        r = _run(loader, folder)
        r["extra_over_file"] = round(r["extra_mb"] / size, 3)
        rows.append(r)
        print(f"{loader:<10} {r['baseline_mb']:>12.0f} {r['peak_mb']:>9.0f} {r['extra_mb']:>9.0f} "
              f"{r['extra_over_file']:>12.2f} {r['seconds']:>6.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"file_mb": size, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
