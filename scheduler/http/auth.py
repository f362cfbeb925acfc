"""Who may use the API and the status page: the bearer token (``LESSON_API_TOKEN``), sent as an
``Authorization: Bearer`` header or, for a browser, in the cookie the login page sets. Written once for
both."""

from __future__ import annotations

import secrets

from fastapi import HTTPException
from starlette.requests import Request

from scheduler.http.dependencies import SettingsDep

__all__ = ["COOKIE", "COOKIE_MAX_AGE", "require_token", "token_ok"]

COOKIE = "lesson_token"
COOKIE_MAX_AGE = 12 * 3600


def token_ok(request: Request, token: str | None) -> bool:
    """True when no token is configured, or the request carries it. Constant time, so the token cannot be
    guessed a character at a time from response timings."""
    if token is None:
        return True
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        given = request.cookies.get(COOKIE, "")
    return secrets.compare_digest(given.encode(), token.encode())


async def require_token(request: Request, settings: SettingsDep) -> None:
    """The API's dependency: 401 with a Bearer challenge unless :func:`token_ok`."""
    if not token_ok(request, settings.api_token):
        raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})
