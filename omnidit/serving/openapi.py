"""The OpenAPI document `/openapi.json` serves: FastAPI's, plus what only this deployment knows.

- `POST /v1/videos` reads its body by hand (JSON or multipart/form-data), so `VideoRequest`
  and the stream event schema are added to the components here.
- Limits that depend on the deployment are stated in the schema: `steps` <= `--max-steps`,
  `n` <= `--max-images`, and, once the generator replicas have answered, the served models'
  names (`model` as an enum), sizes (an enum when it is short, else a pattern), frame counts and
  longest `seconds`. With several models the enums are their union and the descriptions say
  which model allows what.
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


def openapi_document(app, settings: ServeSettings, infos: list[ModelInfo] | None) -> dict:
    doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    for model in (VideoRequest, ImageStreamEvent):
        js = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, d in js.pop("$defs", {}).items():
            schemas.setdefault(name, d)
        schemas[model.__name__] = js
    _multipart_video_request(doc, schemas)
    image, video = schemas["ImageRequest"]["properties"], schemas["VideoRequest"]["properties"]
    for props in (image, video):
        _set(props["steps"], "integer", maximum=settings.max_steps)
        props["steps"]["description"] = f"1-{settings.max_steps} on this service; default: the model's own"
    _set(image["n"], "integer", maximum=settings.max_images)
    if not infos:
        return doc
    for props in (image, video):  # ids only: a folder's path (also accepted) is not the document's business
        _set(props["model"], "string", enum=[i.id for i in infos])
        props["model"]["description"] = (f"one of the served models: {', '.join(i.id for i in infos)}; "
                                         f"default (absent): {infos[0].id}")
    sizes = list(dict.fromkeys(size for info in infos for size in model_sizes(info)))
    size_doc = "; ".join(f"WIDTHxHEIGHT, both sides multiples of {i.size_multiple} up to {i.max_width}x"
                         f"{i.max_height} for {i.id} (\"auto\" or absent: {i.width}x{i.height})" for i in infos)
    for props in (image, video):
        if len(sizes) + 1 <= MAX_ENUM:
            _set(props["size"], "string", enum=["auto", *sizes])
        else:
            _set(props["size"], "string", pattern=r"^(auto|[0-9]{1,5}x[0-9]{1,5})$")
        props["size"]["description"] = size_doc
    frames = sorted({f for i in infos for f in range(1, i.max_frames + 1, i.temporal_ratio)})
    _set(video["frames"], "integer", enum=frames, maximum=max(i.max_frames for i in infos))
    video["frames"]["description"] = "; ".join(f"1 mod {i.temporal_ratio}, at most {i.max_frames} for {i.id}"
                                               for i in infos)
    # seconds -> frames = 1 + t * round((seconds * fps - 1) / t); the longest that stays within max_frames
    video["seconds"]["description"] = "a number or numeric string; not together with frames; " + "; ".join(
        f"for {i.id} at {i.fps} fps (its default) at most {_longest(i):g} s, at another fps seconds * fps + 1 "
        f"must stay within {i.max_frames} frames" for i in infos)
    return doc


def _multipart_video_request(doc: dict, schemas: dict) -> None:
    """As a form, `input_reference` is a file upload (what the openai client sends) or a data URL
    string; the multipart body gets its own schema saying so. It shares `VideoRequest`'s property
    objects, so the deployment limits set on them below apply to both."""
    form = {**schemas["VideoRequest"], "title": "VideoRequestForm",
            "properties": dict(schemas["VideoRequest"]["properties"])}
    ref = form["properties"]["input_reference"]
    form["properties"]["input_reference"] = {
        "anyOf": [{"type": "string", "format": "binary", "description": "an image file (png, jpeg, webp)"},
                  {"type": "string", "description": "a data URL"}],
        "description": ref.get("description", "")}
    schemas["VideoRequestForm"] = form
    body = doc.get("paths", {}).get("/v1/videos", {}).get("post", {}).get("requestBody", {})
    if "multipart/form-data" in body.get("content", {}):
        body["content"]["multipart/form-data"]["schema"] = {"$ref": "#/components/schemas/VideoRequestForm"}


def _longest(info: ModelInfo) -> float:
    t = info.temporal_ratio
    return ((info.max_frames - 1) // t * t + 1) / info.fps
