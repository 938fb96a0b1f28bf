"""The OpenAPI document `/openapi.json` serves: FastAPI's, plus what only this deployment knows.

- `POST /v1/videos` reads its body by hand (JSON or multipart/form-data), so `VideoRequest`
  and the stream event schema are added to the components here.
- Limits that depend on the deployment are stated in the schema: `steps` <= `--max-steps`,
  `n` <= `--max-images`, and, once a generator replica has answered, the served model's sizes
  (an enum when it is short, else a pattern), frame counts and longest `seconds`.
"""

from __future__ import annotations

from fastapi.openapi.utils import get_openapi

from omnidit.serving.schemas import ImageStreamEvent, ModelInfo, VideoRequest
from omnidit.serving.settings import ServeSettings

MAX_ENUM = 256  # longer lists of sizes become a pattern


def _typed(prop: dict, type_: str):
    """The branches of a (possibly Optional) property schema that have `type_`."""
    return [b for b in prop.get("anyOf", [prop]) if b.get("type") == type_]


def _set(prop: dict, type_: str, **values) -> None:
    for branch in _typed(prop, type_):
        branch.update(values)


def model_sizes(info: ModelInfo) -> list[str]:
    m = info.size_multiple
    return [f"{w}x{h}" for w in range(m, info.max_width + 1, m) for h in range(m, info.max_height + 1, m)]


def openapi_document(app, settings: ServeSettings, info: ModelInfo | None) -> dict:
    doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    for model in (VideoRequest, ImageStreamEvent):
        js = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, d in js.pop("$defs", {}).items():
            schemas.setdefault(name, d)
        schemas[model.__name__] = js
    image, video = schemas["ImageRequest"]["properties"], schemas["VideoRequest"]["properties"]
    for props in (image, video):
        _set(props["steps"], "integer", maximum=settings.max_steps)
        props["steps"]["description"] = f"1-{settings.max_steps} on this service; default: the model's own"
    _set(image["n"], "integer", maximum=settings.max_images)
    if info is None:
        return doc
    sizes = model_sizes(info)
    size_doc = (f"WIDTHxHEIGHT, both sides multiples of {info.size_multiple} up to {info.max_width}x{info.max_height}"
                f" for {info.id}; \"auto\" or absent: {info.width}x{info.height}")
    for props in (image, video):
        if len(sizes) + 1 <= MAX_ENUM:
            _set(props["size"], "string", enum=["auto", *sizes])
        else:
            _set(props["size"], "string", pattern=r"^(auto|[0-9]{1,5}x[0-9]{1,5})$")
        props["size"]["description"] = size_doc
    t = info.temporal_ratio
    _set(video["frames"], "integer", enum=list(range(1, info.max_frames + 1, t)), maximum=info.max_frames)
    video["frames"]["description"] = f"1 mod {t}, at most {info.max_frames}"
    # seconds -> frames = 1 + t * round((seconds * fps - 1) / t); the longest that stays within max_frames
    longest = ((info.max_frames - 1) // t * t + 1) / info.fps
    video["seconds"]["description"] = (f"a number or numeric string; at {info.fps} fps (the default) at most "
                                       f"{longest:g} s, at another fps seconds * fps + 1 must stay within "
                                       f"{info.max_frames} frames; not together with frames")
    return doc
