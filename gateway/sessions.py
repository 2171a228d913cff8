"""Logging in and out: login sessions, their tokens, refresh-token rotation, password changes."""

from __future__ import annotations

import secrets

import marshmallow as ma
from flask import current_app, g, request
from flask.views import MethodView
from sqlalchemy import update

from gateway.auth import (
    PUBLIC,
    VIEWER,
    Principal,
    access,
    audit,
    check_password,
    decode_token,
    forget_sessions,
    hash_password,
    issue_token,
    live_session,
    password_field,
)
from gateway.db import LoginSession, User, db, utcnow
from gateway.errors import Blueprint, Forbidden, Unauthorized
from gateway.ratelimit import check_backoff, count_failure, count_request, forget
from gateway.schemas import utc_text

blp = Blueprint("auth", __name__, url_prefix="/api/v1/auth", description="Login, token refresh, logout")


class LoginSchema(ma.Schema):
    email = ma.fields.Email(required=True)
    password = password_field(1, required=True)


class RefreshSchema(ma.Schema):
    refresh_token = ma.fields.String(required=True)


class PasswordSchema(ma.Schema):
    current_password = password_field(1, required=True)
    new_password = password_field(12, required=True)


class LogoutArgs(ma.Schema):
    all = ma.fields.Boolean(load_default=False, metadata={"description": "end every session of this user"})


class TokenSchema(ma.Schema):
    token = ma.fields.String(metadata={"description": '"Bearer <access token>", as the spec shows it'})
    access_token = ma.fields.String()
    token_type = ma.fields.String()
    role = ma.fields.String(metadata={"example": "Admin"})
    expires_at = ma.fields.String()
    refresh_token = ma.fields.String(metadata={"description": "good for one refresh: each answers a new one"})
    refresh_expires_at = ma.fields.String()


class StatusSchema(ma.Schema):
    status = ma.fields.String()


def end_sessions(user_pk: int) -> None:
    """Revoke every login session of the user: at once through this worker, within SESSION_CACHE_S elsewhere."""
    forget_sessions()
    db.session.execute(
        update(LoginSession)
        .where(LoginSession.user_pk == user_pk, LoginSession.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )


def _start_session(user: User) -> dict:
    session = LoginSession(
        user_pk=user.pk,
        expires_at=utcnow() + current_app.config["REFRESH_TOKEN_TTL"],
        refresh_id=secrets.token_hex(16),
    )
    db.session.add(session)
    db.session.flush()
    return _tokens(Principal("user", user.id, user.role, user.email, session.id), session.refresh_id)


def _tokens(user: Principal, refresh_id: str) -> dict:
    access_token, exp = issue_token(user, "access", current_app.config["ACCESS_TOKEN_TTL"])
    refresh, rexp = issue_token(user, "refresh", current_app.config["REFRESH_TOKEN_TTL"], rid=refresh_id)
    return {
        "token": f"Bearer {access_token}",
        "access_token": access_token,
        "token_type": "Bearer",
        "role": user.role.capitalize(),
        "expires_at": utc_text(exp),
        "refresh_token": refresh,
        "refresh_expires_at": utc_text(rexp),
    }


def _rotate(claims: dict) -> str:
    """The session's next refresh id, if ``claims`` carry its current one; else the session ends (replay)."""
    new = secrets.token_hex(16)
    # One conditional UPDATE: of two workers handed the same token at once, one wins.
    rotated = db.session.execute(
        update(LoginSession)
        .where(
            LoginSession.id == claims["sid"],
            LoginSession.revoked_at.is_(None),
            LoginSession.refresh_id == claims.get("rid"),
        )
        .values(refresh_id=new)
    ).rowcount
    if rotated != 1:
        forget_sessions()
        db.session.execute(update(LoginSession).where(LoginSession.id == claims["sid"]).values(revoked_at=utcnow()))
        audit("refresh_replayed", claims["sid"], user_id=claims["sub"])
        db.session.commit()
        raise Unauthorized("refresh token already used; the session has ended, log in again")
    return new


@blp.route("/login")
class Login(MethodView):
    @access(PUBLIC)
    @blp.arguments(LoginSchema)
    @blp.response(200, TokenSchema)
    def post(self, body):
        """Log in with email and password: an access token (15 min) and a refresh token (7 d)."""
        config = current_app.config
        count_request(f"login:{request.remote_addr}", config["LOGIN_ATTEMPTS_PER_MIN"])
        email = body["email"].lower()
        # Per account too (known or not, alike): guessing one password from many addresses backs off.
        account = f"login-failed:{email}"
        check_backoff(account, config["LOGIN_FAILURES_BEFORE_BACKOFF"], config["LOGIN_BACKOFF_MAX_S"])
        user = db.session.execute(db.select(User).filter_by(email=email)).scalar_one_or_none()
        if not check_password(body["password"], user.password_hash if user else None) or user.status != "active":
            count_failure(account)
            audit("login_failed", email, user_id=user.id if user else None)
            db.session.commit()
            raise Unauthorized("wrong email or password")
        forget(account)
        tokens = _start_session(user)
        audit("login", user.email, user_id=user.id)
        db.session.commit()
        return tokens


@blp.route("/refresh")
class Refresh(MethodView):
    @access(PUBLIC)
    @blp.arguments(RefreshSchema)
    @blp.response(200, TokenSchema)
    def post(self, body):
        """Trade a refresh token for new tokens (same session); the old refresh token is spent."""
        claims = decode_token(body["refresh_token"], "refresh")
        user = live_session(claims)
        refresh_id = _rotate(claims)
        db.session.commit()
        return _tokens(user, refresh_id)


@blp.route("/logout")
class Logout(MethodView):
    @access(VIEWER)
    @blp.arguments(LogoutArgs, location="query")
    @blp.response(200, StatusSchema)
    def post(self, args):
        """End this login (?all=true: every login of this user): its tokens stop working (docs/security.md)."""
        forget_sessions()
        if args["all"]:
            end_sessions(db.session.get(LoginSession, g.principal.session_id).user_pk)
        else:
            db.session.get(LoginSession, g.principal.session_id).revoked_at = utcnow()
        audit("logout", g.principal.email, all=args["all"])
        db.session.commit()
        return {"status": "ok"}


@blp.route("/password")
class Password(MethodView):
    @access(VIEWER)
    @blp.arguments(PasswordSchema)
    @blp.response(200, TokenSchema)
    def post(self, body):
        """Change one's own password: every session of the user ends; the answer is a new one."""
        user = db.session.execute(db.select(User).filter_by(id=g.principal.id)).scalar_one()
        if not check_password(body["current_password"], user.password_hash):
            audit("password_change_failed", user.email)
            db.session.commit()
            raise Forbidden("the current password is wrong")
        user.password_hash = hash_password(body["new_password"])
        end_sessions(user.pk)
        tokens = _start_session(user)
        audit("password_change", user.email)
        db.session.commit()
        return tokens
