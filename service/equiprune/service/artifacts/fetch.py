"""Remote import sources: which protocols ImportArtifact may use, and an HTTP(S) fetcher that
cannot be turned against the server's own network.

Why our own fetcher and not fsspec's HTTPFileSystem (aiohttp): those resolve the host name
themselves when they connect, after any check of ours, and follow redirects without asking.
A name that resolves to a public address for the check and to 127.0.0.1 for the connection
(DNS rebinding), or a public server that redirects to the cloud metadata address, would get
through. Here the host is resolved once, every address it resolves to is vetted, and the
socket connects to a vetted address; TLS still verifies the certificate against the host name
(SNI, default context). Every redirect hop is vetted the same way. Standard library only.

Refusals never quote fetched bytes (a body, a redirect's Location) nor a resolved address:
they say the address class ("resolves to a loopback address") or the HTTP status code.
"""

from __future__ import annotations

import http.client
import ipaddress
import re
import socket
import ssl
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import quote, urljoin, urlsplit

from equiprune.service.errors import FailedPrecondition, InvalidArgument, Unavailable

FIELD = "source.uri"
HTTP_PROTOCOLS = frozenset({"http", "https"})
# fsspec's names for the local filesystem: governed by the `import_roots` setting instead.
LOCAL_PROTOCOLS = frozenset({"file", "local"})
# fsspec protocols that wrap another filesystem: through them a URL could reach local files
# without passing the import-roots check, so they are refused outright.
WRAPPING_PROTOCOLS = frozenset(
    {"dir", "reference", "zip", "tar", "libarchive", "blockcache", "filecache", "simplecache", "cached",
     "generic", "async_wrapper", "asyncwrapper"}
)

CONNECT_TIMEOUT_S = 10.0  # to open the TCP connection (and finish the TLS handshake)
READ_TIMEOUT_S = 60.0  # the longest a server may stay silent while answering or sending the body
TRANSFER_DEADLINE_S = 30 * 60.0  # a whole fetch: a server trickling bytes cannot hold a thread forever
MAX_REDIRECTS = 3
_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_PROTOCOL_NAME = re.compile(r"^[a-z][a-z0-9+.-]*$")
_SHARED_ADDRESS_SPACE = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT (RFC 6598)
_NAT64_PREFIX = ipaddress.ip_network("64:ff9b::/96")  # embeds an IPv4 address (RFC 6052)
_REQUEST_TARGET_SAFE = "".join(chr(c) for c in range(0x21, 0x7F))  # printable ASCII stays as sent

Resolver = Callable[..., Sequence[tuple]]
"""socket.getaddrinfo's signature: (host, port, type=...) -> [(family, type, proto, canonname, sockaddr)]."""
Connector = Callable[[tuple[str, int], float], socket.socket]
"""socket.create_connection's signature: ((address, port), timeout) -> a connected socket."""


def protocol_setting_problem(name: str) -> str | None:
    """Why `name` cannot be put in the `import_protocols` setting, or None if it can."""
    if not _PROTOCOL_NAME.match(name):
        return f"{name!r} is not a protocol name (like https or s3)"
    if name in LOCAL_PROTOCOLS:
        return f"{name} is the local filesystem, which the setting import_roots governs"
    if name in WRAPPING_PROTOCOLS:
        return f"{name} wraps another filesystem, which imports never accept"
    return None


def import_protocol(uri: str) -> str:
    """The URI's protocol as fsspec reads it ('' for a plain local path), lower case.

    Refuses what no setting allows: an empty or control-character URI, a chained or wrapping
    fsspec URL, a protocol that is not a protocol name.
    """
    if not uri:
        raise InvalidArgument("source.uri is empty", field=FIELD)
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in uri):
        raise InvalidArgument("source.uri contains control characters", field=FIELD)
    protocol = ""
    if "://" in uri and len(uri.split("://", 1)[0]) > 1:  # one letter: a Windows drive, as fsspec reads it
        protocol = uri.split("://", 1)[0].lower()
    elif uri.startswith("data:"):
        protocol = "data"
    # An http(s) URL never reaches fsspec, so "::" in it is an IPv6 address, not a chain.
    if "::" in protocol or protocol in WRAPPING_PROTOCOLS or (protocol not in HTTP_PROTOCOLS and "::" in uri):
        raise InvalidArgument(
            f"{uri!r} uses a chained or wrapping fsspec protocol, which imports do not accept", field=FIELD
        )
    if protocol and not _PROTOCOL_NAME.match(protocol):
        raise InvalidArgument(f"{uri!r} does not start with a valid protocol name", field=FIELD)
    return protocol


def non_global_class(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """The class of an address an import must not reach ("loopback", "private", ...), or None
    when it is globally routable. IPv6 forms that embed an IPv4 address are judged by it too."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address in _NAT64_PREFIX:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None and (kind := non_global_class(embedded)) is not None:
            return kind
    checks = (
        ("unspecified", address.is_unspecified),
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("shared (carrier-grade NAT)", address in _SHARED_ADDRESS_SPACE),
        ("private", address.is_private),
        ("reserved", address.is_reserved),
        ("site-local", isinstance(address, ipaddress.IPv6Address) and address.is_site_local),
        ("non-global", not address.is_global),
    )
    return next((kind for kind, applies in checks if applies), None)


@dataclass(frozen=True)
class ImportPolicy:
    """What an import may reach: the remote protocols allowed, and whether http(s) may reach
    non-global addresses. `resolve` and `connect` are the network (replaceable in tests)."""

    protocols: frozenset[str] = frozenset()
    allow_private_addresses: bool = False
    resolve: Resolver = socket.getaddrinfo
    connect: Connector = socket.create_connection

    def check_allowed(self, protocol: str, uri: str) -> None:
        if protocol not in self.protocols:
            raise FailedPrecondition(
                f"the server does not allow imports with protocol {protocol!r} ({uri}); an operator can allow it with "
                f"the server setting import_protocols (`equiprune serve --allow-import-protocol {protocol}`)",
                field=FIELD,
            )

    def vetted_addresses(self, host: str, port: int, where: str) -> list[str]:
        """The addresses `host` resolves to, once; refused if any is not globally routable
        (unless private addresses are allowed). `where` names the host in messages."""
        try:
            answers = self.resolve(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError):
            raise FailedPrecondition(f"{where}: the host name does not resolve", field=FIELD) from None
        addresses = list(dict.fromkeys(str(answer[4][0]).split("%", 1)[0] for answer in answers))
        if not addresses:
            raise FailedPrecondition(f"{where}: the host name does not resolve", field=FIELD)
        if self.allow_private_addresses:
            return addresses
        for address in addresses:
            kind = non_global_class(ipaddress.ip_address(address))
            if kind is not None:
                article = "an" if kind[0] in "aeiou" else "a"
                raise FailedPrecondition(
                    f"{where} resolves to {article} {kind} address; imports only reach globally routable "
                    "addresses unless the server setting import_allow_private_addresses "
                    "(`equiprune serve --allow-private-imports`) is on",
                    field=FIELD,
                )
        return addresses


@dataclass(frozen=True)
class _Hop:
    """One request of a fetch: where to connect and what to send."""

    scheme: str
    host: str  # ASCII (IDNA), no brackets
    port: int
    target: str  # the request target: path and query
    where: str  # how messages name this hop


def _hop(url: str, where: str, refusal: type[Exception]) -> _Hop:
    try:
        parts = urlsplit(url)
        port = parts.port
        host = parts.hostname or ""
        host = host if host.isascii() else host.encode("idna").decode("ascii")
    except (ValueError, UnicodeError):
        raise refusal(f"{where} is not a valid http(s) URL (host or port)", field=FIELD) from None
    if not host:
        raise refusal(f"{where} names no host", field=FIELD)
    scheme = parts.scheme.lower()
    target = quote(parts.path or "/", safe=_REQUEST_TARGET_SAFE)
    if parts.query:
        target += "?" + quote(parts.query, safe=_REQUEST_TARGET_SAFE)
    return _Hop(scheme, host, port or (443 if scheme == "https" else 80), target, where)


def redirect_target(current_url: str, location: str, policy: ImportPolicy, uri: str) -> str:
    """The absolute URL a redirect leads to, if the policy allows following it. Messages never
    quote `location`: it is fetched content."""
    where = f"a redirect from {uri}"
    try:
        target = urljoin(current_url, location.strip())
        scheme = urlsplit(target).scheme.lower()
    except ValueError:
        raise FailedPrecondition(f"{where} leads to an invalid URL", field=FIELD) from None
    if scheme not in HTTP_PROTOCOLS or scheme not in policy.protocols:
        raise FailedPrecondition(
            f"{where} leads to a protocol the server does not allow (setting import_protocols)", field=FIELD
        )
    if urlsplit(current_url).scheme.lower() == "https" and scheme == "http":
        raise FailedPrecondition(f"{where} leads from https to plain http, which imports refuse", field=FIELD)
    return target


class _PinnedConnection(http.client.HTTPConnection):
    """An HTTP connection over a socket we opened to a vetted address. It never reconnects:
    http.client would otherwise reopen it by host name, a second DNS lookup."""

    def __init__(self, hop: _Hop, sock: socket.socket) -> None:
        super().__init__(hop.host, hop.port, timeout=READ_TIMEOUT_S)
        self._pinned: socket.socket | None = sock

    def connect(self) -> None:
        if self._pinned is None:
            raise ConnectionError("the connection to the vetted address was closed")
        self.sock, self._pinned = self._pinned, None


class _Deadline:
    """Ends a fetch that runs past TRANSFER_DEADLINE_S by shutting its socket down: each read
    only waits READ_TIMEOUT_S, so a server trickling a byte at a time could hold a thread for
    ever."""

    def __init__(self, seconds: float) -> None:
        self.expired = False
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sock = sock
        if self.expired:
            self._expire()

    def cancel(self) -> None:
        self._timer.cancel()

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            if self._sock is not None:
                try:
                    self._sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def refusal(self, uri: str, otherwise: str) -> Unavailable:
        if self.expired:
            return Unavailable(f"fetching {uri} took longer than {TRANSFER_DEADLINE_S:.0f} s", field=FIELD)
        return Unavailable(otherwise, field=FIELD)


class HttpBody:
    """The body of a successful response: `read(n)` in blocks, `size` from Content-Length
    (None when the server did not announce one). Read failures are refusals."""

    def __init__(self, connection: _PinnedConnection, response: http.client.HTTPResponse, uri: str,
                 deadline: _Deadline) -> None:
        self._connection, self._response, self._uri, self._deadline = connection, response, uri, deadline
        self.size: int | None = response.length

    def read(self, size: int) -> bytes:
        try:
            data = self._response.read(size)
        except (OSError, http.client.HTTPException):
            raise self._deadline.refusal(
                self._uri, f"the connection to {self._uri} broke or went silent while reading") from None
        if self._deadline.expired:  # the shutdown can look like the end of the body
            raise self._deadline.refusal(self._uri, "")
        return data

    def close(self) -> None:
        self._deadline.cancel()
        self._connection.close()

    def __enter__(self) -> HttpBody:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def open_http(uri: str, policy: ImportPolicy) -> HttpBody:
    """GETs an http(s) URL the policy allows, following at most MAX_REDIRECTS vetted redirects."""
    protocol = import_protocol(uri)
    if protocol not in HTTP_PROTOCOLS:
        raise InvalidArgument(f"{uri!r} is not an http or https URL", field=FIELD)
    policy.check_allowed(protocol, uri)
    url, hop = uri, _hop(uri, uri, InvalidArgument)
    deadline = _Deadline(TRANSFER_DEADLINE_S)
    try:
        for redirects in range(MAX_REDIRECTS + 1):
            connection = _open(hop, policy, deadline)
            try:
                response = _get(connection, hop, uri, deadline)
            except BaseException:
                connection.close()
                raise
            if response.status == 200:
                return HttpBody(connection, response, uri, deadline)
            connection.close()  # a redirect's or an error's body is never read
            location = response.getheader("Location") if response.status in _REDIRECT_STATUSES else None
            if location is None:
                raise FailedPrecondition(f"{hop.where} answered HTTP status {response.status}, not 200", field=FIELD)
            if redirects == MAX_REDIRECTS:
                raise FailedPrecondition(f"{uri} redirects more than {MAX_REDIRECTS} times", field=FIELD)
            url = redirect_target(url, location, policy, uri)
            hop = _hop(url, f"the target of a redirect from {uri}", FailedPrecondition)
    except BaseException:
        deadline.cancel()
        raise
    raise AssertionError("unreachable: the loop returns or raises")


def _open(hop: _Hop, policy: ImportPolicy, deadline: _Deadline) -> _PinnedConnection:
    """A connection to one of the host's vetted addresses (TLS verified for https)."""
    sock = None
    for address in policy.vetted_addresses(hop.host, hop.port, hop.where):
        try:
            sock = policy.connect((address, hop.port), CONNECT_TIMEOUT_S)
            break
        except OSError:
            continue
    if sock is None:
        raise Unavailable(f"{hop.where}: could not connect to the host (refused or timed out)", field=FIELD)
    sock.settimeout(CONNECT_TIMEOUT_S)
    deadline.watch(sock)
    if hop.scheme == "https":
        try:
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=hop.host)
        except ssl.SSLCertVerificationError:
            sock.close()
            raise FailedPrecondition(f"{hop.where}: the server's TLS certificate is not valid for its host name",
                                     field=FIELD) from None
        except OSError:
            sock.close()
            raise deadline.refusal(hop.where, f"{hop.where}: the TLS handshake failed") from None
        deadline.watch(sock)
    sock.settimeout(READ_TIMEOUT_S)
    return _PinnedConnection(hop, sock)


def _get(connection: _PinnedConnection, hop: _Hop, uri: str, deadline: _Deadline) -> http.client.HTTPResponse:
    default_port = 443 if hop.scheme == "https" else 80
    host = f"[{hop.host}]" if ":" in hop.host else hop.host
    try:
        connection.putrequest("GET", hop.target, skip_host=True, skip_accept_encoding=True)
        connection.putheader("Host", host if hop.port == default_port else f"{host}:{hop.port}")
        connection.putheader("Accept-Encoding", "identity")  # the sha256 is of the bytes as stored
        connection.putheader("User-Agent", "equiprune-import")
        connection.endheaders()
        return connection.getresponse()
    except (OSError, http.client.HTTPException):
        raise deadline.refusal(uri, f"{hop.where} did not answer with an HTTP response in time") from None
