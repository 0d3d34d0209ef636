"""Bind Serve's gRPC proxy to the configured host, not every interface.

Ray Serve 2.60 binds its gRPC proxy to `[::]:<port>` whatever the HTTP options say
(ray/serve/_private/grpc_util.py `start_grpc_server` → `default_impl.add_grpc_address`), so
`equiprune serve` on a laptop would listen on every network it joins. The proxy is a Ray
actor: this function runs in every worker process of the application's job (Ray's
`worker_process_setup_hook`, set by the launcher), before any proxy starts, and replaces that
address's host with EQUIPRUNE_GRPC_HOST (set in the job's runtime env, so it also reaches the
workers of a joined cluster). tests/service/test_tenants_e2e.py
(`test_the_grpc_port_listens_on_loopback_only`) checks the socket really listens on loopback
only, so a Ray upgrade that moves the call fails a test rather than silently opening the port.
"""

from __future__ import annotations

import os

HOST_VARIABLE = "EQUIPRUNE_GRPC_HOST"
HOOK = "equiprune.service.rpc.bind.bind_grpc_proxy"


def bind_grpc_proxy() -> None:
    host = os.environ.get(HOST_VARIABLE)
    if not host:
        return
    try:
        from ray.serve._private import default_impl
    except ImportError:  # not a Serve process; nothing to bind
        return
    if getattr(default_impl.add_grpc_address, "_equiprune_host", None) == host:
        return
    original = default_impl.add_grpc_address

    def add_grpc_address(grpc_server, server_address: str) -> None:
        port = server_address.rsplit(":", 1)[1]
        original(grpc_server, f"[{host}]:{port}" if ":" in host else f"{host}:{port}")

    add_grpc_address._equiprune_host = host
    default_impl.add_grpc_address = add_grpc_address
