"""The API's refusals and failures: each carries an HTTP status and a stable code.

Every error the API answers with is JSON `{"error": "<message>", "code": "<code>"}`;
`service` and the modules it calls (`addresses`, `fetch`, `images`, `model_cache`) raise
these, and one wrapper, `views.answers_errors`, turns them into responses. A refusal (4xx)
tells the client what was wrong with its request; a failure (5xx) answers with a generic
message for its code (`public_body`), the details (bucket, keys, S3 error codes) going to
the log only.
"""

# What a client is told for each failure (5xx) code; `message` stays in the log.
PUBLIC_MESSAGES = {
    "no_model": "no model has been trained yet",
    "no_candidate": "no candidate model is in staging yet",
    "no_model_store": "no model store is configured",
    "model_store_unavailable": "the model store is unavailable",
    "model_corrupt": "the published model cannot be read",
    # one message for every way a fetch fails: it must not tell what listens where
    "upstream_error": "the picture could not be fetched from its server",
    "upstream_timeout": "the picture's server was too slow",
    "internal_error": "internal error",
}


class ApiError(Exception):
    """An answer other than success; `status` and `code` say which."""

    status = 500
    code = "internal_error"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def body(self) -> dict[str, str]:
        return {"error": self.message, "code": self.code}

    def public_body(self) -> dict[str, str]:
        """What a client sees: the message of a refusal, a generic one for a failure."""
        if self.status < 500:
            return self.body()
        generic = PUBLIC_MESSAGES.get(self.code) or PUBLIC_MESSAGES["internal_error"]
        return {"error": generic, "code": self.code}


class BadRequest(ApiError):
    """The request itself is wrong: missing or malformed parameter, URL or body."""

    status = 400
    code = "bad_request"


class Refused(BadRequest):
    """The URL is well formed but we will not fetch it (scheme, address, redirects)."""

    code = "refused"


class PayloadTooLarge(ApiError):
    status = 413
    code = "too_large"


class UnsupportedMediaType(ApiError):
    status = 415
    code = "unsupported_media_type"


class NotAnImage(ApiError):
    """The bytes arrived but are not a picture we can read."""

    status = 422
    code = "not_an_image"


class UpstreamError(ApiError):
    """The picture's server could not be reached or did not answer with a picture."""

    status = 502
    code = "upstream_error"


class UpstreamTimeout(ApiError):
    status = 504
    code = "upstream_timeout"


class ServiceUnavailable(ApiError):
    """No model to answer with (yet), or the model store cannot be read."""

    status = 503
    code = "no_model"
