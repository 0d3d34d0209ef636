"""What `equiprune serve` does about credentials before it starts anything.

- The first admin: on the first start (or when the stored admin token no longer works) an
  admin tenant and token are created. The token is written, readable by its owner only, to
  `<data dir>/admin.token` and to the CLI's credentials file for the address the server
  listens on (client/equiprune/client/credentials.py), so `equiprune …` on this machine needs
  nothing more. The token itself is never printed or logged.
- Ray's own ports: the embedded Ray runs with RAY_AUTH_MODE=token and a random token kept in
  `<data dir>/ray.token` (0600). Its ports then refuse a client without the token (the GCS is
  tested); a cluster joined with --address keeps what its operator configured.
"""

from __future__ import annotations

import os
import secrets

from equiprune.client.credentials import credentials_file, read_token_file, write_token_file
from equiprune.client.errors import SpecError


def prepare_admin_token(settings) -> str:
    """Make sure an admin token exists and the CLI finds it; returns a line for the terminal."""
    from equiprune.service.factory import prepare_data_dir
    from equiprune.service.factory import tenant_store

    prepare_data_dir(settings)
    path = settings.admin_token_path
    try:
        existing = read_token_file(path) if path.exists() else None
    except SpecError:
        existing = None
    store = tenant_store(settings)
    try:
        issued = store.bootstrap(existing)
    finally:
        store.close()
    token = issued or existing
    if issued:
        write_token_file(path, token)
    target = f"{settings.host}:{settings.grpc_port}"
    for_cli = credentials_file(target)
    write_token_file(for_cli, token)
    what = "a new admin token was created" if issued else "admin token"
    return f"{what}: {path} (also in {for_cli}, where `equiprune` on this machine finds it)"


def embedded_ray_auth(settings) -> None:
    """Token authentication on the embedded Ray's ports (the environment Ray starts with)."""
    path = settings.ray_token_path
    if not path.exists():
        write_token_file(path, secrets.token_hex(32))
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(path)
    os.environ.pop("RAY_AUTH_TOKEN", None)
