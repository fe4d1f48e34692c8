"""Exceptions of the protocol package.

One root, :class:`ProtocolError`; its leaves say whose fault a failure is.
:class:`InputError` and its leaves mean the document, event or message we were given is at
fault (reject it, count it, name the reason); anything else derived from the root is our
own misuse of the API.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """Root of every exception raised by ``pithnode.protocol``."""


class InputError(ProtocolError):
    """The input (a document, an event, a peer's message) is malformed or unacceptable.

    ``reason`` is a short machine-readable code; the message is for people.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class DecodeError(InputError):
    """Bytes that are not a well-formed document of the expected kind."""


class TooLarge(InputError):
    """Input over a named ``MAX_*`` limit; rejected before it is decoded."""


class SpecError(ProtocolError):
    """A network spec is missing, malformed or inconsistent."""
