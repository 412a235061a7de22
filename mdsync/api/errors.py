"""The one error hierarchy. Every error a client can see is an ApiError, rendered by the error
middleware as RFC 9457 `application/problem+json` with a `urn:mdsync:error:<slug>` type."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    status = 500
    slug = "internal"
    title = "Internal server error"

    def __init__(self, detail: str | None = None, *, errors: list[dict[str, str]] | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.errors = errors
        self.headers = dict(headers or {})

    def problem(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": f"urn:mdsync:error:{self.slug}",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if self.errors:
            body["errors"] = self.errors
        return body


class BadRequest(ApiError):
    status, slug, title = 400, "bad-request", "Bad request"


class Unauthenticated(ApiError):
    status, slug, title = 401, "unauthenticated", "Not signed in"


class Forbidden(ApiError):
    status, slug, title = 403, "forbidden", "Forbidden"


class NotFound(ApiError):
    status, slug, title = 404, "not-found", "Not found"


class MethodNotAllowed(ApiError):
    status, slug, title = 405, "method-not-allowed", "Method not allowed"


class Conflict(ApiError):
    status, slug, title = 409, "conflict", "Conflict"


class Gone(ApiError):
    status, slug, title = 410, "gone", "Gone"


class PreconditionFailed(ApiError):
    status, slug, title = 412, "precondition-failed", "Precondition failed"


class TooLarge(ApiError):
    status, slug, title = 413, "too-large", "Request too large"


class UnsupportedMediaType(ApiError):
    status, slug, title = 415, "unsupported-media-type", "Unsupported media type"


class ValidationFailed(ApiError):
    status, slug, title = 422, "validation", "Validation failed"

    @classmethod
    def field(cls, field: str, message: str) -> ValidationFailed:
        return cls(f"{field}: {message}", errors=[{"field": field, "message": message}])


class RateLimited(ApiError):
    status, slug, title = 429, "rate-limited", "Too many requests"

    def __init__(self, retry_after: float, detail: str | None = None, **kwargs):
        super().__init__(detail or "Too many attempts; try again later", **kwargs)
        self.retry_after = max(1, int(retry_after + 0.999))
        self.headers["Retry-After"] = str(self.retry_after)


class Upstream(ApiError):
    status, slug, title = 502, "upstream", "Upstream error"


class DatabaseTimeout(ApiError):
    """The database cancelled a statement of the request (PostgreSQL's `database.statement_timeout`):
    the request may well succeed later, so 503 with `Retry-After`, never 500. The error middleware
    makes it from the database's error, for every route (`mdsync.db.cancelled`)."""

    status, slug, title = 503, "database-timeout", "The database took too long"
    RETRY_AFTER_SECONDS = 5

    def __init__(self, detail: str | None = None, **kwargs):
        super().__init__(detail or "the database did not answer in time; try again later", **kwargs)
        self.headers["Retry-After"] = str(self.RETRY_AFTER_SECONDS)


class Internal(ApiError):
    status, slug, title = 500, "internal", "Internal server error"


BY_STATUS: dict[int, type[ApiError]] = {
    cls.status: cls
    for cls in (BadRequest, Unauthenticated, Forbidden, NotFound, MethodNotAllowed, Conflict, Gone,
                PreconditionFailed, TooLarge, UnsupportedMediaType, ValidationFailed, RateLimited,
                Upstream, Internal)
}
