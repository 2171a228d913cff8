"""Admin resources: users, API keys for agents, and the audit log."""

from __future__ import annotations

import secrets

import marshmallow as ma
from flask import g
from flask.views import MethodView

from gateway.auth import (
    ADMIN,
    API_KEY_PREFIX,
    access,
    audit,
    forget_api_key,
    forget_sessions,
    hash_api_key,
    hash_password,
    password_field,
)
from gateway.db import ApiKey, AuditEvent, User, add_with_id, db, utcnow
from gateway.errors import ApiError, Blueprint, Conflict, NotFound
from gateway.hosts import HOST_ID
from gateway.key_scope import PATTERN
from gateway.schemas import Page, PageArgs, UtcDateTime, page
from gateway.sessions import end_sessions

blp = Blueprint("users", __name__, url_prefix="/api/v1", description="Users, API keys, audit log (admins)")

ROLES = ("viewer", "admin")


class Role(ma.fields.String):
    """Accepts "viewer"/"Viewer"/"ADMIN"…; stored lower-case, shown capitalised as the spec does."""

    def __init__(self, **kwargs):
        # The document says what _deserialize takes: either role, in any case.
        pattern = "^(?:" + "|".join("".join(f"[{c.upper()}{c}]" for c in role) for role in ROLES) + ")$"
        super().__init__(metadata={"pattern": pattern, "example": "Viewer"}, **kwargs)

    def _deserialize(self, value, attr, data, **kwargs):
        role = str(super()._deserialize(value, attr, data, **kwargs)).lower()
        if role not in ROLES:
            raise ma.ValidationError(f"must be one of {', '.join(ROLES)}")
        return role

    def _serialize(self, value, attr, obj, **kwargs):
        return value.capitalize() if value else value


class UserSchema(ma.Schema):
    id = ma.fields.String(dump_only=True)
    email = ma.fields.Email(required=True)
    password = password_field(12, load_only=True, required=True)
    role = Role(required=True)
    status = ma.fields.String(dump_only=True)
    created_at = UtcDateTime(dump_only=True)


class UserPatchSchema(ma.Schema):
    role = Role()
    status = ma.fields.String(validate=ma.validate.OneOf(["active", "disabled"]))
    password = password_field(12, load_only=True)


class UserListSchema(Page):
    users = ma.fields.List(ma.fields.Nested(UserSchema))


class ApiKeySchema(ma.Schema):
    id = ma.fields.String(dump_only=True)
    name = ma.fields.String(required=True, validate=ma.validate.Length(min=1, max=100))
    host_id = ma.fields.String(
        allow_none=True,
        validate=ma.validate.Regexp(HOST_ID),
        metadata={"description": "the one host the key speaks for (or host_pattern)"},
    )
    host_pattern = ma.fields.String(
        validate=ma.validate.Regexp(PATTERN, error="host ids' characters and *, e.g. gpu-* (or * for every host)"),
        metadata={"description": 'hosts the key speaks for, e.g. "gpu-*"; "*": a fleet-wide relay key'},
    )
    allow_discovery = ma.fields.Boolean(
        load_default=False, metadata={"description": "may add hosts not in the inventory (a key for one host_id may)"}
    )
    max_hosts = ma.fields.Integer(allow_none=True, validate=ma.validate.Range(min=1, max=1_000_000))
    max_series = ma.fields.Integer(allow_none=True, validate=ma.validate.Range(min=1, max=100_000_000))
    key = ma.fields.String(dump_only=True, metadata={"description": "shown once, on creation"})
    key_prefix = ma.fields.String(dump_only=True)
    created_by = ma.fields.String(dump_only=True)
    created_at = UtcDateTime(dump_only=True)
    revoked_at = UtcDateTime(dump_only=True, allow_none=True)

    @ma.validates_schema
    def _bound(self, data: dict, **_) -> None:
        # No default binding: a key for every host is a choice an admin makes by writing "*".
        if (data.get("host_id") is None) == (data.get("host_pattern") is None):  # a null names nothing either
            raise ma.ValidationError(
                'give host_id (one host) or host_pattern ("gpu-*"; "*" for a fleet-wide relay key), not both',
                "host_pattern",
            )

    last_used_at = UtcDateTime(dump_only=True, allow_none=True)


class ApiKeyListSchema(Page):
    api_keys = ma.fields.List(ma.fields.Nested(ApiKeySchema))


class AuditSchema(ma.Schema):
    at = UtcDateTime()
    user_id = ma.fields.String(allow_none=True)
    action = ma.fields.String()
    target = ma.fields.String(allow_none=True)
    ip = ma.fields.String(allow_none=True)
    details = ma.fields.Dict()


class AuditListSchema(Page):
    events = ma.fields.List(ma.fields.Nested(AuditSchema))


class AuditArgs(PageArgs):
    user_id = ma.fields.String()
    action = ma.fields.String()


def create_user(email: str, password: str, role: str) -> User:
    """Add a user (the caller commits); 409 if the email is taken."""
    email = email.lower()
    if db.session.execute(db.select(User.pk).filter_by(email=email)).first():
        raise Conflict(f"a user with email {email} exists", {"email": email})
    return add_with_id(User(email=email, password_hash=hash_password(password), role=role))


def _get_user(user_id: str) -> User:
    user = db.session.execute(db.select(User).filter_by(id=user_id)).scalar_one_or_none()
    if user is None:
        raise NotFound(f"no user {user_id}")
    return user


@blp.route("/users")
class Users(MethodView):
    @access(ADMIN)
    @blp.arguments(PageArgs, location="query")
    @blp.response(200, UserListSchema)
    def get(self, args):
        """List users (admins only)."""
        rows, meta = page(db.select(User).order_by(User.pk), args, db.session)
        return {"users": rows, **meta}

    @blp.arguments(UserSchema)
    @blp.response(201, UserSchema)
    def post(self, body):
        """Create a user."""
        user = create_user(body["email"], body["password"], body["role"])
        audit("user_create", user.id, email=user.email, role=user.role)
        db.session.commit()
        return user


@blp.route("/users/<user_id>")
class UserById(MethodView):
    @blp.arguments(UserPatchSchema)
    @blp.response(200, UserSchema)
    def patch(self, body, user_id):
        """Change a user's role, status (disable) or password."""
        user = _get_user(user_id)
        if user.id == g.principal.id and (body.get("role") == "viewer" or body.get("status") == "disabled"):
            raise ApiError("an admin cannot demote or disable themselves", {"user_id": user_id}, status=409)
        for field in ("role", "status"):
            if field in body:
                setattr(user, field, body[field])
                forget_sessions()  # this worker trusts no session it read before, at once
        if "password" in body:
            user.password_hash = hash_password(body["password"])
        if "password" in body or body.get("status") == "disabled":
            end_sessions(user.pk)  # a password set by an admin, or a disabled user: no old token lives on
        audit(
            "user_update",
            user.id,
            **{k: v for k, v in body.items() if k != "password"},
            password_changed="password" in body,
        )
        db.session.commit()
        return user


@blp.route("/api-keys")
class ApiKeys(MethodView):
    @access(ADMIN)
    @blp.arguments(PageArgs, location="query")
    @blp.response(200, ApiKeyListSchema)
    def get(self, args):
        """List API keys (never the keys themselves)."""
        rows, meta = page(db.select(ApiKey).order_by(ApiKey.pk), args, db.session)
        return {"api_keys": rows, **meta}

    @blp.arguments(ApiKeySchema)
    @blp.response(201, ApiKeySchema)
    def post(self, body):
        """Create an API key for agents; the key is in this answer only."""
        key = API_KEY_PREFIX + secrets.token_urlsafe(32)
        row = add_with_id(
            ApiKey(
                name=body["name"],
                key_hash=hash_api_key(key),
                key_prefix=key[:12],
                created_by=g.principal.id,
                host_pattern=body.get("host_id") or body["host_pattern"],
                allow_discovery=body["allow_discovery"],
                max_hosts=body.get("max_hosts"),
                max_series=body.get("max_series"),
            )
        )
        audit(
            "api_key_create",
            row.id,
            name=row.name,
            host_pattern=row.host_pattern,
            allow_discovery=row.allow_discovery,
            max_hosts=row.max_hosts,
            max_series=row.max_series,
        )
        db.session.commit()
        row.key = key  # not a column: this answer is the only place the key ever appears
        return row


@blp.route("/api-keys/<key_id>")
class ApiKeyById(MethodView):
    @blp.response(200, ApiKeySchema)
    def delete(self, key_id):
        """Revoke an API key: agents using it are refused from now on."""
        row = db.session.execute(db.select(ApiKey).filter_by(id=key_id)).scalar_one_or_none()
        if row is None:
            raise NotFound(f"no API key {key_id}")
        row.revoked_at = row.revoked_at or utcnow()
        audit("api_key_revoke", row.id)
        db.session.commit()
        forget_api_key(row.key_hash)
        return row


@blp.route("/audit")
class Audit(MethodView):
    @access(ADMIN)
    @blp.arguments(AuditArgs, location="query")
    @blp.response(200, AuditListSchema)
    def get(self, args):
        """The audit log, newest first (admins only)."""
        query = db.select(AuditEvent).order_by(AuditEvent.pk.desc())
        for field in ("user_id", "action"):
            if field in args:
                query = query.filter(getattr(AuditEvent, field) == args[field])
        rows, meta = page(query, args, db.session)
        return {"events": rows, **meta}
