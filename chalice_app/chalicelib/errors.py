"""The API's refusals and failures: each carries an HTTP status and a stable code.

Every error the API answers with is JSON `{"error": "<message>", "code": "<code>"}`;
views raise these and one wrapper in `service` turns them into responses.
"""


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
