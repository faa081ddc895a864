"""Keep query-string values out of uvicorn's logs (a key sent as `?api_key=...` is a secret).

uvicorn logs every request's path with its query string: HTTP requests on `uvicorn.access`
(`'%s - "%s %s HTTP/%s" %d'`), WebSocket handshakes on `uvicorn.error`
(`'%s - "WebSocket %s" ...'`). `RedactQueryValues` rewrites the path argument of such records
so that every value in the query string reads `[redacted]`; parameter names stay.

Every value, not a list of credential-like names: no such list is complete (`api_key`,
`apikey`, `x-api-key`, `key`, `token`, `access_token`, `sig`, `password`, ... and their
percent-encoded spellings, or a bare `?sk-...` with no name at all), and the coordinator's API
takes nothing in the query string that an access log needs: the method, path and status are
what matter there.
"""

from __future__ import annotations

import logging

REDACTED = "[redacted]"
#: the loggers uvicorn writes request paths to
LOGGERS = ("uvicorn.access", "uvicorn.error")


def redact_query(path: str) -> str:
    """`/p?a=1&b` -> `/p?a=[redacted]&[redacted]`: names kept, every value replaced."""
    base, sep, query = path.partition("?")
    if not sep or not query:
        return path
    parts = []
    for item in query.split("&"):
        name, eq, _value = item.partition("=")
        parts.append(f"{name}={REDACTED}" if eq else REDACTED)
    return f"{base}?{'&'.join(parts)}"


class RedactQueryValues(logging.Filter):
    """A logging filter: request paths in a record's arguments lose their query-string values."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and any(_is_path_with_query(a) for a in args):
            record.args = tuple(
                redact_query(a) if isinstance(a, str) and _is_path_with_query(a) else a
                for a in args
            )
        return True


def _is_path_with_query(value: object) -> bool:
    return isinstance(value, str) and value.startswith("/") and "?" in value


def install_redaction() -> None:
    """Add the filter to uvicorn's loggers (idempotent).

    Call it before `uvicorn.run` or after `uvicorn.Config(...)`: uvicorn's logging setup
    (`logging.config.dictConfig`) replaces the loggers' handlers but keeps their filters.
    """
    for name in LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactQueryValues) for f in logger.filters):
            logger.addFilter(RedactQueryValues())
