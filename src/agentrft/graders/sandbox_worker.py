"""The sandboxed worker process behind the ``python`` grader (run as a script, never imported by the trainer).

Started by :class:`agentrft.graders.sandbox.SandboxPool` as ``python -I -B sandbox_worker.py REQ_FD RESP_FD CONFIG``
with an empty environment. It first locks itself in, best effort, layer by layer — each layer that took is
reported back in the ``ready`` message (``isolation``), so a weaker host is visible, never silent:

1. ``netns``        a new network namespace: no interfaces up, not even loopback → no network at all.
2. ``mount_ro``     a private mount namespace in which every mount is remounted read-only …
3. ``scratch``      … except the scratch directory, a fresh tmpfs of ``disk_mb`` (the disk limit);
4. ``dev``          ``/dev`` replaced by a tmpfs holding only null, zero, full, random, urandom;
5. ``proc_hidden``  ``/proc`` and ``/sys`` covered by empty read-only tmpfs (no ``/proc/<ppid>/environ``);
   ``paths_hidden``  the trainer's home (and any ``hide_paths``) covered the same way — SSH keys, tokens, cloud
                    credentials gone — with the Python installation below it re-exposed read-only;
6. ``rlimits``      address space ``memory_mb`` MiB above the worker's baseline, file size ``disk_mb``, 256 open
                    files, no core dumps;
7. ``caps_dropped`` every capability dropped (bounding, ambient, effective, permitted), no_new_privs;
8. ``seccomp``      a syscall filter: no fork/vfork/clone without CLONE_THREAD (threads are fine), no exec, no
                    sockets, no signals to other processes, no ptrace/mount/unshare/setns/rlimit changes/bpf/
                    io_uring/keyctl/module loading;
9. ``audit_hook``   a Python audit hook that turns the same attempts into clear ``PermissionError`` messages
                    (and is the only guard on non-Linux hosts).

Protocol: 4-byte big-endian length + UTF-8 JSON, both ways. Requests ``{"source", "sample", "item"}``;
responses ``{"ok": true, "score": float, "stdout": str}`` or ``{"ok": false, "kind": "exception" | "non_float" |
"source_error", "error": str, "stdout": str}``. ``print`` output is kept (last 16 kB) but never reaches a real
file descriptor (fd 1 and 2 point at /dev/null), so a grader printing megabytes costs only its own time.

The compiled grader is cached per source hash, so a warm worker runs ``grade`` without re-executing the module.
"""

from __future__ import annotations

import ctypes
import hashlib
import io
import json
import math
import numbers
import os
import resource
import struct
import sys
import traceback

MAX_OUT = 16 * 1024
ISOLATION: dict[str, object] = {}

# ---- syscall numbers for the seccomp filter -------------------------------------------------------------
AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
DENY = {
    "x86_64": dict(fork=57, vfork=58, execve=59, execveat=322, socket=41, socketpair=53, ptrace=101, mount=165,
                   umount2=166, unshare=272, setns=308, pivot_root=155, chroot=161, setrlimit=160, prlimit64=302,
                   process_vm_readv=310, process_vm_writev=311, kexec_load=246, init_module=175, finit_module=313,
                   bpf=321, perf_event_open=298, keyctl=250, add_key=248, request_key=249, reboot=169, tkill=200,
                   io_uring_setup=425, io_uring_enter=426, io_uring_register=427, userfaultfd=323, mknod=133,
                   mknodat=259, open_tree=428, move_mount=429, fsopen=430, fsmount=432),
    "aarch64": dict(execve=221, execveat=281, socket=198, socketpair=199, ptrace=117, mount=40, umount2=39,
                    unshare=97, setns=268, pivot_root=41, chroot=51, setrlimit=164, prlimit64=261,
                    process_vm_readv=270, process_vm_writev=271, kexec_load=104, init_module=105, finit_module=273,
                    bpf=280, perf_event_open=241, keyctl=219, add_key=217, request_key=218, reboot=142, tkill=130,
                    io_uring_setup=425, io_uring_enter=426, io_uring_register=427, userfaultfd=282, mknodat=33,
                    open_tree=428, move_mount=429, fsopen=430, fsmount=432),
}
SPECIAL = {"x86_64": dict(clone=56, clone3=435, kill=62, tgkill=234),
           "aarch64": dict(clone=220, clone3=435, kill=129, tgkill=131)}

CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWNET = 0x00020000, 0x10000000, 0x40000000
CLONE_THREAD = 0x00010000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = (
    1, 2, 4, 8, 32, 4096, 16384, 1 << 18)
MS_RELATIME, MS_NOATIME, MS_NODIRATIME = 1 << 21, 1024, 2048


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")


def _mount(libc, src, target, fstype, flags, data=None) -> None:
    enc = lambda s: None if s is None else s.encode()  # noqa: E731
    _check(libc.mount(enc(src), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)), f"mount {target}")


def _layer(name: str, fn, *a) -> bool:
    try:
        fn(*a)
        ISOLATION[name] = True
        return True
    except Exception as e:  # a layer the host does not allow is recorded, not fatal
        ISOLATION[name] = f"unavailable: {e}"
        return False


def setup_namespaces(libc, scratch: str, disk_mb: int, hide_paths: list[str] | None = None) -> None:
    uid, gid = os.getuid(), os.getgid()
    root = uid == 0
    flags = CLONE_NEWNS | CLONE_NEWNET
    if not root:
        flags |= CLONE_NEWUSER
    try:
        _check(libc.unshare(flags), "unshare")
    except OSError:
        # no mount namespace allowed: try the network alone
        _check(libc.unshare(CLONE_NEWNET | (0 if root else CLONE_NEWUSER)), "unshare(net)")
        if not root:
            _write_maps(uid, gid)
        ISOLATION["netns"] = True
        raise
    if not root:
        _write_maps(uid, gid)
    ISOLATION["netns"] = True
    _mount(libc, None, "/", None, MS_REC | MS_PRIVATE)
    with open("/proc/self/mounts") as f:
        mounts = [line.split() for line in f]
    keep = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC, "relatime": MS_RELATIME,
            "noatime": MS_NOATIME, "nodiratime": MS_NODIRATIME}
    failed = []
    seen = set()
    for m in mounts:
        target = m[1].replace("\\040", " ")
        if target in seen or target.startswith(("/proc", "/sys", "/dev")) or target == scratch:
            continue
        seen.add(target)
        fl = MS_REMOUNT | MS_BIND | MS_RDONLY
        for opt in m[3].split(","):
            fl |= keep.get(opt, 0)
        try:
            _mount(libc, None, target, None, fl)
        except OSError as e:
            failed.append(f"{target}: {e.strerror}")
    ISOLATION["mount_ro"] = True if not failed else f"partial: {'; '.join(failed[:5])}"
    if hide_paths:
        _layer("paths_hidden", _hide_keeping, libc, hide_paths, scratch)
    _layer("scratch", _mount, libc, "tmpfs", scratch, "tmpfs", MS_NOSUID | MS_NODEV,
           f"size={disk_mb}m,mode=0700")
    if root:
        _layer("dev", _private_dev, libc)
    _layer("proc_hidden", _hide, libc, ["/proc", "/sys"])


def _write_maps(uid: int, gid: int) -> None:
    with open("/proc/self/setgroups", "w") as f:
        f.write("deny")
    with open("/proc/self/uid_map", "w") as f:
        f.write(f"{uid} {uid} 1")
    with open("/proc/self/gid_map", "w") as f:
        f.write(f"{gid} {gid} 1")


def _private_dev(libc) -> None:
    _mount(libc, "tmpfs", "/dev", "tmpfs", MS_NOSUID, "size=64k,mode=0755")
    for name, minor in (("null", 3), ("zero", 5), ("full", 7), ("random", 8), ("urandom", 9)):
        os.mknod(f"/dev/{name}", 0o020666, os.makedev(1, minor))
        os.chmod(f"/dev/{name}", 0o666)
    _mount(libc, None, "/dev", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID)


def _needed_paths() -> list[str]:
    """What the worker's Python must still see: its prefixes and sys.path entries."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, os.path.dirname(sys.executable)}
    paths.update(p for p in sys.path if p and os.path.isdir(p))
    return sorted(os.path.realpath(p) for p in paths)


def _hide_keeping(libc, hide: list[str], scratch: str) -> None:
    """Cover each directory in ``hide`` (e.g. the trainer's home, with its keys and tokens) by an empty
    read-only tmpfs, re-exposing, read-only, what Python needs below it and the scratch directory."""
    need = _needed_paths() + [os.path.realpath(scratch)]
    done = []
    for h in hide:
        h = os.path.realpath(h)
        if h == "/" or not os.path.isdir(h):
            continue
        keep = [p for p in need if p == h or p.startswith(h + os.sep)]
        if h in keep:
            continue  # hiding it would hide the interpreter itself
        keep = [p for p in keep if not any(p != q and p.startswith(q + os.sep) for q in keep)]
        fds = [(p, os.open(p, os.O_PATH | os.O_DIRECTORY)) for p in keep]
        _mount(libc, "tmpfs", h, "tmpfs", MS_NOSUID | MS_NODEV, "size=64k,mode=0755")
        for p, fd in fds:
            os.makedirs(p, exist_ok=True)
            _mount(libc, f"/proc/self/fd/{fd}", p, None, MS_BIND | MS_REC)
            os.close(fd)
            if p != os.path.realpath(scratch):
                _mount(libc, None, p, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID)
        _mount(libc, None, h, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
        done.append(h)
    ISOLATION["hidden"] = done


def _hide(libc, paths: list[str]) -> None:
    for p in paths:
        _mount(libc, "tmpfs", p, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY, "size=4k,mode=0555")


def set_rlimits(memory_mb: int, disk_mb: int) -> None:
    base = 0
    try:
        with open("/proc/self/statm") as f:
            base = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        pass
    mem = base + memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    resource.setrlimit(resource.RLIMIT_FSIZE, (disk_mb * 1024 * 1024,) * 2)
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    ISOLATION["memory_limit_bytes"] = mem


def drop_caps(libc) -> None:
    PR_SET_NO_NEW_PRIVS, PR_CAPBSET_DROP, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 38, 24, 47, 4
    for cap in range(64):
        libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)  # fails (EINVAL) past the last cap: fine
    libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)

    class Hdr(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                    ("inheritable", ctypes.c_uint32)]

    hdr = Hdr(0x20080522, 0)
    data = (Data * 2)()
    _check(libc.capset(ctypes.byref(hdr), ctypes.byref(data)), "capset")
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")


def seccomp_program(arch: str, pid: int) -> list[tuple[int, int, int, int]]:
    """A classic-BPF seccomp filter (list of (code, jt, jf, k)); see the module docstring for the policy."""
    LD, JEQ, JGE, JSET, RET = 0x20, 0x15, 0x35, 0x45, 0x06
    ALLOW, ERRNO = 0x7FFF0000, 0x00050000
    EPERM, ENOSYS = 1, 38
    sp = SPECIAL[arch]
    prog: list = [("ld", 4), ("jeq_else", AUDIT_ARCH[arch], "deny"), ("ld", 0)]
    if arch == "x86_64":
        prog.append(("jge", 0x40000000, "deny"))  # x32 ABI numbers
    for nr in sorted(set(DENY[arch].values())):
        prog.append(("jeq", nr, "deny"))
    prog += [("jeq", sp["clone3"], "enosys"), ("jeq", sp["clone"], "clone"), ("jeq", sp["kill"], "pid"),
             ("jeq", sp["tgkill"], "pid"), ("ret", ALLOW),
             ("label", "clone"), ("ld", 16), ("jset", CLONE_THREAD, "allow"), ("ret", ERRNO | EPERM),
             ("label", "pid"), ("ld", 16), ("jeq", pid & 0xFFFFFFFF, "allow"), ("ret", ERRNO | EPERM),
             ("label", "allow"), ("ret", ALLOW),
             ("label", "deny"), ("ret", ERRNO | EPERM),
             ("label", "enosys"), ("ret", ERRNO | ENOSYS)]
    labels: dict[str, int] = {}
    n = 0
    for ins in prog:
        if ins[0] == "label":
            labels[ins[1]] = n
        else:
            n += 1
    out = []
    i = 0
    for ins in prog:
        op = ins[0]
        if op == "label":
            continue
        if op == "ld":
            out.append((LD, 0, 0, ins[1]))
        elif op == "ret":
            out.append((RET, 0, 0, ins[1]))
        elif op == "jeq_else":  # fall through when equal, jump to the label otherwise
            out.append((JEQ, 0, labels[ins[2]] - i - 1, ins[1]))
        else:
            code = {"jeq": JEQ, "jge": JGE, "jset": JSET}[op]
            out.append((code, labels[ins[2]] - i - 1, 0, ins[1]))
        i += 1
    return out


def install_seccomp(libc) -> None:
    import platform

    arch = platform.machine()
    if arch not in AUDIT_ARCH:
        raise OSError(0, f"no seccomp policy for {arch}")

    class SockFilter(ctypes.Structure):
        _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8),
                    ("k", ctypes.c_uint32)]

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(SockFilter))]

    ins = seccomp_program(arch, os.getpid())
    arr = (SockFilter * len(ins))(*[SockFilter(*x) for x in ins])
    prog = SockFprog(len(ins), arr)
    PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2
    libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    _check(libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0), "seccomp")


def install_audit_hook(scratch: str, protected_fds: set[int]) -> None:
    """Deny process creation, sockets, ctypes loading, writes outside scratch and other processes' /proc."""
    scratch_real = os.path.realpath(scratch)
    me = str(os.getpid())
    blocked_prefix = ("socket.", "subprocess.", "os.exec", "os.spawn", "os.posix_spawn", "pty.")
    blocked = {"os.system", "os.fork", "os.forkpty", "ctypes.dlopen", "ctypes.dlsym", "os.kill", "os.killpg",
               "gc.get_objects", "gc.get_referrers", "gc.get_referents", "sys.setprofile", "sys.settrace",
               "os.chroot", "resource.setrlimit", "resource.prlimit"}
    path_events = {"os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.link",
                   "os.symlink", "os.truncate", "os.utime", "shutil.rmtree", "shutil.copyfile", "shutil.move"}

    def inside(p) -> bool:
        if isinstance(p, int):
            return True
        try:
            rp = os.path.realpath(os.fsdecode(p))
        except Exception:
            return False
        return rp == scratch_real or rp.startswith(scratch_real + os.sep) or rp == "/dev/null"

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = (tuple(args) + (None, None, None))[:3]
            if isinstance(path, (str, bytes)):
                p = os.fsdecode(path)
                if p.startswith("/proc/") and not p.startswith(("/proc/self/", f"/proc/{me}/")):
                    raise PermissionError(f"sandbox: reading {p} is not allowed")
                writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                    isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC))
                if writing and not inside(p):
                    raise PermissionError(f"sandbox: writing {p} is not allowed (only the scratch directory)")
            return
        if event == "object.__setattr__" and len(args) >= 2 and args[1] in ("__code__",):
            raise PermissionError("sandbox: replacing a function's code is not allowed")
        if event in blocked or event.startswith(blocked_prefix):
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event in path_events:
            for a in args[:2]:
                if isinstance(a, (str, bytes)) and not inside(a):
                    raise PermissionError(f"sandbox: {event} outside the scratch directory is not allowed")
        if event == "os.dup2" or event == "os.close":
            return

    sys.addaudithook(hook)
    ISOLATION["audit_hook"] = True


# ---- protocol ----------------------------------------------------------------------------------------------
def read_msg(fd: int) -> dict | None:
    head = _read_exact(fd, 4)
    if head is None:
        return None
    (n,) = struct.unpack(">I", head)
    body = _read_exact(fd, n)
    if body is None:
        return None
    return json.loads(body.decode("utf-8"))


def _read_exact(fd: int, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def write_msg(fd: int, obj: dict) -> None:
    data = json.dumps(obj, ensure_ascii=False, default=repr).encode("utf-8")
    data = struct.pack(">I", len(data)) + data
    view = memoryview(data)
    while view:
        k = os.write(fd, view)
        view = view[k:]


class CappedIO(io.TextIOBase):
    """A text stream keeping the last ``cap`` characters (and counting the rest)."""

    def __init__(self, cap: int = MAX_OUT):
        self.cap = cap
        self.parts: list[str] = []
        self.size = 0
        self.total = 0

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        s = str(s)
        self.total += len(s)
        self.parts.append(s)
        self.size += len(s)
        if self.size > 4 * self.cap:
            joined = "".join(self.parts)[-self.cap:]
            self.parts, self.size = [joined], len(joined)
        return len(s)

    def value(self) -> str:
        out = "".join(self.parts)[-self.cap:]
        if self.total > len(out):
            out = f"[… {self.total - len(out)} characters dropped]\n" + out
        return out


def _clean_scratch(scratch: str) -> None:
    try:
        entries = list(os.scandir(scratch))
    except OSError:
        return
    import shutil

    for e in entries:
        try:
            if e.is_dir(follow_symlinks=False):
                shutil.rmtree(e.path, ignore_errors=True)
            else:
                os.unlink(e.path)
        except OSError:
            pass


def die_with_parent(fd: int) -> None:
    """Terminate when the parent process is gone, with no cooperation from this process (a grader spinning in C
    code holds the GIL, so a watchdog thread could not act): ``fd`` is the read end of a pipe only the parent can
    write to; with O_ASYNC the kernel sends SIGIO — whose default action terminates — when its last writer closes,
    which a parent killed by SIGKILL does too. (PR_SET_PDEATHSIG would fire when the parent *thread* that started
    the worker exits, and the pool starts workers from short-lived grading threads.)"""
    import fcntl
    import select
    import signal

    try:
        signal.signal(signal.SIGIO, signal.SIG_DFL)
        fcntl.fcntl(fd, fcntl.F_SETOWN, os.getpid())
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_ASYNC)
        ISOLATION["dies_with_parent"] = True
    except (OSError, AttributeError, ValueError) as e:
        ISOLATION["dies_with_parent"] = f"unavailable: {e}"
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLHUP)
    if poller.poll(0):  # nothing is ever written: readable means the parent already died
        os._exit(0)


def main() -> None:
    req_fd, resp_fd = int(sys.argv[1]), int(sys.argv[2])
    cfg = json.loads(sys.argv[3])
    if cfg.get("life_fd") is not None:
        die_with_parent(int(cfg["life_fd"]))
    scratch = cfg["scratch"]
    for mod in cfg.get("warm_imports", []):
        try:
            __import__(mod)
        except Exception:
            pass
    if sys.platform.startswith("linux"):
        libc = _libc()
        try:
            setup_namespaces(libc, scratch, int(cfg["disk_mb"]), cfg.get("hide_paths"))
        except Exception as e:
            ISOLATION.setdefault("netns", f"unavailable: {e}")
            ISOLATION.setdefault("mount_ro", f"unavailable: {e}")
        _layer("rlimits", set_rlimits, int(cfg["memory_mb"]), int(cfg["disk_mb"]))
        _layer("caps_dropped", drop_caps, libc)
        _layer("seccomp", install_seccomp, libc)
    else:
        _layer("rlimits", set_rlimits, int(cfg["memory_mb"]), int(cfg["disk_mb"]))
    os.chdir(scratch)
    # fd 0/1/2 → /dev/null: nothing a grader prints reaches a real file or the parent's pipes
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    install_audit_hook(scratch, {req_fd, resp_fd})
    write_msg(resp_fd, {"ready": True, "pid": os.getpid(), "isolation": ISOLATION})
    cache: dict[str, object] = {}
    while True:
        try:
            req = read_msg(req_fd)
        except Exception:
            return
        if req is None:
            return
        out = CappedIO()
        try:
            os.chdir(scratch)  # a previous grader may have moved away
        except OSError:
            pass
        sys.stdout = sys.stderr = out
        try:
            resp = run_one(req, cache)
        except BaseException as e:  # SystemExit, KeyboardInterrupt raised by the grader too
            resp = {"ok": False, "kind": "exception", "error": f"{type(e).__name__}: {e}"[:4000]}
        finally:
            sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
        resp["stdout"] = out.value()
        import threading

        # a grader that left threads running would keep burning this worker's CPU: answer, then retire
        recycle = threading.active_count() > 1
        if recycle:
            resp["recycle"] = "the grader left threads running"
        try:
            write_msg(resp_fd, resp)
        except MemoryError:
            write_msg(resp_fd, {"ok": False, "kind": "exception", "error": "MemoryError", "stdout": ""})
        if recycle:
            os._exit(0)
        _clean_scratch(scratch)


def run_one(req: dict, cache: dict) -> dict:
    src = req["source"]
    key = hashlib.sha256(src.encode()).hexdigest()
    fn = cache.get(key)
    if fn is None:
        ns: dict = {"__name__": "grader", "__builtins__": __builtins__}
        try:
            code = compile(src, "<grader>", "exec")
            exec(code, ns)  # the sandbox's purpose: run the user's grader source
        except BaseException as e:
            return {"ok": False, "kind": "source_error", "error": _tb(e)}
        fn = ns.get("grade")
        if not callable(fn):
            return {"ok": False, "kind": "source_error", "error": "the source defines no grade(sample, item)"}
        if len(cache) > 64:
            cache.clear()
        cache[key] = fn
    try:
        value = fn(req["sample"], req["item"])
    except BaseException as e:
        return {"ok": False, "kind": "exception", "error": _tb(e)}
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return {"ok": False, "kind": "non_float",
                "error": f"grade returned {type(value).__name__} {repr(value)[:200]}, expected a float"}
    f = float(value)
    if not math.isfinite(f):
        return {"ok": False, "kind": "non_float", "error": f"grade returned {f}, expected a finite float"}
    return {"ok": True, "score": f}


def _tb(e: BaseException) -> str:
    lines = traceback.format_exception(type(e), e, e.__traceback__)
    # keep the grader's own frames (<grader>) and the final line
    keep = [ln for ln in lines if "<grader>" in ln] + [lines[-1]]
    return "".join(keep).strip()[-4000:]


if __name__ == "__main__":
    main()
