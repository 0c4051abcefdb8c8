"""Bearer-token authentication for the HTTP service: where the token comes from, and the check.

``serve.py`` listens on 127.0.0.1 by default; an address other users can reach needs a token.
Rules, checked once at start, before the model loads and before any socket opens:

* The token comes from ``--token-file PATH`` or ``$LEUKOCYTE_SERVE_TOKEN``, not both. The file
  must be a regular file that only its owner may read or write (group/other permission bits
  refuse it, as ssh refuses a private key: ``chmod 600``), and neither source may be empty.
* A host that is not loopback (127.0.0.0/8, ::1, ``localhost``) without a token is refused;
  ``--no-auth`` is the one way around that, and the service logs a warning.

Every request except ``GET /health`` then needs ``Authorization: Bearer <token>``; a missing or
wrong one gets 401 with the service's error shape (``{"error", "detail"}``) and a
``WWW-Authenticate: Bearer`` header, before any byte of the body is read. The token is never
logged, echoed or kept in plain text by the middleware (it holds its SHA-256), and the
comparison is :func:`hmac.compare_digest` on the two SHA-256 digests: constant time, and the
time does not depend on the length of either token.
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import os
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path

from leukocyte_cnn.base.errors import InputError

TOKEN_ENV = "LEUKOCYTE_SERVE_TOKEN"
OPEN_PATHS = ("/health",)   # answered without a token
REALM = "leukocyte-cnn"
MAX_TOKEN_BYTES = 4096      # a longer "token file" is the wrong file
_PRIVATE_MODE = 0o077       # group and other bits: any of them refuses the file (ssh's rule)


# --------------------------------------------------------------------------- at start


def is_loopback(host: str) -> bool:
    """True for ``localhost``, 127.0.0.0/8 and ::1 (also written ``[::1]`` or IPv4-mapped).

    Host names other than ``localhost`` are not resolved: they count as reachable.
    """
    host = str(host).strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return bool(address.is_loopback or (mapped is not None and mapped.is_loopback))


def _checked_token(raw: bytes, where: str) -> str:
    """One token of printable ASCII from ``raw`` (surrounding whitespace and newline dropped)."""
    text = raw.strip()
    if not text:
        raise InputError(f"{where} is empty; put the token in it (one line, e.g. the output of "
                         "python -c 'import secrets; print(secrets.token_urlsafe(32))')")
    if any(byte < 0x21 or byte > 0x7e for byte in text):
        raise InputError(f"{where} has whitespace inside the token or characters that are not "
                         "printable ASCII; use one line such as secrets.token_urlsafe(32)")
    return text.decode("ascii")


def read_token_file(path: str | os.PathLike) -> str:
    """The token in ``path``; refuses a missing, non-regular, empty or too-open file.

    The permission bits are read from the open file (``fstat``), so the file that is checked is
    the file that is read.
    """
    path = Path(path)
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO or device would block or never end
            raise InputError(f"{path}: token file is not a regular file")
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise InputError(f"{path}: token file not found") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read token file ({exc.strerror})") from None
    with os.fdopen(fd, "rb") as handle:
        mode = stat.S_IMODE(os.fstat(handle.fileno()).st_mode)
        if os.name == "posix" and mode & _PRIVATE_MODE:
            raise InputError(f"{path}: token file has mode {mode:04o}, readable or writable by "
                             f"other users; chmod 600 {path}")
        raw = handle.read(MAX_TOKEN_BYTES + 1)
    if len(raw) > MAX_TOKEN_BYTES:
        raise InputError(f"{path}: token file is over {MAX_TOKEN_BYTES} bytes; not a token file")
    return _checked_token(raw, f"{path}: token file")


def service_token(host: str, token_file: str | os.PathLike | None = None,
                  no_auth: bool = False,
                  environ: Mapping[str, str] | None = None) -> tuple[str | None, str]:
    """``(token, source)``: the token every request must carry (``None``: no authentication)
    and where it came from, for the log (``--token-file PATH``, ``$LEUKOCYTE_SERVE_TOKEN`` or
    ``none``); never the token itself.

    Raises :class:`InputError` (one line) for a token file or variable that cannot be used,
    for two sources at once, for ``--no-auth`` with a token, and for a host that is not
    loopback without a token or ``--no-auth``.
    """
    environ = os.environ if environ is None else environ
    from_env = environ.get(TOKEN_ENV)
    if token_file is not None and from_env is not None:
        raise InputError(f"--token-file {token_file} and ${TOKEN_ENV} both give a token; "
                         "give one")
    if token_file is not None:
        token, source = read_token_file(token_file), f"--token-file {token_file}"
    elif from_env is not None:
        source = f"${TOKEN_ENV}"
        token = _checked_token(from_env.encode("utf-8", "surrogateescape"), source)
    else:
        token, source = None, "none"
    if no_auth and token is not None:
        raise InputError(f"--no-auth, but {source} gives a token; give one or the other")
    if token is None and not no_auth and not is_loopback(host):
        raise InputError(f"--host {host}: not a loopback address, and no token: anyone who can "
                         f"reach it could use the service; pass --token-file PATH (mode 600) "
                         f"or set ${TOKEN_ENV}, or --no-auth to serve without authentication")
    return token, source


# --------------------------------------------------------------------------- per request


class BearerAuth:
    """ASGI middleware: 401 for every request outside ``open_paths`` that does not carry
    ``Authorization: Bearer <token>``, answered before the body is read."""

    def __init__(self, app, token: str, open_paths: Iterable[str] = OPEN_PATHS):
        if not token:
            raise ValueError("BearerAuth needs a token")
        self.app = app
        self.open_paths = frozenset(open_paths)
        self._digest = hashlib.sha256(token.encode("ascii")).digest()  # never the token itself

    def problem(self, headers: Iterable[tuple[bytes, bytes]]) -> tuple[str, str] | None:
        """``None`` when the headers carry the token, else (detail, WWW-Authenticate value)."""
        challenge = f'Bearer realm="{REALM}"'
        values = [value for name, value in headers if name.lower() == b"authorization"]
        if not values:
            return ("Authorization header: missing; send 'Authorization: Bearer <token>'",
                    challenge)
        if len(values) > 1:
            return "Authorization header: given more than once", challenge
        scheme, _, credentials = values[0].strip().partition(b" ")
        credentials = credentials.strip()
        if scheme.lower() != b"bearer" or not credentials:
            return ("Authorization header: not a bearer token; send 'Authorization: Bearer "
                    "<token>'", challenge)
        if not hmac.compare_digest(hashlib.sha256(credentials).digest(), self._digest):
            return "Authorization header: wrong bearer token", f'{challenge}, error="invalid_token"'
        return None

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket") or scope.get("path") in self.open_paths:
            return await self.app(scope, receive, send)
        problem = self.problem(scope.get("headers") or [])
        if problem is None:
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":
            return await send({"type": "websocket.close", "code": 1008})
        detail, challenge = problem
        body = json.dumps({"error": "unauthorized", "detail": detail}).encode()  # app's shape
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                                (b"www-authenticate", challenge.encode())]})
        await send({"type": "http.response.body", "body": body})
