"""Confining the current process before it touches a client's bytes. Standard library only.

A sandboxed process starts as the service's own user (root in the container) and confines
itself in two steps, because the Python it runs lives in directories only that user can read:

`enter` (still privileged): resource limits (memory as RLIMIT_DATA — private writable memory,
which is what a parser or a tensor allocates; not RLIMIT_AS, which would also count the
address space CUDA reserves —, CPU time, size of any file written, open files, processes and
threads of its user, no core dumps); new network, mount and IPC namespaces, so there is no
network interface but a down loopback, and /tmp and /dev/shm are private, size-limited tmpfs
mounts nobody else sees; the working folder handed over to the sandbox's user; every file
descriptor closed except those passed in on purpose.

Then the caller imports what it needs (torch, the engine) and calls `drop`: switch to a user
id of its own — `uid_base` + its pid, unique among running sandboxes, so two sandboxes cannot
touch each other's files or processes either — with no supplementary groups, no way back
(``no_new_privs``, not dumpable), and death with its parent.

Without root, `enter` applies what an unprivileged process can (the limits; a user namespace
for the network where the kernel allows it) and `Isolation` says what was not applied; the
service refuses to run in that state unless its operator chose ``sandbox_isolation:
limits-only`` (docs/security.md says what that leaves open).

`python -m equiprune.service.sandbox.confined '<limits json>' <work dir> -- command...` runs
any command confined the same way: the tests use it to show what a payload could and could
not reach.
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import sys
from dataclasses import asdict, dataclass, field

CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = (0x00020000, 0x08000000, 0x10000000,
                                                                       0x20000000, 0x40000000)
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REC, MS_PRIVATE = 2, 4, 8, 16384, 1 << 18
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_SECCOMP, PR_SET_NO_NEW_PRIVS = 1, 4, 22, 38
SECCOMP_MODE_FILTER = 2
# Per architecture: its audit id, and the numbers of socket(2) and io_uring_setup(2) (through
# io_uring a socket can be made without calling socket(2)).
_SYSCALLS = {"x86_64": (0xC000003E, 41, 425), "aarch64": (0xC00000B7, 198, 425)}
PRIVATE_TMP = "/tmp"
SANDBOX_HOME = "/tmp/home"


@dataclass(frozen=True)
class Limits:
    """What one sandboxed process may use."""

    memory_bytes: int
    cpu_seconds: int
    file_size_bytes: int
    tmp_bytes: int = 256 * 2**20
    open_files: int = 256
    threads: int = 256  # processes and threads of the sandbox's user

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> Limits:
        return cls(**{k: int(v) for k, v in data.items()})


@dataclass
class Isolation:
    """What `enter` and `drop` applied, for the parent to check and the operator to read."""

    limits: bool = False
    network: bool = False  # no network namespace or no socket filter: a payload could connect
    socket_filter: bool = False
    private_tmp: bool = False
    uid: int | None = None
    pid_namespace: bool = False
    host_pid: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def no_network(self) -> bool:
        return self.network or self.socket_filter

    @property
    def full(self) -> bool:
        # The private /tmp is reported, not required: without it (no CAP_SYS_ADMIN, e.g. a
        # root container with Docker's default capabilities) the worker still has its own
        # user, so it can neither read nor alter another's files there.
        return self.limits and self.no_network and self.uid is not None

    def to_json(self) -> dict:
        return {**asdict(self), "full": self.full}


_libc = ctypes.CDLL(None, use_errno=True)


def _call(name: str, *args) -> None:
    if getattr(_libc, name)(*args) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"{name}: {os.strerror(error)}")


def enter(limits: Limits, work_dir: str, keep_fds: set[int], parent_pid: int, threads: int = 1) -> Isolation:
    """The privileged half: limits, namespaces, private /tmp and /proc, working folder, fd
    hygiene. With root it also starts a new PID namespace: the process forks, the parent stays
    behind as a relay that only waits, and the child carries on as pid 1 of the namespace —
    when it ends, the kernel ends every process it left behind."""
    isolation = Isolation(host_pid=os.getpid())  # the pid the service knows: the user id follows from it
    os.chdir(work_dir)  # first: the private /tmp mounted below may hide where it lives
    _set_limits(limits, threads)
    isolation.limits = True
    privileged = os.geteuid() == 0
    try:
        if privileged:
            _call("unshare", CLONE_NEWNET | CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWPID)
        else:
            _call("unshare", CLONE_NEWUSER | CLONE_NEWNET)
        isolation.network = True
    except OSError as err:
        isolation.problems.append(f"no network namespace ({err.strerror})")
    if privileged and isolation.network:
        _become_pid_one(parent_pid)
        isolation.pid_namespace = True
        try:
            _private_tmp(limits.tmp_bytes)
            isolation.private_tmp = True
        except OSError as err:
            isolation.problems.append(f"no private /tmp ({err.strerror})")
    elif os.getppid() != parent_pid:
        os._exit(1)  # the service is already gone
    if not privileged:
        isolation.problems.append("not started as root: cannot switch to a user of its own")
    _close_fds_except(keep_fds)
    os.umask(0o077)
    return isolation


def _become_pid_one(parent_pid: int) -> None:
    """Fork into the new PID namespace. The parent becomes a relay: it dies with the service,
    waits for the child and exits with its status, and touches nothing of the client's."""
    child = os.fork()
    if child:
        _call("prctl", PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent_pid:
            os._exit(1)
        for fd in range(_max_fd()):
            try:
                os.close(fd)
            except OSError:
                pass
        _, status = os.waitpid(child, 0)
        os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status))
    # pid 1 of the new namespace, with a /proc of its own in which no other process is visible.
    _call("mount", None, b"/", None, MS_REC | MS_PRIVATE, None)
    _call("mount", b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None)


def drop(isolation: Isolation, uid_base: int) -> Isolation:
    """The unprivileged half: a user of its own, no way back, death with the parent."""
    if os.geteuid() == 0:
        uid = uid_of(isolation.host_pid, uid_base)
        # The working folder is a fresh one the service made for this run: only it is handed
        # over, never anything an earlier run left (its path may be hidden now: it is the cwd).
        os.lchown(".", uid, uid)
        if isolation.private_tmp:
            os.makedirs(SANDBOX_HOME, exist_ok=True)
            os.chown(SANDBOX_HOME, uid, uid)
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
        try:
            os.setuid(0)
        except PermissionError:
            isolation.uid = uid
        else:  # pragma: no cover - the kernel would have to be broken
            raise RuntimeError("the sandbox could switch back to root")
    _call("prctl", PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    _call("prctl", PR_SET_DUMPABLE, 0, 0, 0, 0)
    try:
        _deny_sockets()
        isolation.socket_filter = True
    except OSError as err:
        isolation.problems.append(f"no socket filter ({err.strerror})")
    # Set after the switch: changing credentials clears the parent-death signal. Inside a PID
    # namespace the parent is the relay, which dies with the service.
    _call("prctl", PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    return isolation


def uid_of(host_pid: int, uid_base: int) -> int:
    """The user id of the sandboxed worker the service started as process `host_pid`."""
    return uid_base + host_pid


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


def _deny_sockets() -> None:
    """A seccomp filter: socket(2) and io_uring_setup(2) fail with EACCES, and a system call
    made through another architecture's table or the x32 numbers (ways around the filter) kills
    the process.
    In addition to the network namespace, and in its place where that cannot be made."""
    machine = os.uname().machine
    if machine not in _SYSCALLS:
        raise OSError(0, f"no socket filter for {machine}")
    arch, socket_nr, io_uring_nr = _SYSCALLS[machine]
    load, jump_equal, jump_at_least, ret = 0x20, 0x15, 0x35, 0x06
    allow, kill, denied = 0x7FFF0000, 0x80000000, 0x00050000 | 13  # SECCOMP_RET_ERRNO | EACCES
    program = [
        (load, 0, 0, 4),  # seccomp_data.arch
        (jump_equal, 1, 0, arch),
        (ret, 0, 0, kill),
        (load, 0, 0, 0),  # seccomp_data.nr
        (jump_at_least, 0, 1, 0x40000000),  # the x32 numbers (x86_64): another way around the filter
        (ret, 0, 0, kill),
        (jump_equal, 2, 0, socket_nr),
        (jump_equal, 1, 0, io_uring_nr),
        (ret, 0, 0, allow),
        (ret, 0, 0, denied),
    ]
    filters = (_SockFilter * len(program))(*[_SockFilter(*step) for step in program])
    fprog = _SockFprog(len(program), filters)
    _call("prctl", PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.cast(ctypes.pointer(fprog), ctypes.c_void_p), 0, 0)


def _set_limits(limits: Limits, threads: int) -> None:
    def cap(which: int, value: int, hard: int | None = None) -> None:
        resource.setrlimit(which, (value, value if hard is None else hard))

    cap(resource.RLIMIT_DATA, limits.memory_bytes)
    # The soft limit sends SIGXCPU (Python dies of it); the hard one, a little later, SIGKILL.
    cap(resource.RLIMIT_CPU, limits.cpu_seconds, limits.cpu_seconds + 5)
    cap(resource.RLIMIT_FSIZE, limits.file_size_bytes)
    cap(resource.RLIMIT_NOFILE, limits.open_files)
    # Processes and threads of its user: what torch's thread pools need, and no fork bomb.
    cap(resource.RLIMIT_NPROC, min(limits.threads, 32 + 2 * threads))
    cap(resource.RLIMIT_CORE, 0)


def _private_tmp(size_bytes: int) -> None:
    """Private, size-limited /tmp and /dev/shm: the sandbox cannot see or fill the host's.
    Not over a folder the Python installation lives in (a checkout under /tmp): the worker
    still has to import from it."""
    _call("mount", None, b"/", None, MS_REC | MS_PRIVATE, None)
    options = f"size={max(size_bytes, 2**20)},mode=1777".encode()
    for target in (PRIVATE_TMP, "/dev/shm"):
        if _holds_python(target):
            raise OSError(0, f"the Python installation lives under {target}")
        if os.path.isdir(target):
            _call("mount", b"tmpfs", target.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, options)


def _holds_python(folder: str) -> bool:
    places = {sys.prefix, sys.base_prefix, os.path.dirname(os.path.abspath(__file__)), *sys.path}
    return any(os.path.realpath(p).startswith(folder.rstrip("/") + "/") for p in places if p)


def _close_fds_except(keep: set[int]) -> None:
    for fd in range(3, _max_fd()):
        if fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass


def _max_fd() -> int:
    try:
        return max(int(name) for name in os.listdir("/proc/self/fd")) + 1
    except (OSError, ValueError):
        return 4096
