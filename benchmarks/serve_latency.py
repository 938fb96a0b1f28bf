"""Serving overhead and batching throughput.

1. Latency of one image in-process (`Pipeline.generate` + PNG encode) vs through HTTP
   (`POST /v1/images/generations` on a local Ray Serve), median of --repeats: the overhead ratio.
2. Throughput with --clients concurrent HTTP clients, image batching on (--max-batch-size)
   vs off (max_batch_size=1).

    python benchmarks/serve_latency.py                     # shapes-turbo on the CPU
    python benchmarks/serve_latency.py --repeats 3 --clients 2 --per-client 2   # a quick look
    python benchmarks/serve_latency.py --model shapes --device cuda

Prints a table and writes JSON (--out). Each generator replica gets one CPU thread on CPU
(Ray's default for num_cpus=1); the in-process run uses the same thread count.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path


def _in_process(model: str, device: str | None, size: tuple[int, int], steps: int | None, repeats: int) -> dict:
    import torch

    from omnidit.pipeline import Pipeline

    if device in (None, "cpu"):
        torch.set_num_threads(1)  # what a Ray replica with num_cpus=1 gets
    pipe = Pipeline.from_pretrained(model, device=device)
    w, h = size
    pipe.generate("warm up", width=w, height=h, steps=steps, seed=0).to_bytes("png")
    gen_s, total_s = [], []
    for i in range(repeats):
        t0 = time.perf_counter()
        g = pipe.generate(f"a red circle {i}", width=w, height=h, steps=steps, seed=i)
        t1 = time.perf_counter()
        g.to_bytes("png")
        t2 = time.perf_counter()
        gen_s.append(t1 - t0)
        total_s.append(t2 - t0)
    return {"generate_s": statistics.median(gen_s), "generate_png_s": statistics.median(total_s)}


def _post(client, body) -> int:
    return client.post("/v1/images/generations", json=body).status_code


def _http_latency(url: str, size: str, steps: int | None, repeats: int) -> float:
    import httpx

    body = {"prompt": "warm up", "size": size, "seed": 0, **({"steps": steps} if steps else {})}
    with httpx.Client(base_url=url, timeout=600) as c:
        assert _post(c, body) == 200
        times = []
        for i in range(repeats):
            t0 = time.perf_counter()
            assert _post(c, {**body, "prompt": f"a red circle {i}", "seed": i}) == 200
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _throughput(url: str, size: str, steps: int | None, clients: int, per_client: int) -> dict:
    import httpx

    codes: list[int] = []
    lock = threading.Lock()

    def client(k: int) -> None:
        with httpx.Client(base_url=url, timeout=600) as c:
            for i in range(per_client):
                body = {"prompt": f"shape {k} {i}", "size": size, "seed": k * 1000 + i,
                        **({"steps": steps} if steps else {})}
                code = _post(c, body)
                with lock:
                    codes.append(code)

    _http_latency(url, size, steps, 1)  # warm the replica at this setting
    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ok = codes.count(200)
    return {"images": ok, "errors": len(codes) - ok, "wall_s": wall, "images_per_s": ok / wall}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="shapes-turbo", help="shipped model name or model folder")
    p.add_argument("--device", default=None)
    p.add_argument("--size", default=None, help="WxH (default: the model's default size)")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--repeats", type=int, default=10, help="sequential requests for the latency medians")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--per-client", type=int, default=6, help="requests per client in the throughput runs")
    p.add_argument("--max-batch-size", type=int, default=8)
    p.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--out", default="benchmarks/results/serve_latency.json")
    args = p.parse_args(argv)

    from omnidit import Pipeline

    tmp = tempfile.TemporaryDirectory()
    model = args.model
    cfg = Pipeline.from_pretrained(model, device="cpu").config if args.size is None else None
    size = args.size or f"{cfg.width}x{cfg.height}"
    w, h = (int(v) for v in size.split("x"))

    print(f"model {model}  size {size}  steps {args.steps or 'default'}  device {args.device or 'auto'}", flush=True)
    local = _in_process(model, args.device, (w, h), args.steps, args.repeats)
    print(f"in-process: generate {local['generate_s'] * 1000:.1f} ms, + PNG {local['generate_png_s'] * 1000:.1f} ms",
          flush=True)

    from ray import serve

    from omnidit.serving import app as serving_app
    from omnidit.serving.settings import ServeSettings

    gpus = 1 if (args.device or "").startswith("cuda") else 0
    base = dict(model=model, data_dir=str(Path(tmp.name) / "data"), device=args.device, gpus_per_replica=gpus,
                max_pending_images=max(32, 2 * args.clients), run_jobs=False, log_prompts=False)
    results = {"model": model, "size": size, "steps": args.steps, "device": args.device or "auto",
               "in_process": local, "clients": args.clients, "per_client": args.per_client}
    try:
        url = serving_app.start(ServeSettings(**base, max_batch_size=args.max_batch_size), port=args.port,
                                num_cpus=args.num_cpus, num_gpus=gpus or None, log_to_driver=False)
        http = _http_latency(url, size, args.steps, args.repeats)
        results["http_s"] = http
        results["overhead_ratio"] = http / local["generate_png_s"]
        print(f"HTTP: {http * 1000:.1f} ms  -> overhead ratio {results['overhead_ratio']:.2f}x "
              f"(+{(http - local['generate_png_s']) * 1000:.1f} ms)", flush=True)
        results["batching_on"] = _throughput(url, size, args.steps, args.clients, args.per_client)
        print(f"{args.clients} clients, batching on (max {args.max_batch_size}): "
              f"{results['batching_on']['images_per_s']:.2f} images/s", flush=True)
        serve.run(serving_app.build_app(ServeSettings(**base, max_batch_size=1)), name=serving_app.APP_NAME,
                  route_prefix="/")
        results["batching_off"] = _throughput(url, size, args.steps, args.clients, args.per_client)
        print(f"{args.clients} clients, batching off: {results['batching_off']['images_per_s']:.2f} images/s",
              flush=True)
    finally:
        serving_app.stop()
        tmp.cleanup()
    results["batching_speedup"] = results["batching_on"]["images_per_s"] / results["batching_off"]["images_per_s"]
    print(f"batching speedup {results['batching_speedup']:.2f}x")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    raise SystemExit(main())
