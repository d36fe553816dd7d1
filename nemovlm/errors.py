"""The package's own small error hierarchy.

Backends convert client errors (``openai``, ``fal-client``, ``httpx``) into these in
one place at their boundary, keeping status, request id and the server's message.
Input errors are raised before any request leaves the process.
"""

from __future__ import annotations


class NemoVLMError(Exception):
    """Base class of every error this package raises on purpose."""


class UnsupportedInputError(NemoVLMError, ValueError):
    """The request cannot be sent as given; the message says what to change."""


class MissingCredentialsError(NemoVLMError, ValueError):
    """A key the backend needs is not set; the message names the variable."""


class RequestError(NemoVLMError):
    """The server refused or failed the request."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        request_id: str | None = None,
        model: str | None = None,
        code: str | int | None = None,
    ) -> None:
        self.status_code = status_code
        self.request_id = request_id
        self.model = model
        self.server_message = message
        self.code = code
        """The server's own error code, when it sent one (``error.code`` in its JSON)."""
        bits = [f"status {status_code}" if status_code is not None else None]
        if code is not None and code != status_code:
            bits.append(f"code {code}")
        bits.append(f"model {model}" if model else None)
        bits.append(f"request id {request_id}" if request_id else None)
        where = ", ".join(b for b in bits if b)
        super().__init__(f"{message} ({where})" if where else message)


class RateLimitError(RequestError):
    """429 after every retry was spent."""


class RequestTimeoutError(NemoVLMError, TimeoutError):
    """No answer in time; the message names the setting to raise."""


class IncompleteResponseError(NemoVLMError):
    """A stream broke off, or a reply lacked what every reply must have."""
