"""TLS in front of Serve's gRPC proxy (issue #11, item 2): the shipped deploy/tls/nginx.conf,
rendered with this test's ports and paths, run by a real nginx in front of a real
`equiprune serve`; the SDK and the CLI connect over TLS, trusting a self-signed CA.

Also, against an in-process gRPC server standing in for equiprune (no Ray): what nginx passes
on (the `authorization` metadata, the client's address, a 32 MiB request) and what a client
sees when the server behind it is down; and that only TLS 1.2 and 1.3 are spoken.

Skipped, saying why, where nginx is not installed (`apt-get install nginx-light`; .ci/run
installs it)."""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import pwd
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import warnings
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import pytest

from equiprune.client import specs
from equiprune.client.errors import EquipruneError
from equiprune.client.sdk import EquipruneClient
from equiprune.v1 import jobs_pb2
from harness.server import free_port

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "deploy" / "tls" / "nginx.conf"
PLACEHOLDER = re.compile(r"\$\{(EQUIPRUNE_[A-Z_]+)\}")
MiB = 1024 * 1024


# ---------------------------------------------------------------------------- nginx


def nginx_binary() -> str | None:
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx")
                                          if os.access(p, os.X_OK)), None)


def render(values: dict[str, str]) -> str:
    """deploy/tls/nginx.conf with its ${EQUIPRUNE_...} placeholders filled in, as envsubst would."""
    text = TEMPLATE.read_text()
    names = set(PLACEHOLDER.findall(text))
    assert names == set(values), f"placeholders of {TEMPLATE}: {sorted(names)}, values for {sorted(values)}"
    return PLACEHOLDER.sub(lambda m: values[m.group(1)], text)


class Nginx:
    """A real nginx in the foreground, with every file it writes under `folder`."""

    def __init__(self, binary: str, folder: Path, *, upstream: str, cert: Path, key: Path) -> None:
        self.binary, self.folder = binary, folder
        self.port = free_port()
        folder.mkdir(parents=True, exist_ok=True)
        self.conf = folder / "nginx.conf"
        self.conf.write_text(render({
            "EQUIPRUNE_TLS_LISTEN": f"127.0.0.1:{self.port}",
            "EQUIPRUNE_GRPC_UPSTREAM": upstream,
            "EQUIPRUNE_TLS_CERT": str(cert),
            "EQUIPRUNE_TLS_KEY": str(key),
            "EQUIPRUNE_NGINX_DIR": str(folder),
            # Started as root (CI), the workers switch to this user: the one running the test,
            # so that they can reach the temporary folders under pytest's private tmp dir.
            "EQUIPRUNE_NGINX_USER": pwd.getpwuid(os.getuid()).pw_name,
        }))
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 20.0) -> "Nginx":
        command = [self.binary, "-p", f"{self.folder}/", "-e", str(self.folder / "error.log"), "-c", str(self.conf),
                   "-g", "daemon off;"]
        with open(self.folder / "stderr.log", "ab") as err:
            self.process = subprocess.Popen(command, stdout=err, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nginx exited with {self.process.returncode}:\n{self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"nginx did not listen on {self.port} within {timeout} s:\n{self.log()}")

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()  # SIGTERM: nginx's fast shutdown (master and workers)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def log(self) -> str:
        return "\n".join(path.read_text(errors="replace")[-3000:] for path in
                         (self.folder / "stderr.log", self.folder / "error.log") if path.exists())


@pytest.fixture(scope="module")
def nginx_bin() -> str:
    binary = nginx_binary()
    if binary is None:
        pytest.skip("nginx is not installed (apt-get install nginx-light): the TLS proxy of deploy/tls/ "
                    "cannot be tried")
    return binary


# ---------------------------------------------------------------------------- certificates


def _name(common_name: str):
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_ca(folder: Path, name: str):
    """A self-signed CA: (certificate, key); its PEM written to folder/<name>.pem."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name(name)).issuer_name(_name(name))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    (folder / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert, key


def make_server_cert(folder: Path, ca_cert, ca_key) -> tuple[Path, Path]:
    """A certificate for `localhost` and 127.0.0.1 signed by the CA: (cert PEM, key PEM)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID

    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name("localhost")).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    cert_path, key_path = folder / "server.pem", folder / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:
    """A CA and a server certificate it signed; a second, unrelated CA."""
    pytest.importorskip("cryptography", reason="the test makes its certificates with the cryptography package")
    folder = tmp_path_factory.mktemp("pki")
    ca_cert, ca_key = make_ca(folder, "ca")
    make_ca(folder, "other-ca")
    cert, key = make_server_cert(folder, ca_cert, ca_key)
    return {"ca": folder / "ca.pem", "other_ca": folder / "other-ca.pem", "cert": cert, "key": key}


# ---------------------------------------------------------------------------- the real server


def _token(server) -> str | None:
    """The server's admin token, once the server requires one (issue #11, tenants). Through the
    proxy the SDK cannot find it by itself: it is filed under the server's own address."""
    return getattr(server, "admin_token", None)


@pytest.fixture(scope="module")
def proxy(nginx_bin, pki, server, tmp_path_factory):
    """nginx with the shipped config, terminating TLS in front of the module's real server."""
    nginx = Nginx(nginx_bin, tmp_path_factory.mktemp("nginx"), upstream=f"127.0.0.1:{server.port}",
                  cert=pki["cert"], key=pki["key"]).start()
    yield nginx
    nginx.stop()


@pytest.fixture(scope="module")
def tls_client(proxy, pki, server):
    with EquipruneClient(f"localhost:{proxy.port}", tls_ca=pki["ca"], token=_token(server), timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def digits(tls_client, tmp_path_factory):
    """sample:digits imported through the proxy, and downloaded back through it in 64 KiB
    chunks: (artifact, local file)."""
    artifact = tls_client.import_uri("sample:digits", kind="dataset")
    _, path = tls_client.download_to(artifact.artifact_id, tmp_path_factory.mktemp("download") / "digits.npz",
                                     chunk_bytes=64 * 1024)
    return artifact, path


def test_the_sdk_works_through_the_tls_proxy(tls_client, digits, proxy):
    artifact, path = digits
    assert artifact.size_bytes > 3 * 64 * 1024  # the download took several chunks
    assert hashlib.sha256(path.read_bytes()).hexdigest() == artifact.sha256
    assert path.stat().st_size == artifact.size_bytes
    assert tls_client.get_artifact(artifact.artifact_id).sha256 == artifact.sha256
    assert artifact.artifact_id in {a.artifact_id for a in tls_client.list_artifacts(kind="dataset")}

    # A real job: created, watched (a server stream) and waited for (WaitJob) through nginx.
    job = tls_client.create_job(specs.train_spec(
        dataset=artifact.artifact_id, architecture="small_cnn",
        architecture_kwargs={"num_classes": 10, "in_channels": 1, "input_size": 8, "channels": [4, 8]}, epochs=1))
    events = list(tls_client.watch(job.job_id))
    assert events and [e.sequence for e in events] == sorted({e.sequence for e in events})
    finished = tls_client.wait_job(job.job_id, timeout=300)
    assert finished.state == jobs_pb2.JOB_STATE_SUCCEEDED, finished
    assert job.job_id in {j.job_id for j in tls_client.list_jobs(kind="train")}

    # nginx logged each call with its gRPC status, and never the token.
    access = (proxy.folder / "access.log").read_text()
    assert "/equiprune.v1.JobService/WaitJob" in access and "grpc-status=0" in access
    assert "Bearer" not in access


def test_uploads_in_2_mib_chunks_pass_the_proxy(tls_client, digits, proxy, tmp_path):
    """nginx's default body limit (1 MiB) would refuse every full upload chunk."""
    _, path = digits
    with np.load(path, allow_pickle=False) as npz:
        arrays = {name: npz[name] for name in npz.files}
    rows = len(arrays["labels"])
    bigger = {name: np.concatenate([a] * 5) if a.ndim and len(a) == rows else a for name, a in arrays.items()}
    upload = tmp_path / "digits-x5.npz"
    with open(upload, "wb") as f:
        np.savez(f, **bigger)
    assert upload.stat().st_size > 2 * MiB  # one full 2 MiB chunk at least
    stored = tls_client.upload_file(upload, "dataset", chunk_bytes=2 * MiB)
    assert stored.sha256 == hashlib.sha256(upload.read_bytes()).hexdigest()
    assert stored.size_bytes == upload.stat().st_size
    # One call carried a whole 2 MiB chunk through nginx (its request size, as nginx logged it).
    sizes = [int(n) for n in re.findall(r"PutUploadChunk .* in=(\d+) ", (proxy.folder / "access.log").read_text())]
    assert max(sizes) > 2 * MiB, sizes


def test_the_certificate_names_the_ip_address_too(proxy, pki, server):
    with EquipruneClient(f"127.0.0.1:{proxy.port}", tls_ca=pki["ca"], token=_token(server), retries=0) as client:
        list(client.list_jobs(page_size=1))


def test_the_server_still_checks_the_token_behind_the_proxy(proxy, pki, server):
    """The token travels through nginx (the calls above carry the right one), and a wrong one
    is refused by the server, not let through by the proxy."""
    if _token(server) is None:
        pytest.skip("this server requires no token")
    with EquipruneClient(f"localhost:{proxy.port}", tls_ca=pki["ca"], token="ept_not-a-token", retries=0) as client:
        with pytest.raises(EquipruneError) as refused:
            list(client.list_jobs(page_size=1))
    assert refused.value.code == grpc.StatusCode.UNAUTHENTICATED, refused.value


def test_the_cli_works_through_the_tls_proxy(proxy, pki, server, digits):
    env = {k: v for k, v in os.environ.items()
           if k not in ("EQUIPRUNE_SERVER", "EQUIPRUNE_TLS_CA", "EQUIPRUNE_TOKEN", "EQUIPRUNE_TOKEN_FILE")}
    if _token(server):
        env["EQUIPRUNE_TOKEN"] = _token(server)
    cli = str(Path(sys.executable).with_name("equiprune"))
    done = subprocess.run([cli, "--server", f"localhost:{proxy.port}", "--tls-ca", str(pki["ca"]), "--json",
                           "artifacts", "--kind", "dataset"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert digits[0].artifact_id in done.stdout


def test_a_server_certificate_from_another_ca_is_refused(proxy, pki, server):
    access = proxy.folder / "access.log"
    calls_before = access.read_text().count("\n")
    with EquipruneClient(f"localhost:{proxy.port}", tls_ca=pki["other_ca"], token=_token(server), retries=0,
                         timeout=10) as client:
        with pytest.raises(EquipruneError) as refused:
            list(client.list_jobs(page_size=1))
    assert refused.value.code == grpc.StatusCode.UNAVAILABLE, refused.value
    # The handshake failed: no call reached nginx's HTTP/2 layer, let alone the server.
    assert access.read_text().count("\n") == calls_before


def test_plaintext_to_the_tls_port_gets_no_answer(proxy):
    with grpc.insecure_channel(f"127.0.0.1:{proxy.port}") as channel:
        list_jobs = channel.unary_unary("/equiprune.v1.JobService/ListJobs",
                                        request_serializer=jobs_pb2.ListJobsRequest.SerializeToString,
                                        response_deserializer=jobs_pb2.ListJobsResponse.FromString)
        with pytest.raises(grpc.RpcError) as failed:
            list_jobs(jobs_pb2.ListJobsRequest(page_size=1), timeout=10)
    assert failed.value.code() != grpc.StatusCode.OK


# ---------------------------------------------------------------------------- what nginx passes on
# Against an in-process gRPC server standing in for equiprune (no Ray): unit tier.

_METHOD = "/equiprune.v1.JobService/ListJobs"


class _Recorder(grpc.GenericRpcHandler):
    """Answers every unary call with the size of its request; keeps each call's metadata."""

    def __init__(self) -> None:
        self.metadata: list[dict[str, str]] = []

    def service(self, handler_call_details):
        def answer(request: bytes, context) -> bytes:
            self.metadata.append({k: v for k, v in context.invocation_metadata()})
            return str(len(request)).encode()

        return grpc.unary_unary_rpc_method_handler(answer)


@pytest.fixture
def fake_upstream():
    recorder = _Recorder()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2),
                         options=[("grpc.max_receive_message_length", 40 * MiB)])
    server.add_generic_rpc_handlers((recorder,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield port, recorder
    server.stop(None)


def _through(nginx: Nginx, ca: Path, request: bytes, metadata=()) -> bytes:
    credentials = grpc.ssl_channel_credentials(root_certificates=ca.read_bytes())
    with grpc.secure_channel(f"localhost:{nginx.port}", credentials,
                             options=[("grpc.max_send_message_length", 40 * MiB)]) as channel:
        return channel.unary_unary(_METHOD)(request, metadata=metadata, timeout=30)


def test_metadata_passes_and_the_client_address_is_forwarded(nginx_bin, pki, fake_upstream, tmp_path):
    port, recorder = fake_upstream
    nginx = Nginx(nginx_bin, tmp_path / "nginx", upstream=f"127.0.0.1:{port}", cert=pki["cert"],
                  key=pki["key"]).start()
    try:
        # A client's own X-Forwarded-For is replaced: nginx is the edge, it cannot be spoofed.
        answer = _through(nginx, pki["ca"], b"x", metadata=(("authorization", "Bearer ept_secret"),
                                                           ("x-forwarded-for", "203.0.113.9")))
        assert answer == b"1"
        # The largest request the service takes: a 32 MiB message.
        assert _through(nginx, pki["ca"], bytes(32 * MiB)) == str(32 * MiB).encode()
    finally:
        nginx.stop()
    seen = recorder.metadata[0]
    assert seen["authorization"] == "Bearer ept_secret"
    assert seen["x-forwarded-for"] == "127.0.0.1" and seen["x-real-ip"] == "127.0.0.1", seen
    assert seen["x-forwarded-proto"] == "https"
    assert "ept_secret" not in (nginx.folder / "access.log").read_text()


def _handshake(port: int, ca: Path, version: ssl.TLSVersion) -> tuple[str, str]:
    """(TLS version, ALPN protocol) of a handshake offering only `version` and `h2`."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(ca)
    context.set_ciphers("ALL:@SECLEVEL=0")  # so that this client can offer TLS 1.0 and 1.1 at all
    with warnings.catch_warnings():  # TLS 1.0 and 1.1 are deprecated: that is the point
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = context.maximum_version = version
    context.set_alpn_protocols(["h2"])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as tls:
        return tls.version(), tls.selected_alpn_protocol()


def test_only_tls_1_2_and_1_3_with_http2(nginx_bin, pki, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        old_versions = (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1)
    nginx = Nginx(nginx_bin, tmp_path / "nginx", upstream=f"127.0.0.1:{free_port()}", cert=pki["cert"],
                  key=pki["key"]).start()
    try:
        assert _handshake(nginx.port, pki["ca"], ssl.TLSVersion.TLSv1_2) == ("TLSv1.2", "h2")
        assert _handshake(nginx.port, pki["ca"], ssl.TLSVersion.TLSv1_3) == ("TLSv1.3", "h2")
        for version in old_versions:
            # The client offers it; nginx answers with a protocol_version alert. (With
            # `ssl_protocols` widened, the same client gets TLS 1.0 and 1.1 from this nginx.)
            with pytest.raises(ssl.SSLError, match="PROTOCOL_VERSION"):
                _handshake(nginx.port, pki["ca"], version)
    finally:
        nginx.stop()


def test_a_server_that_is_down_is_unavailable_through_the_proxy(nginx_bin, pki, tmp_path):
    nginx = Nginx(nginx_bin, tmp_path / "nginx", upstream=f"127.0.0.1:{free_port()}", cert=pki["cert"],
                  key=pki["key"]).start()
    try:
        with pytest.raises(grpc.RpcError) as failed:
            _through(nginx, pki["ca"], b"x")
    finally:
        nginx.stop()
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE, failed.value
