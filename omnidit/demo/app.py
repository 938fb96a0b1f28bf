"""The Gradio demo: a separate process that only talks HTTP to `omnidit serve`.

`build_app(DemoConfig(api_url))` returns a `gr.Blocks` with a model picker (the service's /v1/models;
requests send the picked `model`), an Image tab (one blocking request) and a Video tab (create a job,
poll its progress, fetch the MP4, Stop = cancel the job), plus a gallery of recent results. The
handlers live on `DemoHandlers` so tests can call them directly; every API failure is shown in plain
words (a toast and an error box), never a traceback.
"""

from __future__ import annotations

import html
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from omnidit.demo.client import ApiError, NotFound, OmniClient, parse_size

# Prompts in the shapes world's grammar (omnidit/shapes/world.py), which the embedded model knows.
IMAGE_EXAMPLES = [
    "a red circle at the top left on a black background",
    "a large yellow triangle in the center on a gray background",
    "a green circle and a purple triangle on a black background",
    "a blue square on a white background",
]
VIDEO_EXAMPLES = [
    "a blue square on a white background, moving right",
    "a red circle on a black background, moving down",
    "a large yellow triangle in the center on a gray background",
]
SIZES = ["32x32", "64x64", "96x96", "128x128", "128x64", "64x128"]
DEFAULT_SIZE = "64x64"
RECENT_MAX = 12  # gallery entries per browser session
KEEP_FILES = 200  # our copies; gradio serves its own cached copy once a handler returns


@dataclass(frozen=True)
class DemoConfig:
    api_url: str
    api_key: str | None = None
    poll_interval: float = 0.5  # seconds between GET /v1/videos/{id}
    job_timeout: float = 1800.0  # stop polling a video job after this long
    request_timeout: float = 600.0  # one image request blocks for the whole denoise


def progress_html(status: str, progress: float, detail: str = "") -> str:
    """A native <progress> bar plus a status line; `status` is the job status or a short phrase."""
    pct = max(0.0, min(100.0, float(progress)))
    words = {"queued": "Queued", "in_progress": "Generating", "completed": "Done", "failed": "Failed",
             "cancelled": "Cancelled"}.get(status, status)
    text = f"{words} — {pct:.0f}%" + (f" · {detail}" if detail else "")
    return (f'<div class="job-progress" data-status="{html.escape(status)}">'
            f'<progress value="{pct:.0f}" max="100" style="width:50%;height:1rem"></progress> '
            f'<span class="job-status">{html.escape(text)}</span></div>')


def size_choices(card: dict) -> tuple[list[str], str]:
    """Square sizes a model card allows (its size multiple doubled up to its max side) and its default size."""
    try:
        k = int(card["limits"]["size_multiple"])
        max_w, max_h = parse_size(card["limits"]["max_size"])
        default = card.get("defaults", {}).get("size") or f"{min(max_w, max_h)}x{min(max_w, max_h)}"
        parse_size(default)
    except (KeyError, TypeError, ValueError):
        return SIZES, DEFAULT_SIZE  # a service without limits in its card: the static list
    sides, side = {min(max_w, max_h)}, k
    while side < min(max_w, max_h):
        sides.add(side)
        side *= 2
    choices = [f"{v}x{v}" for v in sorted(sides)] + ([f"{max_w}x{max_h}"] if max_w != max_h else [])
    return (choices if default in choices else [default] + choices), default


def frames_range(card: dict) -> dict | None:
    """Frames slider bounds from a model card: 1 + t, 1 + 2t, ... up to its max frames (t = frames_multiple)."""
    try:
        t, top = int(card["limits"]["frames_multiple"]), int(card["limits"]["max_frames"])
    except (KeyError, TypeError, ValueError):
        return None
    if t < 1 or top < 1 + t:
        return None
    top = 1 + t * ((top - 1) // t)
    return dict(minimum=1 + t, maximum=top, step=t, value=min(1 + 2 * t, top))


def error_markdown(message: str) -> str:
    return f"**Error:** {message}" if message else ""


def _opt_int(v, *, none_below: int) -> int | None:
    """Slider/number values come as floats; values below `none_below` mean "service default"."""
    if v is None or v == "":
        return None
    v = int(v)
    return None if v < none_below else v


def _opt_float(v) -> float | None:
    return None if v is None or v == "" or float(v) <= 0 else float(v)


NO_LORA = "none"


def _lora(name, scale) -> dict[str, float] | None:
    """The adapter picker's choice as a request's `lora` (None: no adapter)."""
    return None if not name or name == NO_LORA else {str(name): float(1.0 if scale is None else scale)}


CACHE_DEFAULT = "model default"  # send no `cache`: the model folder's own setting applies
CACHE_CHOICES = (CACHE_DEFAULT, "none", "fbcache", "teacache", "magcache")


def _cache(policy, threshold) -> str | None:
    """The Advanced step-cache choice as a request's `cache` SPEC (None: the model's default);
    an empty or non-positive threshold means the policy's default threshold."""
    if not policy or policy == CACHE_DEFAULT:
        return None
    if policy == "none" or threshold is None or threshold == "" or float(threshold) <= 0:
        return str(policy)
    return f"{policy}:{float(threshold):g}"


class DemoHandlers:
    """The demo's event handlers, bound to one service. Results are written under `out_dir`."""

    def __init__(self, cfg: DemoConfig, out_dir: Path | None = None):
        self.cfg = cfg
        self.client = OmniClient(cfg.api_url, api_key=cfg.api_key, timeout=cfg.request_timeout)
        self._tmp = None if out_dir else tempfile.TemporaryDirectory(prefix="omnidit-demo-")
        self.out_dir = Path(out_dir or self._tmp.name)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.cards: dict[str, dict] = {}  # model id -> its /v1/models card, as of the last page load

    def _out_path(self, suffix: str) -> Path:
        old = sorted(self.out_dir.iterdir(), key=lambda p: p.stat().st_mtime)[:-KEEP_FILES]
        for p in old:  # a long-running demo must not fill the disk
            p.unlink(missing_ok=True)
        return self.out_dir / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}{suffix}"

    @staticmethod
    def _add_recent(recent: list | None, path: Path, caption: str) -> list:
        return ([(str(path), caption)] + list(recent or []))[:RECENT_MAX]

    @staticmethod
    def _check_inputs(prompt: str, size: str) -> str:
        prompt = (prompt or "").strip()
        if not prompt:
            raise ValueError("Please enter a prompt.")
        parse_size(size)  # a readable error before the round trip
        return prompt

    # -- service status -----------------------------------------------------------------

    def service_status(self):
        """On page load: a status line, the model picker (the served models, the default first), and the
        size/frames controls fitted to the default model's card.

        -> (status markdown, image size update, video size update, frames update, model picker update)
        """
        keep = gr.update()
        try:
            self.client.health()
            cards = self.client.models()
        except ApiError as e:
            return f"⚠️ {e.message}", keep, keep, keep, keep
        self.cards = {str(m["id"]): m for m in cards if isinstance(m, dict) and "id" in m}
        names = ", ".join(self.cards) or "none listed"
        status = f"Service `{self.cfg.api_url}` is up · model{'s' if len(self.cards) > 1 else ''}: {names}"
        if not self.cards:
            return status, keep, keep, keep, keep
        first = next(iter(self.cards))
        picker = gr.update(choices=list(self.cards), value=first, visible=True,
                           interactive=len(self.cards) > 1)
        return (status, *self.fit_model(first), picker)

    def fit_model(self, model):
        """The picked model's card -> (image size update, video size update, frames update)."""
        card = self.cards.get(model or "")
        if card is None:
            return gr.update(), gr.update(), gr.update()
        choices, default = size_choices(card)
        frames = frames_range(card)
        return (gr.update(choices=choices, value=default), gr.update(choices=choices, value=default),
                gr.update(**frames, info=f"1 mod {frames['step']}: {frames['minimum']}, {frames['value']}, …")
                if frames else gr.update())

    def lora_choices(self):
        """On page load: the adapter picker (the service's adapters, /v1/models `loras`) and its scale;
        both hidden when the service has none."""
        try:
            cards = self.client.models()
        except ApiError:
            return gr.update(), gr.update()
        names = sorted({n for c in cards if isinstance(c, dict) for n in c.get("loras") or []})
        return (gr.update(choices=[NO_LORA, *names], value=NO_LORA, visible=bool(names)),
                gr.update(visible=bool(names)))

    # -- image ------------------------------------------------------------------------------

    def generate_image(self, prompt, size, steps, seed, guidance, negative_prompt, recent, model=None, lora=None,
                       lora_scale=1.0, cache=None, cache_threshold=None):
        """-> (image path | None, recent, gallery, error markdown); `model`: the picker's (None: the default);
        `lora`, `lora_scale`: the adapter picker's (None or "none": no adapter)"""
        try:
            prompt = self._check_inputs(prompt, size)
            pngs = self.client.generate_images(
                prompt, size=size, n=1, seed=_opt_int(seed, none_below=0), steps=_opt_int(steps, none_below=1),
                guidance=_opt_float(guidance), negative_prompt=(negative_prompt or "").strip() or None,
                model=model or None, lora=_lora(lora, lora_scale), cache=_cache(cache, cache_threshold))
            if not pngs:
                raise ApiError("the service returned no image")
        except (ApiError, ValueError) as e:
            msg = getattr(e, "message", None) or str(e)
            gr.Warning(msg)
            return None, recent, recent, error_markdown(msg)
        path = self._out_path(".png")
        path.write_bytes(pngs[0])
        recent = self._add_recent(recent, path, prompt)
        return str(path), recent, recent, ""

    # -- video ------------------------------------------------------------------------------

    def run_video(self, prompt, size, frames, steps, seed, guidance, negative_prompt, recent, model=None, lora=None,
                  lora_scale=1.0, cache=None, cache_threshold=None, image=None):
        """Generator: create a job, poll it, fetch the MP4. `image`: the uploaded start image's path (image-to-video).

        Yields (job id, progress html, video path | None, recent, gallery, error markdown). The job
        id goes into session state so the Stop button can cancel it while this generator polls.
        """
        try:
            prompt = self._check_inputs(prompt, size)
            job = self.client.create_video(
                prompt, size=size, frames=_opt_int(frames, none_below=1), seed=_opt_int(seed, none_below=0),
                steps=_opt_int(steps, none_below=1), guidance=_opt_float(guidance),
                negative_prompt=(negative_prompt or "").strip() or None, model=model or None,
                lora=_lora(lora, lora_scale), cache=_cache(cache, cache_threshold), image=image or None)
        except (ApiError, ValueError) as e:
            msg = getattr(e, "message", None) or str(e)
            gr.Warning(msg)
            yield "", progress_html("failed", 0), None, recent, recent, error_markdown(msg)
            return
        yield job.id, progress_html(job.status, job.progress, f"job {job.id}"), None, recent, recent, ""

        deadline = time.monotonic() + self.cfg.job_timeout
        last = (job.status, job.progress)
        try:
            while not job.done:
                if time.monotonic() > deadline:
                    raise ApiError(f"gave up waiting for job {job.id} after {self.cfg.job_timeout:.0f} s")
                time.sleep(self.cfg.poll_interval)
                job = self.client.get_video(job.id)
                if not job.done and (job.status, job.progress) != last:  # only push changes to the browser
                    last = (job.status, job.progress)
                    yield job.id, progress_html(job.status, job.progress, f"job {job.id}"), None, recent, recent, ""
            if job.status == "failed":
                raise ApiError(job.error or f"job {job.id} failed")
            if job.status == "cancelled":
                yield "", progress_html("cancelled", job.progress, f"job {job.id} stopped"), None, recent, recent, ""
                return
            # Job id cleared: Stop has nothing to cancel once the job finished.
            yield "", progress_html("in_progress", 100, "fetching the video"), None, recent, recent, ""
            path = self._out_path(".mp4")
            path.write_bytes(self.client.video_content(job.id))
        except NotFound:  # deleted meanwhile (DELETE removes a job outright)
            yield "", progress_html("cancelled", job.progress, f"job {job.id} is gone"), None, recent, recent, ""
            return
        except ApiError as e:
            gr.Warning(e.message)
            yield "", progress_html("failed", job.progress), None, recent, recent, error_markdown(e.message)
            return
        recent = self._add_recent(recent, path, prompt)
        yield "", progress_html("completed", 100, f"job {job.id}"), str(path), recent, recent, ""

    def stop_video(self, job_id):
        """Cancel the running job (POST .../cancel); the polling generator then sees it cancelled. -> error markdown."""
        if not job_id:
            gr.Info("No video job is running.")
            return ""
        try:
            self.client.cancel_video(job_id)
        except NotFound:
            return ""  # already finished and removed: nothing to stop
        except ApiError as e:
            gr.Warning(e.message)
            return error_markdown(e.message)
        gr.Info(f"Stopping job {job_id}…")
        return ""


def _advanced(prefix: str, with_frames: bool):
    """The Advanced accordion's controls; returns them in handler argument order."""
    with gr.Accordion("Advanced", open=False):
        frames = (gr.Slider(5, 33, value=9, step=4, label="Frames", info="1 mod 4: 5, 9, 13, …",
                             elem_id=f"{prefix}-frames")
                  if with_frames else None)
        with gr.Row():
            steps = gr.Slider(0, 60, value=0, step=1, label="Steps", info="0 = the model's default",
                              elem_id=f"{prefix}-steps")
            guidance = gr.Slider(0, 15, value=0, step=0.5, label="Guidance", info="0 = the model's default",
                                 elem_id=f"{prefix}-guidance")
            seed = gr.Number(value=0, precision=0, label="Seed", info="-1 = random", elem_id=f"{prefix}-seed")
        negative = gr.Textbox(label="Negative prompt", lines=1, elem_id=f"{prefix}-negative")
        with gr.Row():
            cache = gr.Dropdown(list(CACHE_CHOICES), value=CACHE_DEFAULT, label="Step cache",
                                info="skip steps whose blocks barely change (faster, close to the uncached output)",
                                elem_id=f"{prefix}-cache")
            cache_threshold = gr.Number(value=None, label="Cache threshold", info="empty = the policy's default",
                                        elem_id=f"{prefix}-cache-threshold")
    return frames, steps, seed, guidance, negative, cache, cache_threshold


def build_app(cfg: DemoConfig, handlers: DemoHandlers | None = None) -> gr.Blocks:
    h = handlers or DemoHandlers(cfg)
    with gr.Blocks(title="omnidit demo", analytics_enabled=False, delete_cache=(86400, 86400)) as demo:
        gr.Markdown("# omnidit\nText to image and text to video with one diffusion transformer.")
        service = gr.Markdown(elem_id="service-status")
        # Filled from /v1/models on page load; image and video requests send the picked model.
        model = gr.Dropdown([], value=None, label="Model", info="the service's models; the first is its default",
                            interactive=True, visible=False, elem_id="model-picker")
        with gr.Row():  # filled from /v1/models `loras` on page load; hidden when the service has none
            lora = gr.Dropdown([NO_LORA], value=NO_LORA, label="LoRA adapter", visible=False, elem_id="lora-picker")
            lora_scale = gr.Slider(-2, 2, value=1.0, step=0.05, label="Adapter scale", visible=False,
                                   elem_id="lora-scale")
        recent = gr.State([])

        with gr.Tabs():
            with gr.Tab("Image", id="image"):
                with gr.Row():
                    i_prompt = gr.Textbox(label="Prompt", placeholder=IMAGE_EXAMPLES[0], scale=4,
                                          elem_id="image-prompt")
                    i_size = gr.Dropdown(SIZES, value=DEFAULT_SIZE, label="Size (WxH)", allow_custom_value=True,
                                         scale=1, elem_id="image-size")
                _, i_steps, i_seed, i_guidance, i_negative, i_cache, i_cache_t = _advanced("image", with_frames=False)
                i_go = gr.Button("Generate", variant="primary", elem_id="image-generate")
                i_error = gr.Markdown(elem_id="image-error")
                i_out = gr.Image(label="Result", type="filepath", interactive=False, height=320,
                                 elem_id="image-output")
                gr.Examples([[p] for p in IMAGE_EXAMPLES], inputs=[i_prompt], label="Example prompts")

            with gr.Tab("Video", id="video"):
                with gr.Row():
                    v_prompt = gr.Textbox(label="Prompt", placeholder=VIDEO_EXAMPLES[0], scale=4,
                                          elem_id="video-prompt")
                    v_size = gr.Dropdown(SIZES, value=DEFAULT_SIZE, label="Size (WxH)", allow_custom_value=True,
                                         scale=1, elem_id="video-size")
                v_image = gr.Image(label="Start image (optional): the video's first frame, image-to-video",
                                   type="filepath", sources=["upload", "clipboard"], height=160,
                                   elem_id="video-image")
                v_frames, v_steps, v_seed, v_guidance, v_negative, v_cache, v_cache_t = _advanced("video",
                                                                                                  with_frames=True)
                with gr.Row():
                    v_go = gr.Button("Generate", variant="primary", elem_id="video-generate")
                    v_stop = gr.Button("Stop", variant="stop", elem_id="video-stop")
                v_progress = gr.HTML(progress_html("idle", 0), elem_id="video-progress")
                v_error = gr.Markdown(elem_id="video-error")
                v_out = gr.Video(label="Result", interactive=False, autoplay=True, loop=True, height=320,
                                 elem_id="video-output")
                gr.Examples([[p] for p in VIDEO_EXAMPLES], inputs=[v_prompt], label="Example prompts")
                job_id = gr.State("")

        gallery = gr.Gallery(label="Recent results", columns=6, fit_columns=False, height=240, object_fit="contain",
                             elem_id="recent-gallery")

        demo.load(h.service_status, outputs=[service, i_size, v_size, v_frames, model], api_name="service_status")
        model.input(h.fit_model, [model], [i_size, v_size, v_frames], api_name="fit_model")
        demo.load(h.lora_choices, outputs=[lora, lora_scale], api_name="lora_choices")
        # The service queues and rate-limits; the demo does not serialize users behind one another.
        i_go.click(h.generate_image,
                   [i_prompt, i_size, i_steps, i_seed, i_guidance, i_negative, recent, model, lora, lora_scale,
                    i_cache, i_cache_t],
                   [i_out, recent, gallery, i_error], api_name="generate_image", concurrency_limit=None)
        v_go.click(h.run_video,
                   [v_prompt, v_size, v_frames, v_steps, v_seed, v_guidance, v_negative, recent, model, lora,
                    lora_scale, v_cache, v_cache_t, v_image],
                   [job_id, v_progress, v_out, recent, gallery, v_error], api_name="generate_video",
                   concurrency_limit=None, show_progress="minimal")
        v_stop.click(h.stop_video, [job_id], [v_error], api_name="stop_video", concurrency_limit=None)
    return demo


# System fonts only: the default theme would fetch Google Fonts, which offline deployments cannot reach.
THEME = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])


def launch(cfg: DemoConfig, *, host: str = "127.0.0.1", port: int = 7860, block: bool = True) -> gr.Blocks:
    """Start the demo server (no share link, no SSR node process)."""
    demo = build_app(cfg)
    demo.queue(default_concurrency_limit=None).launch(
        server_name=host, server_port=port, share=False, prevent_thread_lock=not block, quiet=True,
        ssr_mode=False, theme=THEME, show_error=False, footer_links=["gradio"])
    return demo
