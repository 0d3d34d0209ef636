"""How a client proves who it is, and how it reaches a server over TLS.

Every API call carries `authorization: Bearer <token>` (gRPC metadata). The token is found, in
this order: the `token` argument (`--token`), a token file (`--token-file`), the environment
(`EQUIPRUNE_TOKEN`, `EQUIPRUNE_TOKEN_FILE`), and last the file `equiprune serve` writes on
its first start for the address it listens on:

    <config dir>/credentials/<host>_<port>.token

where the config dir is `EQUIPRUNE_CONFIG_DIR`, else `$XDG_CONFIG_HOME/equiprune`, else
`~/.config/equiprune`. So on the machine that runs the embedded default, the CLI and the SDK
need nothing at all. A token is a secret: it is never printed or logged, and the files are
written readable by their owner only.

TLS: `tls_ca` (a PEM file of the certificate authority that signed the server's certificate)
opens a TLS channel — through the proxy of deploy/tls/, since Serve's own gRPC port speaks
plaintext and listens on loopback.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import grpc

from .errors import SpecError

_MAX_TOKEN_FILE_BYTES = 4096


def config_dir() -> Path:
    explicit = os.environ.get("EQUIPRUNE_CONFIG_DIR")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base).expanduser() / "equiprune"


def credentials_file(target: str) -> Path:
    """Where the token for `target` (host:port) is kept on this machine."""
    safe = "".join(c if c.isalnum() or c in ".-" else "_" for c in target)
    return config_dir() / "credentials" / f"{safe}.token"


def read_token_file(path: str | os.PathLike, field: str = "token_file") -> str:
    path = Path(path).expanduser()
    try:
        with open(path, "rb") as f:
            raw = f.read(_MAX_TOKEN_FILE_BYTES + 1)
    except OSError as err:
        raise SpecError(field, f"cannot read the token file {str(path)!r}: {err.strerror or err}") from None
    if len(raw) > _MAX_TOKEN_FILE_BYTES:
        raise SpecError(field, f"{str(path)!r} is not a token file (over {_MAX_TOKEN_FILE_BYTES} bytes)")
    token = raw.decode("ascii", errors="replace").strip()
    if not token:
        raise SpecError(field, f"the token file {str(path)!r} is empty")
    return token


def write_token_file(path: Path, token: str) -> None:
    """Write a token readable by its owner only: a new file created 0600 next to `path`, then
    renamed over it (never an existing file of wider mode, never through a link)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(token + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def find_token(target: str, token: str | None = None, token_file: str | os.PathLike | None = None) -> str | None:
    """The token to send to `target`, or None when none is known (the server then answers
    UNAUTHENTICATED, saying how to get one)."""
    if token:
        return token.strip()
    if token_file:
        return read_token_file(token_file)
    if os.environ.get("EQUIPRUNE_TOKEN"):
        return os.environ["EQUIPRUNE_TOKEN"].strip()
    if os.environ.get("EQUIPRUNE_TOKEN_FILE"):
        return read_token_file(os.environ["EQUIPRUNE_TOKEN_FILE"], "EQUIPRUNE_TOKEN_FILE")
    stored = credentials_file(target)
    if stored.is_file():
        return read_token_file(stored)
    # The same local server under its other loopback name.
    host, _, port = target.rpartition(":")
    alias = {"localhost": "127.0.0.1", "127.0.0.1": "localhost"}.get(host)
    if alias is not None and credentials_file(f"{alias}:{port}").is_file():
        return read_token_file(credentials_file(f"{alias}:{port}"))
    return None


class _BearerToken(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                   grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds `authorization: Bearer <token>` to every call. An interceptor rather than gRPC's
    call credentials, which refuse plaintext channels (the embedded default on loopback)."""

    def __init__(self, token: str) -> None:
        self._metadata = ("authorization", f"Bearer {token}")

    def _with_token(self, details):
        metadata = [m for m in (details.metadata or ()) if m[0] != "authorization"] + [self._metadata]
        return details._replace(metadata=metadata)  # grpc's call details are a namedtuple

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._with_token(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._with_token(details), request)

    def intercept_stream_unary(self, continuation, details, requests):
        return continuation(self._with_token(details), requests)

    def intercept_stream_stream(self, continuation, details, requests):
        return continuation(self._with_token(details), requests)


def open_channel(target: str, options: list, *, token: str | None = None,
                 tls_ca: str | os.PathLike | None = None) -> grpc.Channel:
    """A channel to `target`: TLS when `tls_ca` is given, and the token on every call."""
    if tls_ca:
        try:
            ca = Path(tls_ca).expanduser().read_bytes()
        except OSError as err:
            raise SpecError("tls_ca", f"cannot read {str(tls_ca)!r}: {err.strerror or err}") from None
        if b"-----BEGIN CERTIFICATE-----" not in ca:
            raise SpecError("tls_ca", f"{str(tls_ca)!r} holds no PEM certificate")
        channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=ca), options=options)
    else:
        if token and not _is_loopback(target):
            warnings.warn(f"sending an API token in plaintext to {target}: use --tls-ca (tls_ca=) with the TLS "
                          "proxy of deploy/tls beyond this machine", stacklevel=3)
        channel = grpc.insecure_channel(target, options=options)
    return grpc.intercept_channel(channel, _BearerToken(token)) if token else channel


def _is_loopback(target: str) -> bool:
    host = target.rpartition(":")[0].strip("[]") if ":" in target else target
    return host in ("localhost", "::1") or host.startswith("127.")
