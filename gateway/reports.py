"""On-demand CSV export (§8.6, REQ-EXPORT-001/003): a file in local storage behind a signed link valid 1 h."""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import secrets
import time
from pathlib import Path

import marshmallow as ma
from flask import current_app, request, send_file
from flask.views import MethodView

from gateway.auth import PUBLIC, access, audit
from gateway.db import Host, db, private_dir, private_file, secret
from gateway.errors import ApiError, Blueprint, NotFound
from gateway.metrics import QueryArgs
from gateway.process_masking import masking
from gateway.schemas import utc_text
from gateway.series import RANGES, fetch_series
from gateway.spreadsheet import as_text

blp = Blueprint("reports", __name__, url_prefix="/api/v1/reports", description="Exports and reports")

LINK_TTL_S = 3600


class ExportSchema(QueryArgs):
    labels = ma.fields.Dict(keys=ma.fields.String(), values=ma.fields.String(), load_default=dict)
    format = ma.fields.String(load_default="csv", validate=ma.validate.OneOf(["csv"]))
    range = ma.fields.String(load_default="24h", validate=ma.validate.OneOf(list(RANGES)))


class ExportResult(ma.Schema):
    download_url = ma.fields.String()
    expires_at = ma.fields.String()
    rows = ma.fields.Integer()
    resolution = ma.fields.String()


def _exports_dir() -> Path:
    return private_dir(Path(current_app.config["STATE_DIR"]) / "exports")


def signature(name: str, expires: int) -> str:
    return hmac.new(secret("download").encode(), f"{name}:{expires}".encode(), hashlib.sha256).hexdigest()


def verify_link(name: str, remedy: str) -> None:
    """Check the request's ``expires`` and ``sig`` against ``name``.

    Raises:
        ApiError: no expiry, a signature that does not match, or an expired link (403).
    """
    try:
        expires = int(request.args.get("expires", ""))
    except ValueError:
        raise ApiError("link lacks its expiry", status=403) from None
    if not hmac.compare_digest(request.args.get("sig", ""), signature(name, expires)):
        raise ApiError("link signature does not match", status=403)
    if time.time() > expires:
        raise ApiError(f"link expired; {remedy}", {"expired_at": utc_text(expires)}, status=403)


def _purge_expired(directory: Path) -> None:
    cutoff = time.time() - LINK_TTL_S
    for f in directory.glob("*.csv"):
        if f.stat().st_mtime < cutoff:
            f.unlink(missing_ok=True)


@blp.route("/export")
class Export(MethodView):
    @blp.arguments(ExportSchema)
    @blp.response(200, ExportResult)
    def post(self, body):
        """Export one metric of one host over a range as CSV; answers a download link valid for 1 h."""
        if not db.session.execute(db.select(Host.pk).filter_by(id=body["host_id"])).first():
            raise NotFound(f"no host {body['host_id']}", {"host_id": body["host_id"]})
        series, resolution, _ = fetch_series(
            current_app.extensions["tiers"], body["metric"], body["host_id"], body["range"], body["labels"]
        )
        mask = masking()  # series stored before the policy, or scraped from an exporter without it
        for s in series:
            s["labels"] = mask.labels(s["labels"])
        label_names = sorted({k for s in series for k in s["labels"]})
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["timestamp", "host_id", "metric", *label_names, "value"])
        rows = 0
        for s in series:
            for p in s["datapoints"]:
                writer.writerow(
                    [
                        p["ts"],
                        body["host_id"],
                        body["metric"],
                        *(as_text(s["labels"].get(k, "")) for k in label_names),
                        p["value"],
                    ]
                )
                rows += 1
        directory = _exports_dir()
        _purge_expired(directory)
        safe_metric = "".join(c if c.isalnum() else "-" for c in body["metric"])
        name = f"{safe_metric}-{secrets.token_hex(8)}.csv"
        private_file(directory / name).write_text(out.getvalue())
        expires = int(time.time()) + LINK_TTL_S
        audit("export", body["host_id"], metric=body["metric"], range=body["range"], rows=rows)
        db.session.commit()
        query = f"expires={expires}&sig={signature(name, expires)}"
        url = f"{request.host_url.rstrip('/')}/api/v1/reports/download/{name}?{query}"
        return {"download_url": url, "expires_at": utc_text(expires), "rows": rows, "resolution": resolution}


@blp.route("/download/<name>")
class Download(MethodView):
    @access(PUBLIC)
    def get(self, name):
        """Download an export by its signed link (no login: the signature is the permission)."""
        verify_link(name, "export again")
        path = _exports_dir() / name
        if "/" in name or not path.is_file():
            raise NotFound("export no longer exists; export again")
        return send_file(path, mimetype="text/csv", as_attachment=True, download_name=name)
