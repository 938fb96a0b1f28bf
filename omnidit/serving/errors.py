"""One JSON error shape for every failure: `{"error": {"message", "type", "param", "code"}}`.

Bad input is always a 4xx naming the field (`param`); a 500 means a bug or a broken
replica, and its body never echoes the request.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("omnidit.serving")

# OpenAI's error `type` values, by status.
_TYPES = {
    400: "invalid_request_error", 401: "authentication_error", 404: "invalid_request_error",
    405: "invalid_request_error", 409: "invalid_request_error", 413: "invalid_request_error",
    415: "invalid_request_error", 422: "invalid_request_error", 429: "rate_limit_error",
    500: "server_error", 503: "server_error",
}


class ApiError(Exception):
    """An HTTP error with the service's JSON body; raise it anywhere in a route."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        return error_response(self.status, self.message, param=self.param, code=self.code, headers=self.headers)


def error_response(status: int, message: str, *, param: str | None = None, code: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": _TYPES.get(status, "invalid_request_error"),
                      "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def _is_json(request: Request) -> bool:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    return ctype == "application/json" or (ctype.startswith("application/") and ctype.endswith("+json"))


def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """pydantic/FastAPI errors -> 400 (unusable body), 415 (not JSON) or 422 (a field is wrong)."""
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request", "type": "value_error"}
    loc = [str(p) for p in first.get("loc", ())]
    where, path = (loc[0], loc[1:]) if loc else ("body", [])
    if where == "body":
        if request.method in ("POST", "PUT", "PATCH") and request.headers.get("content-type") and not _is_json(request):
            return error_response(415, f"Content-Type must be application/json, got "
                                       f"{request.headers.get('content-type')!r}", code="unsupported_media_type")
        if first.get("type") == "json_invalid":
            return error_response(400, "request body is not valid JSON: " + str(first.get("ctx", {}).get("error", "")),
                                  code="invalid_json")
        if not path:
            kind = "missing" if first.get("type") == "missing" else "not a JSON object"
            return error_response(400, f"request body is {kind}; send a JSON object", code="invalid_body")
    param = ".".join(path) if path else None
    msg = first.get("msg", "invalid value")
    if first.get("type") == "extra_forbidden":
        msg = "unknown field"
    elif first.get("type") == "missing":
        msg = "field required"
    return error_response(422, f"{param}: {msg}" if param else msg, param=param, code="invalid_value")


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        return validation_error(request, exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        # Unknown routes (404) and wrong methods (405) get the same JSON shape.
        return error_response(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal server error", code="internal_error")
