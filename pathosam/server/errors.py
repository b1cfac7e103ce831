"""The one exception type request handlers raise for a client-visible error."""

from __future__ import annotations


class RequestError(Exception):
    """An error answered as ``status`` with the JSON body ``{"detail": detail}``.

    Parameters
    ----------
    status : int
        HTTP status: 400 bad input, 403 refused by the server's policy, 404 unknown, 408 body
        not received in time, 413 too large, 422 invalid body, 499 client gone (never read),
        501 not implemented, 503 weights not available / time limit / out of memory.
    detail : str
        Human-readable explanation (shown in the QuPath log).
    """

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
