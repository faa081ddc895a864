"""The error tree shared by every layer.

    RigpoolError
     ├── BadRequest            the caller's input is wrong (HTTP 400)
     │    └── ContextTooLong   prompt + max_tokens exceed the model's context window
     ├── NotFound              unknown model, GPU or object (HTTP 404)
     ├── Unauthorized          missing or wrong credentials (HTTP 401)
     ├── NoCapacity            nobody can serve this right now (HTTP 503, retryable)
     └── BackendError          a provider failed while serving (retryable unless said otherwise)

Why one tree: the gateway maps these to OpenAI error bodies in one place, the agent maps them to
protocol `error` frames, and the CLI prints them without a traceback.
"""

from __future__ import annotations


class RigpoolError(Exception):
    """Base of every error rigpool raises on purpose."""

    status_code = 500
    error_type = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code


class BadRequest(RigpoolError):
    status_code = 400
    error_type = "invalid_request_error"


class ContextTooLong(BadRequest):
    code = "context_length_exceeded"


class NotFound(RigpoolError):
    status_code = 404
    error_type = "invalid_request_error"
    code = "not_found"


class Unauthorized(RigpoolError):
    status_code = 401
    error_type = "invalid_request_error"
    code = "invalid_api_key"


class NoCapacity(RigpoolError):
    status_code = 503
    error_type = "server_error"
    code = "no_capacity"


class BackendError(RigpoolError):
    """A provider failed while serving; `retryable` says whether another provider may succeed."""

    status_code = 502
    error_type = "server_error"
    code = "provider_error"

    def __init__(self, message: str, *, retryable: bool = True, param: str | None = None):
        super().__init__(message, param=param)
        self.retryable = retryable
