"""HTTP/1.1 request heads as the lab's backends read them, and their canned replies.

Small on purpose: the replicas and the control endpoint need a method, a target, a body
length, whether to close, a content type and whether an ``Origin`` was sent. Anything else is
a 400: a chunked body, a bad or conflicting Content-Length (which also rules out request
smuggling), a malformed line.
"""

from __future__ import annotations

from typing import NamedTuple


def response(code: int, reason: str, headers: str, body: bytes, why: str = "") -> bytes:
    extra = f"x-meshpilot-reason: {why}\r\n" if why else ""
    head = (
        f"HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain\r\n"
        f"Content-Length: {len(body)}\r\n{headers}{extra}\r\n"
    )
    return head.encode("latin-1") + body


class RequestError(Exception):
    """A request answered with `status` and `message` (a replica answers any of them 400)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class RequestHead(NamedTuple):
    """What the servers need of a request head. length: body bytes (Content-Length, 0 when
    absent); close: close after the reply; content_type: the media type, lower-cased, without
    parameters (b"" when absent); origin: whether an ``Origin`` header was sent."""

    method: bytes
    target: bytes
    length: int
    close: bool
    content_type: bytes
    origin: bool


def parse_request_head(head: bytes) -> RequestHead:
    """Parse a request head (without its final blank line); `RequestError` (400) when it is
    malformed, has a bad or conflicting Content-Length, or a Transfer-Encoding (bodies only
    come with a Content-Length here, which also rules out request smuggling).

    Connection is a token list: ``close`` wins, then ``keep-alive``; without either HTTP/1.1
    stays open and HTTP/1.0 closes.
    """
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not parts[0] or not parts[2].startswith(b"HTTP/1."):
        raise RequestError(400, "malformed request line")
    method, target, version = parts
    length: int | None = None
    tokens: set[bytes] = set()
    content_type = b""
    origin = False
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            raise RequestError(400, "malformed header line")
        key = name.strip().lower()
        value = value.strip()
        if key == b"content-length":
            if not value.isdigit() or len(value) > 18 or length not in (None, int(value)):
                raise RequestError(400, "bad Content-Length")
            length = int(value)
        elif key == b"transfer-encoding":
            raise RequestError(400, "chunked bodies are not accepted; send Content-Length")
        elif key == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b","))
        elif key == b"content-type":
            content_type = value.split(b";", 1)[0].strip().lower()
        elif key == b"origin":
            origin = True
    if b"close" in tokens:
        close = True
    elif b"keep-alive" in tokens:
        close = False
    else:
        close = version == b"HTTP/1.0"
    return RequestHead(method, target, length or 0, close, content_type, origin)


EMPTY_CLOSE = b"Content-Length: 0\r\nConnection: close\r\n\r\n"
BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\n" + EMPTY_CLOSE
TOO_LARGE = b"HTTP/1.1 431 Request Header Fields Too Large\r\n" + EMPTY_CLOSE
