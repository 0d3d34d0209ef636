"""Run any command confined as a sandboxed worker is (`confine.enter` and `confine.drop`):

    python -m equiprune.service.sandbox.confined '<limits json>' <work dir> [uid base] -- command...

Prints the isolation achieved (JSON) on stderr, then becomes the command. The tests use it to
show what a payload's shell command could and could not reach; operators can use it to check
a host.
"""

from __future__ import annotations

import json
import os
import sys

from equiprune.service.sandbox.confine import PRIVATE_TMP, SANDBOX_HOME, Limits, drop, enter


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--")
    settings, command = argv[:split], argv[split + 1:]
    limits, work_dir = Limits.from_json(json.loads(settings[0])), settings[1]
    uid_base = int(settings[2]) if len(settings) > 2 else 2**20
    isolation = drop(enter(limits, work_dir, {0, 1, 2}, parent_pid=os.getppid()), uid_base)
    os.environ.update(TMPDIR=PRIVATE_TMP, HOME=SANDBOX_HOME if isolation.private_tmp else work_dir)
    print(json.dumps(isolation.to_json()), file=sys.stderr, flush=True)
    os.execvp(command[0], command)
    return 127  # pragma: no cover - execvp does not return


if __name__ == "__main__":
    sys.exit(main())
