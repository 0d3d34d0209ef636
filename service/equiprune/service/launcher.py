"""`equiprune serve`: the whole service on one machine with one command, or joined to a cluster.

Embedded default: an in-process Ray (no dashboard), Serve with the gRPC API on the chosen
port, the SQLite job store and the artifact folder under --data-dir. `--address` joins an
existing Ray cluster instead (then the artifact root should be shared storage, see
docs/service.md). Stops cleanly on Ctrl-C or SIGTERM; jobs still running then are resumed at
the next start.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
import time
from pathlib import Path

GRPC_MAX_MESSAGE_BYTES = 32 * 1024 * 1024  # the largest request we accept: 100,000 outcomes


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="equiprune serve", description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, default=9000, help="gRPC port (default 9000)")
    p.add_argument("--http-port", type=int, default=8000, help="Serve's HTTP proxy port (default 8000)")
    p.add_argument("--metrics-port", type=int, default=9464, help="the monitor's Prometheus exporter port (default 9464)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address the gRPC API, Serve's HTTP proxy and the metrics exporter listen on (default "
                        "127.0.0.1: this machine only; to serve other machines, put the TLS proxy of deploy/tls "
                        "in front rather than exposing the plaintext port)")
    p.add_argument("--data-dir", default=os.environ.get("EQUIPRUNE_DATA_DIR", "equiprune-data"),
                   help="job database, artifacts and job folders (default ./equiprune-data)")
    p.add_argument("--artifact-root", default=None, help="local folder or fsspec URL for artifacts (default <data-dir>/artifacts)")
    p.add_argument("--allow-import", action="append", default=[], metavar="DIR",
                   help="a local folder ImportArtifact may read from (repeatable; none by default)")
    p.add_argument("--allow-import-protocol", action="append", default=[], metavar="PROTO",
                   help="a remote protocol ImportArtifact may fetch from, e.g. https or s3 "
                        "(repeatable; none by default)")
    p.add_argument("--allow-private-imports", action="store_true",
                   help="let http(s) imports reach loopback, private and link-local addresses (off by default)")
    p.add_argument("--sandbox-isolation", choices=["full", "limits-only"], default="full",
                   help="full (default): each sandboxed worker runs as a user of its own without network, which "
                        "needs root; limits-only: resource limits alone, for unprivileged hosts (weaker)")
    p.add_argument("--address", default=None, help="join this Ray cluster (e.g. ray://head:10001 or auto) instead of starting one")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs the embedded Ray may use (default: all)")
    p.add_argument("--num-gpus", type=int, default=None, help="GPUs the embedded Ray may use (default: all it finds)")
    return p


def settings_from_args(args: argparse.Namespace):
    """The ServerSettings the command line asks for (raises pydantic's ValidationError)."""
    from equiprune.service.settings import ServerSettings

    return ServerSettings(data_dir=Path(args.data_dir), host=args.host, grpc_port=args.port,
                          http_port=args.http_port, metrics_port=args.metrics_port,
                          artifact_root=args.artifact_root,
                          import_roots=tuple(Path(p) for p in args.allow_import),
                          import_protocols=tuple(args.allow_import_protocol),
                          import_allow_private_addresses=args.allow_private_imports,
                          sandbox_isolation=args.sandbox_isolation)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from pydantic import ValidationError

    try:
        settings = settings_from_args(args)
    except ValidationError as err:
        first = err.errors()[0]
        print(f"error: {'.'.join(map(str, first['loc']))}: {first['msg']}", file=sys.stderr)
        return 2
    # Before anything imports Ray: Ray reads RAY_AUTH_MODE when it is imported.
    from equiprune.service.tenants.bootstrap import embedded_ray_auth, prepare_admin_token

    print(prepare_admin_token(settings), flush=True)
    if args.address is None:
        embedded_ray_auth(settings)
    from equiprune.service.sandbox.startup import SandboxUnsafe, check_sandbox

    try:
        print(check_sandbox(settings), flush=True)
    except SandboxUnsafe as err:
        print(f"error: {err}. Run the service as root (each sandboxed worker then gets a user of its own and no "
              "network), or accept weaker isolation with --sandbox-isolation limits-only (docs/security.md)",
              file=sys.stderr)
        return 2
    try:
        start(settings, address=args.address, num_cpus=args.num_cpus, num_gpus=args.num_gpus)
    except KeyboardInterrupt:
        # Ctrl-C while Ray and Serve start: stop what has started, without a traceback.
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut this short
        print("stopping", flush=True)
        shutdown()
        print("stopped", flush=True)
        return 130  # the shell's code for a command ended by SIGINT
    follow_incidents(incident_log(settings))
    # After ray.init: Ray installs its own SIGTERM handler, which would end the process
    # without the orderly shutdown below (monitor state saved, Serve stopped).
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    print(f"equiprune is serving gRPC on {settings.host}:{settings.grpc_port}, Prometheus metrics on "
          f"http://{settings.host}:{settings.metrics_port}/metrics (data in {settings.data_dir}; Ctrl-C stops it)",
          flush=True)
    stop.wait()
    print("stopping", flush=True)
    shutdown(settings.application_name)
    print("stopped", flush=True)
    return 0


def start(settings, *, address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None) -> None:
    """Start (or join) Ray, start Serve with the gRPC proxy, and run the application."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Serve's gRPC proxy accepts messages up to 2 GiB by default, and our limits (2 MiB upload
    # chunks, 1,024 instances, 100,000 outcomes) would only apply after one had been read into
    # memory. The proxy inherits this from the environment Ray starts with.
    os.environ.setdefault("RAY_SERVE_GRPC_MAX_MESSAGE_SIZE", str(GRPC_MAX_MESSAGE_BYTES))
    import ray
    from ray import serve
    from ray.serve.config import gRPCOptions

    from equiprune.service.app import GRPC_SERVICER_FUNCTIONS, build_app
    from equiprune.service.rpc import bind

    from equiprune.client import incidents

    # Serve's gRPC proxy would listen on every interface: rpc/bind.py makes it use settings.host.
    os.environ[bind.HOST_VARIABLE] = settings.host
    # Every process records its incidents in the data folder's incident log (errors.py).
    os.environ[incidents.LOG_VARIABLE] = str(incident_log(settings))
    # The variables travel in the runtime env: raylets of a joined cluster were started
    # without this process's environment.
    runtime_env = {"worker_process_setup_hook": bind.HOOK,
                   "env_vars": {bind.HOST_VARIABLE: settings.host,
                                incidents.LOG_VARIABLE: os.environ[incidents.LOG_VARIABLE]}}
    if address is None:
        # main() made Ray's own ports require a token (tenants/bootstrap.py); a caller of
        # start() without main() decides in the environment.
        with _ray_processes_in_sessions_of_their_own():
            ray.init(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False, namespace="equiprune",
                     log_to_driver=False, runtime_env=runtime_env)
        _remember_ray_sessions()
    else:
        ray.init(address=address, namespace="equiprune", log_to_driver=False, runtime_env=runtime_env)
    serve.start(http_options={"host": settings.host, "port": settings.http_port},
                grpc_options=gRPCOptions(port=settings.grpc_port, grpc_servicer_functions=GRPC_SERVICER_FUNCTIONS))
    serve.run(build_app(settings), name=settings.application_name, blocking=False)


def incident_log(settings) -> Path:
    from equiprune.client import incidents

    return incidents.log_path(Path(settings.data_dir).resolve())


def follow_incidents(path: Path, interval_s: float = 1.0, stream=None) -> threading.Thread:
    """Print a line on this terminal for every incident recorded from now on: the workers'
    logs go to Ray's files, so this is where an operator sees them."""
    from equiprune.client import incidents

    def offset() -> int:
        try:
            return path.stat().st_size
        except OSError:
            return 0

    def tail(position: int) -> None:
        pending = b""
        while True:
            time.sleep(interval_s)
            size = offset()
            if size < position:  # the file was replaced
                position, pending = 0, b""
            if size == position:
                continue
            try:
                with open(path, "rb") as f:
                    f.seek(position)
                    chunk = f.read(size - position)
            except OSError:
                continue
            position += len(chunk)
            pending += chunk
            text = pending.decode("utf-8", errors="replace")
            done = text.rfind("\n" + incidents.END)
            if done < 0:
                continue
            cut = text.find("\n", done + 1) + 1
            for found in incidents.parse(text[:cut]):
                print(f"incident {found.ident}: {found.exception} (in {found.where}); `equiprune incident "
                      f"{found.ident}` or {path} has the traceback", file=stream or sys.stderr, flush=True)
            pending = text[cut:].encode("utf-8")

    thread = threading.Thread(target=tail, args=(offset(),), name="incidents", daemon=True)
    thread.start()
    return thread


# Each last-word call answers in well under a second; together they may take this long.
LAST_WORDS_S = 4.0
# How long a cluster's Serve gets to stop the application before the launcher leaves it to
# finish there on its own (replicas holding open streams wait out their grace period).
SERVE_SHUTDOWN_S = 3.0


def shutdown(application_name: str | None = None) -> None:
    """Stop within seconds (SIGTERM → exit in about 5 s): the jobs are stopped (left RUNNING, so
    the next start resumes them from their checkpoints) and the monitor saved, then Ray goes.

    Serve's own graceful stop is not waited for: a replica with an open stream (a Watch or Wait
    long-poll) holds it for its whole grace period, 20 s, and the stop is ordered, so it took
    30 s and more. The embedded Ray ends every process of its own with `ray.shutdown()` (and
    what outlives it is killed); joined to a cluster, Serve is stopped there, waiting at most
    SERVE_SHUTDOWN_S for it. A stop without failures prints nothing here: main()'s "stopping"
    and "stopped" are all the operator sees (tests/service/test_quiet_shutdown_e2e.py)."""
    import logging

    import ray
    from ray import serve

    log = logging.getLogger("equiprune.service")
    # The handles below start a Serve router in this process, which Serve announces at INFO
    # ("Started <…SharedRouterLongPollClient…>"): an internal detail, not the operator's business
    # while the server stops. Serve's warnings and errors still show.
    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    try:
        if application_name is not None:
            # Replicas are not guaranteed a last word when Serve stops: stop the jobs (they
            # resume at the next start) and save the monitor first, both at once.
            calls = []
            for deployment, method in (("JobManager", "stop_jobs"), ("MonitorService", "flush")):
                try:
                    handle = serve.get_deployment_handle(deployment, application_name)
                    calls.append((deployment, method, getattr(handle, method).remote()))
                except Exception:  # noqa: BLE001 - stopping must go on
                    log.exception("%s.%s failed on shutdown", deployment, method)
            deadline = time.monotonic() + LAST_WORDS_S
            for deployment, method, response in calls:
                try:
                    response.result(timeout_s=max(0.1, deadline - time.monotonic()))
                except Exception:  # noqa: BLE001 - stopping must go on
                    log.exception("%s.%s failed on shutdown", deployment, method)
        # Not connected (Ctrl-C within ray.init): Serve's client would start a Ray of its own.
        if ray.is_initialized() and not _owns_ray():
            _stop_serve(SERVE_SHUTDOWN_S)
    finally:
        ray.shutdown()
        _end_ray_leftovers()


# The sessions the embedded Ray's own processes lead (start() fills it): the GCS, the raylet with
# every worker and agent it starts, the autoscaler's monitor, the log monitor, the dashboard's.
_RAY_SESSIONS: set[int] = set()


@contextlib.contextmanager
def _ray_processes_in_sessions_of_their_own():
    """While ray.init starts the embedded Ray, every process it starts leads a session of its own.

    Otherwise they share the launcher's process group, and a signal to the group (a terminal's
    Ctrl-C, `kill -TERM -PGID`) reaches the GCS and the raylet together with the launcher: they
    ended while the launcher still asked the jobs to stop and the monitor to flush, and it then
    waited 60 s for the gone GCS and exited 1 with Ray's error. Now only the launcher hears it,
    and stops them in order. Ray does the same on Windows (a process group of their own) where
    they die with their parent; on Linux they do too (Ray's fate sharing, PR_SET_PDEATHSIG), so a
    SIGKILL of the launcher still takes them with it. Ray 2.60 starts each of them through
    services.ConsolePopen and has no option for this."""
    from ray._private import services, utils

    original = services.ConsolePopen
    if not sys.platform.startswith("linux") or not utils.detect_fate_sharing_support():
        yield
        return

    class Popen(original):
        def __init__(self, *args, **kwargs):
            kwargs["start_new_session"] = True
            super().__init__(*args, **kwargs)

    services.ConsolePopen = Popen
    try:
        yield
    finally:
        services.ConsolePopen = original


def _remember_ray_sessions() -> None:
    from ray._private import worker

    node = getattr(worker, "_global_node", None)
    for infos in node.all_processes.values() if node is not None else ():
        for info in infos:
            if _session_of(info.process.pid) == info.process.pid:
                _RAY_SESSIONS.add(info.process.pid)


def _session_of(pid: int) -> int | None:
    """The session id of a live process (None: gone, or a zombie waiting to be reaped)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state, _ppid, _pgrp, session = f.read().rsplit(b")", 1)[1].split()[:4]
    except (OSError, ValueError):
        return None
    return None if state == b"Z" else int(session)


def _ray_leftovers() -> list[int]:
    """The live processes of the embedded Ray's sessions."""
    if not _RAY_SESSIONS:
        return []
    pids = (int(name) for name in os.listdir("/proc") if name.isdigit())
    return [pid for pid in pids if _session_of(pid) in _RAY_SESSIONS]


def _end_ray_leftovers() -> None:
    """SIGKILL what of the embedded Ray outlived ray.shutdown(). It ends the raylet (SIGTERM, then
    SIGKILL after 1 s) and the GCS, but a worker whose raylet had to be killed is left to notice
    on its own: two idle workers were still running 2 s after the launcher had exited. Nothing of
    that Ray has work left by now (the jobs were stopped, the monitor saved)."""
    for pid in _ray_leftovers():
        try:
            # A pidfd names this process even if the pid is reused before the signal is sent.
            fd = os.pidfd_open(pid)
        except OSError:
            continue
        try:
            if _session_of(pid) in _RAY_SESSIONS:
                signal.pidfd_send_signal(fd, signal.SIGKILL)
        except OSError:
            pass
        finally:
            os.close(fd)


def _owns_ray() -> bool:
    """Whether this process started the Ray it is connected to (the embedded default)."""
    from ray._private import worker

    node = getattr(worker, "_global_node", None)
    return bool(node is not None and node.is_head())


def _stop_serve(timeout_s: float) -> None:
    """Ask a cluster's Serve to stop, and wait at most timeout_s for its controller to end.

    Not Serve's client.shutdown(): it waits on a graceful_shutdown call that the controller
    answers only by ending itself with ray.kill, and Ray then printed "Task
    ServeController.graceful_shutdown failed … killed by `ray.kill`" here (or Serve warned that
    the controller had not stopped within timeout_s). Asked with wait=False, the call returns
    once the controller has taken the order, and its end is watched by its name."""
    import ray
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE
    from ray.serve.context import _get_global_client

    deadline = time.monotonic() + timeout_s
    try:
        controller = _get_global_client()._controller
        ray.get(controller.graceful_shutdown.remote(wait=False), timeout=timeout_s)
    except Exception:  # noqa: BLE001 - no Serve there, or one that did not take the order
        return
    while time.monotonic() < deadline:
        try:
            ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
        except ValueError:  # gone
            return
        time.sleep(0.1)


if __name__ == "__main__":
    sys.exit(main())
