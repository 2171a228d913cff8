"""The one error shape of the API, ``{"error": {"code", "message", "details"}}``, made in one place."""

from __future__ import annotations

import json
import logging
import re

import flask_smorest
import marshmallow as ma
from flask import jsonify
from flask.json.provider import DefaultJSONProvider
from webargs.flaskparser import FlaskParser
from werkzeug.exceptions import HTTPException

from rules_compiler.alerts import RuleInvalid
from rules_compiler.deploy import DeployFailed

log = logging.getLogger(__name__)

# HTTP status -> the spec's code (§8.8), and ours where the spec names none.
CODES = {
    400: "VALIDATION_ERROR",
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    409: "CONFLICT",
    413: "PAYLOAD_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
    429: "RATE_LIMIT_EXCEEDED",
    500: "INTERNAL_ERROR",
    502: "UPSTREAM_ERROR",
    503: "SERVICE_UNAVAILABLE",
}


class ApiError(Exception):
    """A failure the caller should see as-is: status, spec code, message and details."""

    status = 400

    def __init__(self, message: str, details: dict | None = None, status: int | None = None, headers=None):
        super().__init__(message)
        self.message = message
        self.details = details or {}
        self.headers = headers or {}
        if status is not None:
            self.status = status


class NotFound(ApiError):
    status = 404


class Unauthorized(ApiError):
    status = 401


class Forbidden(ApiError):
    status = 403


class Conflict(ApiError):
    status = 409


class Unavailable(ApiError):
    """A backend (Prometheus, the DB) does not answer: 503, with Retry-After."""

    status = 503


class ErrorSchema(ma.Schema):
    class Inner(ma.Schema):
        code = ma.fields.String(metadata={"example": "NOT_FOUND"})
        message = ma.fields.String()
        details = ma.fields.Dict()

    error = ma.fields.Nested(Inner)


def error_response(status: int, message: str, details: dict | None = None, headers: dict | None = None):
    body = {"error": {"code": CODES.get(status, "ERROR"), "message": message, "details": details or {}}}
    return jsonify(body), status, headers or {}


class Api(flask_smorest.Api):
    """flask-smorest's Api with our error shape for every HTTP error, abort() and domain exception."""

    ERROR_SCHEMA = ErrorSchema

    def init_app(self, app, *, spec_kwargs=None):
        from gateway.auth import SECURITY_SCHEMES

        super().init_app(app, spec_kwargs=spec_kwargs)
        app.json = JsonProvider(app)
        for name, scheme in SECURITY_SCHEMES.items():
            self.spec.components.security_scheme(name, scheme)
        self.ma_plugin.converter.add_attribute_function(_exact_schema)

    def _register_error_handlers(self):
        super()._register_error_handlers()
        self._app.register_error_handler(ApiError, self.handle_api_error)
        # The rules compiler knows nothing of HTTP; its two failures map here, once.
        self._app.register_error_handler(RuleInvalid, self.handle_rule_invalid)
        self._app.register_error_handler(DeployFailed, self.handle_deploy_failed)
        self._app.register_error_handler(Exception, self.handle_unexpected)

    def handle_http_exception(self, error: HTTPException):
        data = getattr(error, "data", None) or {}
        details = data.get("errors") or data.get("messages") or {}
        if error.code == 400 and details:
            message = "invalid request: " + _summarise(details)
        else:
            message = data.get("message") or error.description or error.name
        # werkzeug's own headers too: a 405's Allow (RFC 9110), a 401's WWW-Authenticate…
        headers = {k: v for k, v in error.get_headers() if k.lower() != "content-type"} | (data.get("headers") or {})
        return error_response(error.code or 500, message, _plain(details), headers)

    def handle_api_error(self, error: ApiError):
        return error_response(error.status, error.message, error.details, error.headers)

    def handle_rule_invalid(self, error: RuleInvalid):
        return error_response(400, f"{error.field}: {error}", error.details)

    def handle_deploy_failed(self, error: DeployFailed):
        headers = {"Retry-After": "5"} if error.status == 503 else None
        return error_response(error.status, error.message, error.details, headers)

    def handle_unexpected(self, error: Exception):
        if isinstance(error, HTTPException):
            return self.handle_http_exception(error)
        log.exception("unhandled error")
        return error_response(500, "internal error; it has been logged")


def _exact_schema(_converter, field, ret: dict, **_kwargs) -> dict:
    """A field's ``metadata["openapi"]`` is its whole schema: for what apispec cannot say (patternProperties…)."""
    exact = field.metadata.get("openapi")
    if exact is None:
        return {}
    ret.clear()
    return dict(exact)


def _too_deep(data) -> json.JSONDecodeError:
    text = data.decode(errors="replace") if isinstance(data, bytes) else str(data)
    return json.JSONDecodeError("JSON nested too deeply", text or " ", 0)


def _whole_characters(data, value):
    """``value`` parsed from ``data``, refused as bad JSON where a \\uD800-\\uDFFF escape stands alone.

    JSON may escape half a surrogate pair; no UTF-8 text (the DB's, the logs') can hold one.
    """
    raw = data if isinstance(data, bytes) else str(data).encode(errors="surrogatepass")
    if b"\\u" in raw and re.search(rb"\\u[dD][89a-fA-F]", raw):
        try:
            json.dumps(value, ensure_ascii=False, default=str).encode()
        except UnicodeEncodeError:
            raise json.JSONDecodeError("a lone UTF-16 surrogate (\\uD800-\\uDFFF) is no character", " ", 0) from None
    return value


class JsonProvider(DefaultJSONProvider):
    """Flask's JSON, where a body nested past Python's recursion limit, or holding half a character, is a 400."""

    def loads(self, s, **kwargs):
        try:
            return _whole_characters(s, super().loads(s, **kwargs))
        except RecursionError:
            raise _too_deep(s) from None


class Parser(FlaskParser):
    # webargs answers 422 by default; the spec's clients expect 400 for bad input.
    DEFAULT_VALIDATION_STATUS = 400

    def _raw_load_json(self, req):
        try:
            return _whole_characters(req.get_data(cache=True), super()._raw_load_json(req))
        except RecursionError:  # webargs parses with the json module itself, not Flask's provider
            raise _too_deep(req.get_data(cache=True)) from None


class Blueprint(flask_smorest.Blueprint):
    ARGUMENTS_PARSER = Parser()

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._prepare_doc_cbks.append(self._prepare_access_doc)

    @staticmethod
    def _prepare_access_doc(doc, doc_info, *, method, **_kwargs):
        from gateway.auth import document_access  # auth imports this module

        return document_access(doc, doc_info, method)


def _plain(details) -> dict:
    return details if isinstance(details, dict) else {"errors": details}


def _summarise(details: dict) -> str:
    """'field: reason; …' from marshmallow's nested messages (location → field → [reasons])."""
    parts = []
    for location, fields in details.items():
        if isinstance(fields, dict):
            for name, reasons in fields.items():
                parts.append(f"{name}: {_first(reasons)}")
        else:
            parts.append(f"{location}: {_first(fields)}")
    return "; ".join(parts)


def _first(reasons) -> str:
    if isinstance(reasons, list | tuple) and reasons:
        return str(reasons[0])
    if isinstance(reasons, dict):
        return _summarise({"": reasons}) if reasons else ""
    return str(reasons)
