"""ImportArtifact must not be a server-side request forgery tool (issue #8).

A real http.server on 127.0.0.1 plays both the "internal service" an attacker points the
server at and, behind a fake resolver, "public" hosts (so redirects to internal addresses can
be tested without the internet). Every refusal is checked for its code, its field, and for
what it must not carry: the fetched bytes, their digest, a resolved address.
"""

import hashlib
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from equiprune.service.errors import FailedPrecondition, InvalidArgument, ServiceError, client_status
from equiprune.service.artifacts import fetch
from equiprune.service.artifacts.store import ArtifactStore
from equiprune.service.artifacts.fetch import ImportPolicy, open_http, redirect_target

LIMIT = 64 * 1024
SECRET = b"metrics_secret_token 42\n" * 40  # what an attacker would like to read back


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    """Serves `server.routes[path]`: (status, headers, body) or a callable(handler)."""

    def do_GET(self):  # noqa: N802 - http.server's name
        self.server.requests.append((self.path, self.headers.get("Host")))
        route = self.server.routes.get(self.path, (404, {}, b"secret-404-body"))
        if callable(route):
            route(self)
            return
        status, headers, body = route
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        if "Content-Length" not in headers:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.routes, httpd.requests, httpd.stop = {}, [], threading.Event()
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.stop.set()
    httpd.shutdown()
    httpd.server_close()


def _url(server, path="/data.npz", host="127.0.0.1"):
    return f"http://{host}:{server.server_address[1]}{path}"


@pytest.fixture
def open_store(tmp_path):
    def open_(**options):
        return ArtifactStore(str(tmp_path / "store"), max_upload_bytes=LIMIT, cache_dir=str(tmp_path / "cache"),
                             **options)
    return open_


def _refusal(call, *codes):
    """The ServiceError `call` raises; it must have one of `codes`, name source.uri, and be
    what a client sees (never INTERNAL)."""
    with pytest.raises(ServiceError) as caught:
        call()
    error = caught.value
    assert error.code in codes, error
    assert error.field == "source.uri", error
    assert client_status(error).code == error.code
    return error


def _assert_leaks_nothing(message: str, content: bytes = SECRET) -> None:
    assert _sha(content) not in message
    assert content[:16].decode(errors="replace") not in message
    assert "secret" not in message


# --- the protocol allow-list ---------------------------------------------------------------------


def test_http_is_refused_by_default_and_nothing_is_fetched(server, open_store):
    server.routes["/data.npz"] = (200, {}, SECRET)
    error = _refusal(lambda: open_store().import_uri("dataset", _url(server), _sha(SECRET)), "FAILED_PRECONDITION")
    assert "protocol 'http'" in error.message
    assert "import_protocols" in error.message and "--allow-import-protocol http" in error.message
    assert server.requests == []


def test_allowed_http_to_loopback_is_refused_without_digest_or_content(server, open_store):
    server.routes["/metrics"] = (200, {}, SECRET)
    store = open_store(import_protocols=("http",))
    error = _refusal(lambda: store.import_uri("dataset", _url(server, "/metrics"), "0" * 64), "FAILED_PRECONDITION")
    assert "resolves to a loopback address" in error.message
    assert "--allow-private-imports" in error.message
    _assert_leaks_nothing(error.message)
    assert server.requests == []  # refused before connecting
    assert store.list() == ([], "")


def test_a_name_resolving_to_loopback_is_refused_without_naming_the_address(server, open_store):
    server.routes["/data.npz"] = (200, {}, SECRET)
    store = open_store(import_protocols=("http",))
    error = _refusal(lambda: store.import_uri("dataset", _url(server, host="localhost"), _sha(SECRET)),
                     "FAILED_PRECONDITION")
    assert "loopback" in error.message
    assert "127.0.0.1" not in error.message and "::1" not in error.message
    assert server.requests == []


def test_with_private_addresses_allowed_http_imports_and_checks_the_digest(server, open_store):
    data = bytes(range(256)) * 40
    server.routes["/data.npz"] = (200, {}, data)
    store = open_store(import_protocols=("http",), import_allow_private_addresses=True)

    record = store.import_uri("model", _url(server), _sha(data).upper())

    assert (record.sha256, record.size_bytes, record.display_name, record.source) == (
        _sha(data), len(data), "data.npz", _url(server))
    assert b"".join(store.read_chunks(record.artifact_id)) == data
    assert server.requests == [("/data.npz", f"127.0.0.1:{server.server_address[1]}")]


def test_a_digest_mismatch_names_neither_the_actual_digest_nor_content(server, open_store):
    server.routes["/data.npz"] = (200, {}, SECRET)
    store = open_store(import_protocols=("http",), import_allow_private_addresses=True)
    expected = _sha(b"what the client claims")
    with pytest.raises(InvalidArgument) as caught:
        store.import_uri("dataset", _url(server), expected)
    assert caught.value.field == "source.sha256"
    assert expected in caught.value.message and "does not match" in caught.value.message
    _assert_leaks_nothing(caught.value.message)
    assert store.list() == ([], "")


@pytest.mark.parametrize("status", [404, 500, 204])
def test_an_http_error_status_is_refused_with_the_code_only(server, open_store, status):
    server.routes["/data.npz"] = (status, {"X-Secret": "secret-header"}, b"" if status == 204 else SECRET)
    store = open_store(import_protocols=("http",), import_allow_private_addresses=True)
    error = _refusal(lambda: store.import_uri("dataset", _url(server), _sha(SECRET)), "FAILED_PRECONDITION")
    assert f"HTTP status {status}" in error.message
    _assert_leaks_nothing(error.message)


def test_an_announced_oversize_body_is_refused_before_reading(server, open_store):
    server.routes["/big"] = (200, {"Content-Length": str(LIMIT + 1)}, b"x" * (LIMIT + 1))
    store = open_store(import_protocols=("http",), import_allow_private_addresses=True)
    error = _refusal(lambda: store.import_uri("dataset", _url(server, "/big"), "0" * 64), "RESOURCE_EXHAUSTED")
    assert str(LIMIT + 1) in error.message and "max_upload_bytes" in error.message


def _endless_body(handler):
    """HTTP/1.0 without Content-Length: the body ends when the connection closes, which an
    attacker can postpone for ever."""
    handler.send_response(200)
    handler.end_headers()
    try:
        for _ in range(64):
            handler.wfile.write(b"z" * 16 * 1024)
    except OSError:
        pass  # the importer hung up, as it should


def test_an_unannounced_body_over_the_limit_is_cut_off(server, open_store, tmp_path):
    server.routes["/endless"] = _endless_body
    store = open_store(import_protocols=("http",), import_allow_private_addresses=True)
    error = _refusal(lambda: store.import_uri("dataset", _url(server, "/endless"), "0" * 64), "RESOURCE_EXHAUSTED")
    assert "max_upload_bytes" in error.message
    assert list((tmp_path / "store" / "staging").iterdir()) == []


def test_an_empty_body_is_refused(server, open_store):
    server.routes["/empty"] = (200, {}, b"")
    store = open_store(import_protocols=("http",), import_allow_private_addresses=True)
    error = _refusal(lambda: store.import_uri("dataset", _url(server, "/empty"), _sha(b"")), "INVALID_ARGUMENT")
    assert "empty" in error.message


def test_a_trickling_server_is_cut_off_at_the_transfer_deadline(server, open_store, monkeypatch):
    def trickle(handler):
        handler.send_response(200)
        handler.send_header("Content-Length", "1000")
        handler.end_headers()
        handler.wfile.write(b"t")
        handler.wfile.flush()
        handler.server.stop.wait(10)

    server.routes["/slow"] = trickle
    monkeypatch.setattr(fetch, "TRANSFER_DEADLINE_S", 0.5)
    store = open_store(import_protocols=("http",), import_allow_private_addresses=True)
    started = time.monotonic()
    error = _refusal(lambda: store.import_uri("dataset", _url(server, "/slow"), "0" * 64), "UNAVAILABLE")
    assert "took longer than" in error.message
    assert time.monotonic() - started < 5


# --- the address vetting -------------------------------------------------------------------------


@pytest.mark.parametrize(("host", "kind"), [
    ("169.254.169.254", "link-local"),  # cloud metadata
    ("10.1.2.3", "private"),
    ("172.16.5.4", "private"),
    ("192.168.1.1", "private"),
    ("::1", "loopback"),
    ("::ffff:127.0.0.1", "loopback"),
    ("::ffff:169.254.169.254", "link-local"),
    ("0.0.0.0", "unspecified"),
    ("100.64.0.1", "shared"),
    ("fe80::1", "link-local"),
    ("fd00::1", "private"),
    ("224.0.0.1", "multicast"),
    ("2002:7f00:1::", "loopback"),  # 6to4 wrapping 127.0.0.1
    ("2130706433", "loopback"),  # 127.0.0.1 as one decimal number
])
def test_non_global_addresses_are_refused_by_the_vetting(host, kind):
    policy = ImportPolicy(frozenset({"http"}))
    with pytest.raises(FailedPrecondition) as caught:
        policy.vetted_addresses(host, 80, "the URL")
    assert caught.value.field == "source.uri"
    assert f"resolves to a{'n' if kind[0] in 'aeiou' else ''} {kind}" in caught.value.message
    assert ImportPolicy(frozenset({"http"}), allow_private_addresses=True).vetted_addresses(host, 80, "the URL")


def _resolver(table, calls=None):
    """A fake DNS: names from `table`, numeric addresses as the system parses them, else none."""
    def resolve(host, port, type=0, **_):
        if calls is not None:
            calls.append(host)
        if host not in table:
            return socket.getaddrinfo(host, port, type=type, flags=socket.AI_NUMERICHOST)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port)) for address in table[host]]
    return resolve


def test_one_non_global_address_among_several_refuses_the_host():
    policy = ImportPolicy(frozenset({"http"}), resolve=_resolver({"mixed.example": ["93.184.216.34", "10.9.8.7"]}))
    with pytest.raises(FailedPrecondition) as caught:
        policy.vetted_addresses("mixed.example", 80, "http://mixed.example/x")
    assert "private" in caught.value.message and "10.9.8.7" not in caught.value.message
    global_only = ImportPolicy(frozenset({"http"}), resolve=_resolver({"pub.example": ["93.184.216.34"]}))
    assert global_only.vetted_addresses("pub.example", 80, "x") == ["93.184.216.34"]


def test_an_unresolvable_host_is_a_failed_precondition():
    policy = ImportPolicy(frozenset({"http"}), resolve=_resolver({}))
    error = _refusal(lambda: open_http("http://nowhere.example/x", policy), "FAILED_PRECONDITION")
    assert "does not resolve" in error.message


@pytest.fixture
def public_network(server):
    """A policy that believes some names are public hosts, all served by the local server."""
    addresses = {"files.example.com": ["93.184.216.34"], "mirror.example.org": ["151.101.1.1"],
                 "internal.example": ["10.0.0.7"]}
    calls, connected = [], []

    def connect(address, timeout):
        connected.append(address)
        return socket.create_connection(("127.0.0.1", server.server_address[1]), timeout)

    policy = ImportPolicy(frozenset({"http", "https"}), resolve=_resolver(addresses, calls), connect=connect)
    return policy, calls, connected


def test_the_connection_goes_to_the_vetted_address_with_the_right_host_header(server, public_network):
    policy, calls, connected = public_network
    server.routes["/data.npz"] = (200, {}, b"payload")
    with open_http("http://files.example.com/data.npz", policy) as body:
        assert (body.size, body.read(100)) == (7, b"payload")
    assert calls == ["files.example.com"]  # resolved once: no second lookup to rebind
    assert connected == [("93.184.216.34", 80)]
    assert server.requests == [("/data.npz", "files.example.com")]


def test_vetted_redirects_are_followed_up_to_three(server, public_network):
    policy, calls, _ = public_network
    for hop in range(4):
        server.routes[f"/r{hop}"] = (302, {"Location": f"/r{hop + 1}"}, b"")
    server.routes["/r1"] = (301, {"Location": "http://mirror.example.org:8080/r2"}, b"")
    server.routes["/r4"] = (200, {}, b"arrived")

    with open_http("http://files.example.com/r1", policy) as body:
        assert body.read(100) == b"arrived"
    assert ("/r2", "mirror.example.org:8080") in server.requests
    assert calls == ["files.example.com", "mirror.example.org", "mirror.example.org", "mirror.example.org"]

    server.requests.clear()
    error = _refusal(lambda: open_http("http://files.example.com/r0", policy), "FAILED_PRECONDITION")
    assert "more than 3" in error.message
    assert [path for path, _ in server.requests] == ["/r0", "/r1", "/r2", "/r3"]  # /r4 never fetched


@pytest.mark.parametrize(("location", "kind"), [
    ("http://127.0.0.1:{port}/secret", "loopback"),
    ("http://internal.example/secret", "private"),
    ("http://169.254.169.254/latest/meta-data/", "link-local"),
    ("http://[::ffff:10.0.0.1]/secret", "private"),
])
def test_a_redirect_to_a_non_global_address_is_refused(server, public_network, location, kind):
    policy, _, connected = public_network
    server.routes["/start"] = (302, {"Location": location.format(port=server.server_address[1])}, b"")
    error = _refusal(lambda: open_http("http://files.example.com/start", policy), "FAILED_PRECONDITION")
    assert "redirect from http://files.example.com/start resolves to a" in error.message and kind in error.message
    assert "/secret" not in error.message and "internal.example" not in error.message  # Location is not quoted
    assert [path for path, _ in server.requests] == ["/start"]
    assert len(connected) == 1


def test_a_redirect_to_another_protocol_or_a_downgrade_is_refused():
    policy = ImportPolicy(frozenset({"http", "https", "s3"}))
    uri = "https://files.example.com/x"
    for location in ("ftp://files.example.com/x", "file:///etc/passwd", "s3://bucket/key",
                     "http://files.example.com/x", "gopher://127.0.0.1:6379/_INFO"):
        with pytest.raises(FailedPrecondition) as caught:
            redirect_target(uri, location, policy, uri)
        assert caught.value.field == "source.uri"
        assert location not in caught.value.message
    with pytest.raises(FailedPrecondition, match="from https to plain http"):
        redirect_target(uri, "http://files.example.com/x", policy, uri)
    assert redirect_target(uri, "/y?z=1", policy, uri) == "https://files.example.com/y?z=1"
    http_only = ImportPolicy(frozenset({"http"}))
    with pytest.raises(FailedPrecondition, match="protocol the server does not allow"):
        redirect_target("http://a.example/", "https://a.example/", http_only, "http://a.example/")


# --- unknown, unsupported and malformed URIs -------------------------------------------------------


@pytest.mark.parametrize("uri", [
    "ftp://127.0.0.1/pub/data.npz", "sftp://host/x", "data:text/plain,hello", "memory://x/y", "HTTP://127.0.0.1/x",
    "https://example.com/x", "::", "::x", "simplecache::http://127.0.0.1/x", "zip://x::file:///tmp/a.zip",
    "nosuchprotocol://x/y", "garbage", "a b://x", "http", "ht\ntp://x", "\x00",
    "http://", "http://:80/x", "http://host:notaport/", "http://[::1",
])
@pytest.mark.parametrize("protocols", [(), ("http",)])
def test_unknown_unsupported_or_malformed_uris_never_become_internal(open_store, uri, protocols):
    store = open_store(import_protocols=protocols)
    _refusal(lambda: store.import_uri("dataset", uri, "0" * 64), "INVALID_ARGUMENT", "FAILED_PRECONDITION")


def test_ftp_names_the_protocol_and_how_to_allow_it(open_store):
    error = _refusal(lambda: open_store().import_uri("dataset", "ftp://127.0.0.1/x.npz", "0" * 64),
                     "FAILED_PRECONDITION")
    assert "protocol 'ftp'" in error.message and "--allow-import-protocol ftp" in error.message


def test_an_allowed_fsspec_protocol_that_cannot_connect_is_unavailable(open_store):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    store = open_store(import_protocols=("ftp",))
    error = _refusal(lambda: store.import_uri("dataset", f"ftp://127.0.0.1:{port}/x.npz", "0" * 64), "UNAVAILABLE")
    assert "server log" in error.message


# --- settings, flags and the ingress ---------------------------------------------------------------


def test_settings_and_flags_carry_the_policy(tmp_path):
    from pydantic import ValidationError

    from equiprune.service.launcher import _parser, settings_from_args
    from equiprune.service.settings import ServerSettings

    defaults = ServerSettings(data_dir=tmp_path)
    assert (defaults.import_protocols, defaults.import_allow_private_addresses) == ((), False)
    assert ServerSettings(data_dir=tmp_path, import_protocols=["HTTPS", "s3://", "https"]).import_protocols == (
        "https", "s3")
    for bad in ("file", "local", "simplecache", "zip", "not a protocol"):
        with pytest.raises(ValidationError):
            ServerSettings(data_dir=tmp_path, import_protocols=[bad])

    args = _parser().parse_args(["--data-dir", str(tmp_path), "--allow-import-protocol", "https",
                                 "--allow-import-protocol", "s3", "--allow-private-imports"])
    settings = settings_from_args(args)
    assert (settings.import_protocols, settings.import_allow_private_addresses) == (("https", "s3"), True)
    plain = settings_from_args(_parser().parse_args(["--data-dir", str(tmp_path)]))
    assert (plain.import_protocols, plain.import_allow_private_addresses) == ((), False)


def test_the_artifact_plane_checks_the_policy_first_and_renames_fields_for_job_specs(tmp_path, server):
    from equiprune.service.tenants.auth import Caller
    from equiprune.service.artifacts.plane import ArtifactsPlane
    from equiprune.service.jobs.wire import ArtifactSource

    store = ArtifactStore(str(tmp_path / "store"), cache_dir=str(tmp_path / "cache"))
    plane = ArtifactsPlane(store, validate=None, samples_dir=tmp_path / "samples")  # no Serve, no gRPC
    stored = tmp_path / "stored.bin"
    stored.write_bytes(SECRET)
    store.put_file(str(stored), "dataset", "stored.bin", source="test")
    source = ArtifactSource(uri=_url(server), sha256=_sha(SECRET))

    with pytest.raises(FailedPrecondition) as caught:  # known content, but a URI it may not read
        plane.import_artifact(Caller("admin"), "dataset", source, "", "source")
    assert caught.value.field == "source.uri"
    with pytest.raises(FailedPrecondition) as caught:
        plane.import_artifact(Caller("admin"), "dataset", source, "", "spec.dataset.uri")
    assert caught.value.field == "spec.dataset.uri.uri"
    with pytest.raises(InvalidArgument) as caught:
        plane.import_artifact(Caller("admin"), "dataset", ArtifactSource(uri="::"), "", "spec.dataset.uri")
    assert caught.value.field == "spec.dataset.uri.sha256"
    assert server.requests == []
