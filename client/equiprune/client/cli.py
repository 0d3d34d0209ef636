"""`equiprune`: the command-line client of an equiprune server.

    equiprune serve                                   # start a server (needs the `server` extra)
    equiprune demo                                    # the whole story on scikit-learn's digits
    equiprune demo --deploy digits                    # serve the model the demo built
    equiprune upload dense.safetensors --kind model
    equiprune prune-finetune --model art-1f2e --dataset sample:digits --group-by cohort \\
        --sparsity 0.9 --epochs 3 --tolerance 2           # ε in percentage points
    equiprune budget --model art-1f2e --dataset art-77aa --group-by race --plot sweep.png
    equiprune jobs --state running
    equiprune job watch job-3c9d
    equiprune deploy digits --model art-9a0b --group-by cohort --reference-job job-3c9d
    equiprune traffic --dataset sample:digits --out requests.jsonl   # Predict instances from a dataset
    equiprune predict digits --instances requests.jsonl --out predictions.jsonl
    equiprune outcomes --from predictions.jsonl       # once the true labels are known
    equiprune metrics digits --window 1h              # per-group accuracy, ψ_g, confidence
    equiprune whoami                                  # your tenant, quotas and usage
    equiprune tenants create acme; equiprune tokens create acme --out acme.token   # admin
    equiprune incident 3f2a9c81d0e4                   # an INTERNAL error's traceback (on the server)

Every call sends an API token: --token, --token-file, $EQUIPRUNE_TOKEN, or (on the machine
that runs `equiprune serve`) the admin token it wrote on its first start, found by itself.
--tls-ca PEM connects over TLS through the proxy of deploy/tls.

--model and --dataset take an artifact id (art-…) or a URI the server imports (sample:digits,
a path under the server's import roots, s3://…; give --model-sha256/--dataset-sha256 for
anything but sample:). Global options (--server, --timeout, --retries, --wait-for-server,
--json) may come before or after the command. A server that is still starting is waited for
(--wait-for-server, default 120 s) before the command runs. --json prints one JSON document on stdout (proto field names).

Exit codes: 0 success; 1 the job failed or was cancelled (or the server failed); 2 a usage or
validation error (`error: <field>: <problem>`); 3 the server could not be reached.
"""

# The docstring above is the --help text. The commands live by area in artifact_commands,
# job_commands, submit_commands and serving_commands; this module is the entry point: global
# options, the parser, `serve`, `demo` and how errors become exit codes.

from __future__ import annotations

import argparse
import os
import sys

import grpc

from .credentials import open_channel, read_token_file
from .demo import DEFAULT_SPARSITY as DEMO_SPARSITY
from .errors import EquipruneError, SpecError
from .retry import RetryPolicy
from .runner import EXIT_JOB_FAILED, EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE, Output
from .sdk import DEFAULT_TARGET, EquipruneClient, checked_timeout
from .submit_commands import spec_from_args
from . import artifact_commands, job_commands, serving_commands, submit_commands, tenant_commands

__all__ = ["SERVE_MISSING", "build_parser", "main", "spec_from_args"]

SERVE_MISSING = "equiprune serve needs the server extra: pip install 'equiprune[server]'"
# Global options that take a value, for finding the command word before argparse runs.
_GLOBAL_WITH_VALUE = ("--server", "--timeout", "--retries", "--token", "--token-file", "--tls-ca",
                      "--wait-for-server")
_USAGE_CODES = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.ALREADY_EXISTS,
                grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.OUT_OF_RANGE,
                grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.PERMISSION_DENIED,
                grpc.StatusCode.UNAUTHENTICATED}
_UNREACHABLE_CODES = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    serve_argv = _serve_arguments(argv)
    if serve_argv is not None:
        return _serve(serve_argv)
    args = build_parser().parse_args(argv)
    out = Output(json=args.json)
    if getattr(args, "local", None) is not None:  # a command that reads local files only
        return args.local(args, out)
    try:
        # Wait first, on a channel without a token (health needs none): a server's first start
        # writes the admin token this machine's CLI finds, so it is looked up only once the
        # server answers (`equiprune demo` typed right after `equiprune serve`).
        _check_options(args)  # a usage error is said at once, not after the wait
        with open_channel(args.server, [], tls_ca=args.tls_ca) as channel:
            wait_for_server(channel, args.server, args.wait_for_server, out)
        with EquipruneClient(args.server, timeout=args.timeout, retries=args.retries, token=args.token,
                             token_file=args.token_file, tls_ca=args.tls_ca) as client:
            return args.handler(client, args, out)
    except SpecError as err:
        out.warn(f"error: {err.field}: {err.problem}")
        return EXIT_USAGE
    except EquipruneError as err:
        return _report_error(err, args.server, args.timeout, out)
    except BrokenPipeError:  # `equiprune jobs | head`: the reader left; say nothing more
        _silence_stdout()
        return EXIT_JOB_FAILED
    except OSError as err:  # a local file: unreadable, unwritable, disk full
        out.warn(f"error: {err}")
        return EXIT_JOB_FAILED
    except KeyboardInterrupt:
        return 130


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that flushing it at exit raises no second BrokenPipeError."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


def _check_options(args) -> None:
    """The global options the client takes, checked as EquipruneClient checks them (SpecError),
    and an explicit token file read: everything but the token found by itself, which a
    starting server may not have written yet."""
    checked_timeout(args.timeout)
    RetryPolicy(retries=args.retries)
    if args.token_file:
        read_token_file(args.token_file)


_HEALTH_CHECK = "/grpc.health.v1.Health/Check"
_PROBE_S = 2.0
_CONNECT_S = 0.5


def wait_for_server(channel: grpc.Channel, server: str, bound_s: float, out: Output) -> bool:
    """Wait up to `bound_s` seconds for a server that is still starting: until it accepts a
    connection and its health check (no token needed) answers, or answers anything but
    UNAVAILABLE, DEADLINE_EXCEEDED or NOT_FOUND (an application still deploying). One
    line on stderr says so, and only when it has to wait. Returns whether it answered; when it
    did not, the command goes on and fails as it would have."""
    import time

    deadline = time.monotonic() + max(0.0, bound_s)
    check = channel.unary_unary(_HEALTH_CHECK, request_serializer=lambda _: b"",
                                response_deserializer=lambda raw: raw)
    said = False
    while True:
        started = time.monotonic()
        try:
            grpc.channel_ready_future(channel).result(timeout=min(_CONNECT_S, max(0.05, deadline - started)))
            check(None, timeout=_PROBE_S)
            return True
        except grpc.FutureTimeoutError:
            pass
        except grpc.RpcError as err:
            # Serve's proxy answers DEADLINE_EXCEEDED or NOT_FOUND while the application deploys.
            if err.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                                  grpc.StatusCode.NOT_FOUND):
                return True  # it answers (UNIMPLEMENTED: no health service): the command will say the rest
        if time.monotonic() >= deadline:
            return False
        if not said:
            out.warn(f"waiting for the equiprune server at {server} to start… (Ctrl-C to stop)")
            said = True
        time.sleep(max(0.0, min(0.5 - (time.monotonic() - started), deadline - time.monotonic())))


def _incident(args, out: Output) -> int:
    """`equiprune incident ID`: the record of an INTERNAL error, from the server's data folder."""
    from . import incidents

    path = incidents.log_path(args.data_dir)
    found = incidents.find(path, args.incident)
    if found is None:
        out.warn(f"error: no incident {args.incident} in {path} (run this on the server's machine; "
                 f"--data-dir names the server's data folder)")
        return EXIT_USAGE
    header, body = found
    if args.json:
        import json

        print(json.dumps({"incident": header.split()[1], "record": header, "traceback": body}))
    else:
        print(header)
        print(body)
    return EXIT_OK


def _report_error(err: EquipruneError, server: str, timeout: float, out: Output) -> int:
    if err.code in _UNREACHABLE_CODES:
        why = "did not answer in time" if err.code == grpc.StatusCode.DEADLINE_EXCEEDED else "is unreachable"
        out.warn(f"error: the equiprune server at {server} {why} ({err.code.name}: {err.message}).\n"
                 f"Is it running? Start one with `equiprune serve`, or point --server (or EQUIPRUNE_SERVER) "
                 f"at it; --timeout (now {timeout:g} s) sets how long a call may take.")
        return EXIT_UNREACHABLE
    if err.code in _USAGE_CODES:
        out.warn(f"error: {err.field}: {err.problem}" if err.field else f"error: {err.message}")
        return EXIT_USAGE
    out.warn(f"error: {err.code.name}: {err.message}")
    return EXIT_JOB_FAILED


# ------------------------------------------------------------------ serve

def _serve_arguments(argv: list[str]) -> list[str] | None:
    """The arguments after `serve` when the command is `serve`, else None."""
    i = 0
    while i < len(argv):
        token = argv[i]
        if token in _GLOBAL_WITH_VALUE:
            i += 2
        elif token.startswith("-"):
            i += 1
        else:
            return argv[i + 1:] if token == "serve" else None
    return None


def _serve(argv: list[str]) -> int:
    try:
        from equiprune.service.launcher import main as launch
    except ImportError as err:
        print(SERVE_MISSING, file=sys.stderr)
        print(f"({err})", file=sys.stderr)
        return EXIT_USAGE
    return launch(argv) or EXIT_OK


# ------------------------------------------------------------------ the parser

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="equiprune", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    _global_options(parser, suppress=False)
    shared = argparse.ArgumentParser(add_help=False)
    _global_options(shared, suppress=True)
    sub = parser.add_subparsers(metavar="command", required=True)

    def command(name: str, handler, helptext: str) -> argparse.ArgumentParser:
        cmd = sub.add_parser(name, help=helptext, description=helptext, parents=[shared])
        if handler is not None:
            cmd.set_defaults(handler=handler)
        return cmd

    sub.add_parser("serve", help="start a server (arguments go to the server's launcher)", add_help=False)
    artifact_commands.add_commands(command)
    job_commands.add_commands(command, sub, shared)
    submit_commands.add_commands(command)
    serving_commands.add_commands(command)
    tenant_commands.add_commands(command, sub, shared)
    incident = command("incident", None, "print an INTERNAL error's traceback from the server's incident log "
                       "(run on the server's machine; reads local files only)")
    incident.add_argument("incident", metavar="ID", help="the incident id the error message named")
    incident.add_argument("--data-dir", default=os.environ.get("EQUIPRUNE_DATA_DIR", "equiprune-data"),
                          help="the server's data folder (default: $EQUIPRUNE_DATA_DIR or ./equiprune-data, as "
                               "`equiprune serve`)")
    incident.set_defaults(local=_incident)
    demo = command("demo", _demo, "the whole story against a running server: train, prune, repair naively and "
                   "fairly, compare per group, with a verdict and a picture")
    demo.add_argument("--dataset", help="local .npz to upload instead of the digits sample")
    demo.add_argument("--group-by", action="append", help="group attribute of --dataset (repeatable)")
    demo.add_argument("--arch", help="architecture to train (default for digits: mlp; required with --dataset)")
    demo.add_argument("--arch-kwargs", help="JSON object of architecture keyword arguments")
    demo.add_argument("--sparsity", type=float, default=DEMO_SPARSITY, help=f"default {DEMO_SPARSITY}")
    demo.add_argument("--out", default="runs/demo", help="folder for the model, report, groups.png and demo.json "
                      "(default: runs/demo)")
    demo.add_argument("--deploy", metavar="NAME", help="serve the model the last demo in --out built under NAME "
                      "(its dense model as shadow, its dense report as reference); runs the demo first when "
                      "there is none on this server")
    return parser


def _global_options(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """The options every command takes, before or after the command word. Subcommands get
    them with SUPPRESS defaults, so one given before the command is not reset after it."""
    def default(value):
        return argparse.SUPPRESS if suppress else value

    parser.add_argument("--server", metavar="HOST:PORT",
                        default=default(os.environ.get("EQUIPRUNE_SERVER", DEFAULT_TARGET)),
                        help=f"server address (default: $EQUIPRUNE_SERVER or {DEFAULT_TARGET})")
    parser.add_argument("--timeout", type=float, metavar="SECONDS", default=default(30.0),
                        help="deadline of each call (default: 30)")
    parser.add_argument("--retries", type=int, default=default(5),
                        help="retries of a call when the server is unavailable (default: 5)")
    parser.add_argument("--token", default=default(None), metavar="TOKEN",
                        help="API token (default: $EQUIPRUNE_TOKEN, or the one `equiprune serve` wrote for "
                             "this server on this machine; see `equiprune whoami`)")
    parser.add_argument("--token-file", default=default(None), metavar="FILE",
                        help="read the API token from FILE (default: $EQUIPRUNE_TOKEN_FILE)")
    parser.add_argument("--tls-ca", default=default(os.environ.get("EQUIPRUNE_TLS_CA")), metavar="PEM",
                        help="connect over TLS, trusting this CA (default: $EQUIPRUNE_TLS_CA; plaintext if unset)")
    parser.add_argument("--wait-for-server", type=float, metavar="SECONDS", default=default(120.0),
                        help="wait this long for a server that is still starting (default: 120; 0: not at all)")
    parser.add_argument("--json", action="store_true", default=default(False),
                        help="print one JSON document on stdout instead of tables")


def _demo(client: EquipruneClient, args, out: Output) -> int:
    from .demo import run_demo

    return run_demo(client, args, out)


if __name__ == "__main__":
    sys.exit(main())
