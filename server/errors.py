"""User-facing failures of the server.

Every failure a user can cause or fix (bad input, missing weights, no access) is a
`ServerError` with a stable machine code and one sentence that says what to do. The service
sends both over the wire; the CLI prints the message.
"""
from __future__ import annotations


class ServerError(Exception):
    """A failure with a stable `code` (for programs) and a human `message` (for people)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return self.message


# Stable codes; the add-on maps some of them to specific advice.
BAD_INPUT = "bad_input"
BAD_IMAGE = "bad_image"
NO_PERSON = "no_person"
CHECKPOINT_MISSING = "checkpoint_missing"
CHECKPOINT_INVALID = "checkpoint_invalid"
ACCESS_DENIED = "access_denied"
OFFLINE = "offline"
UNSUPPORTED_MODEL = "unsupported_model"
DEVICE_UNAVAILABLE = "device_unavailable"
OUT_OF_MEMORY = "out_of_memory"
CANCELLED = "cancelled"
INTERNAL = "internal"
