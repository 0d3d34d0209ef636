"""The tenant commands of `equiprune`: whoami, and for admin tokens tenants and tokens.

    equiprune whoami
    equiprune tenants                                   # list
    equiprune tenants create acme --max-concurrent-jobs 2 --max-stored-gib 50
    equiprune tenants quotas acme --max-upload-sessions 4
    equiprune tokens create acme --label "ci of team acme" --out acme.token
    equiprune tokens [--tenant acme]
    equiprune tokens revoke tok-0123456789abcdef

A token's secret is shown once: `tokens create` writes it to --out (readable by you only) or,
without --out, prints it alone on stdout so that it can be piped.
"""

from __future__ import annotations

from pathlib import Path

from .credentials import write_token_file
from .runner import EXIT_OK, EXIT_USAGE, Output, to_dict
from .sdk import EquipruneClient
from .tenants import quotas_message

GiB = 1024**3
_ROLE_NAMES = {0: "-", 1: "tenant", 2: "admin"}


def add_commands(command, sub, shared) -> None:
    command("whoami", _whoami, "the tenant your token acts for, its quotas and what it holds")
    tenants = command("tenants", _tenants, "list tenants, or create one / change its quotas (admin token)")
    tenants.add_argument("action", nargs="?", choices=["list", "create", "quotas"], default="list")
    tenants.add_argument("name", nargs="?", help="the tenant (create, quotas)")
    tenants.add_argument("--role", choices=["tenant", "admin"], default="tenant", help="create: its role")
    _quota_options(tenants)
    tokens = command("tokens", _tokens, "list tokens, or create / revoke one (admin token)")
    tokens.add_argument("action", nargs="?", choices=["list", "create", "revoke"], default="list")
    tokens.add_argument("subject", nargs="?", help="create: the tenant; revoke: the token id (tok-…)")
    tokens.add_argument("--tenant", default="", help="list: only this tenant's tokens")
    tokens.add_argument("--label", default="", help="create: words to recognise it by")
    tokens.add_argument("--out", help="create: write the secret to this file (0600) instead of stdout")


def _quota_options(parser) -> None:
    parser.add_argument("--max-concurrent-jobs", type=int, help="jobs queued or running at once (default 4)")
    parser.add_argument("--max-stored-gib", type=float, help="GiB of artifacts plus open uploads (default 100)")
    parser.add_argument("--max-upload-sessions", type=int, help="upload sessions open at once (default 16)")


def _quotas(args):
    stored = None if args.max_stored_gib is None else int(args.max_stored_gib * GiB)
    return quotas_message(args.max_concurrent_jobs, stored, args.max_upload_sessions)


def _whoami(client: EquipruneClient, args, out: Output) -> int:
    reply = client.whoami()
    out.document(to_dict(reply))
    t, u, q = reply.tenant, reply.usage, reply.tenant.quotas
    out.say(f"tenant {t.name} ({_ROLE_NAMES.get(t.role, t.role)})")
    out.say(f"  jobs queued or running  {u.unfinished_jobs} of {q.max_concurrent_jobs}")
    out.say(f"  stored                  {u.stored_bytes / GiB:.2f} GiB + {u.announced_upload_bytes / GiB:.2f} GiB "
            f"announced by open uploads, of {q.max_stored_bytes / GiB:.2f} GiB")
    out.say(f"  open upload sessions    {u.open_upload_sessions} of {q.max_upload_sessions}")
    return EXIT_OK


def _tenants(client: EquipruneClient, args, out: Output) -> int:
    if args.action in ("create", "quotas") and not args.name:
        out.warn(f"error: name: `tenants {args.action}` needs the tenant's name")
        return EXIT_USAGE
    if args.action == "create":
        tenants = [client.create_tenant(args.name, args.role, quotas=_quotas(args))]
    elif args.action == "quotas":
        tenants = [client.update_tenant_quotas(args.name, _quotas(args))]
    else:
        tenants = client.list_tenants()
    out.document([to_dict(t) for t in tenants])
    out.say(f"{'TENANT':<33} {'ROLE':<7} {'JOBS':>5} {'STORED GiB':>11} {'UPLOADS':>8}")
    for t in tenants:
        q = t.quotas
        out.say(f"{t.name:<33} {_ROLE_NAMES.get(t.role, t.role):<7} {q.max_concurrent_jobs:>5} "
                f"{q.max_stored_bytes / GiB:>11.1f} {q.max_upload_sessions:>8}")
    return EXIT_OK


def _tokens(client: EquipruneClient, args, out: Output) -> int:
    if args.action in ("create", "revoke") and not args.subject:
        out.warn(f"error: subject: `tokens {args.action}` needs the {'tenant' if args.action == 'create' else 'token id'}")
        return EXIT_USAGE
    if args.action == "create":
        reply = client.create_token(args.subject, args.label)
        if args.out:
            write_token_file(Path(args.out), reply.secret)
            out.warn(f"token {reply.token.token_id} for tenant {reply.token.tenant} written to {args.out}")
        else:
            out.warn(f"token {reply.token.token_id} for tenant {reply.token.tenant} (shown this once):")
            print(reply.secret, file=out.stdout, flush=True)
        return EXIT_OK
    tokens = [client.revoke_token(args.subject)] if args.action == "revoke" else client.list_tokens(args.tenant)
    out.document([to_dict(t) for t in tokens])
    out.say(f"{'TOKEN':<21} {'TENANT':<20} {'STATE':<8} LABEL")
    for t in tokens:
        out.say(f"{t.token_id:<21} {t.tenant:<20} {'revoked' if t.HasField('revoke_time') else 'live':<8} {t.label}")
    return EXIT_OK
