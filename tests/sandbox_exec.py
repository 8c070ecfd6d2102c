"""Run a command under two of hushdns.service's seccomp rules, without systemd.

Why: ``MemoryDenyWriteExecute=yes`` and ``RestrictAddressFamilies=`` fail only
at run time (an extension module that wants an executable stack, a library
that opens a netlink socket), and tests cannot start the real unit because
PID 1 is not systemd in CI containers.  So this installs the same rules as
systemd 252 does (src/shared/seccomp-util.c) as a classic-BPF seccomp filter
and execs the command under it:

- MemoryDenyWriteExecute: mmap with PROT_WRITE|PROT_EXEC, mprotect and
  pkey_mprotect adding PROT_EXEC, shmat with SHM_EXEC all fail with EPERM.
- RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX: socket() with any other
  family fails with EAFNOSUPPORT.

Usage: ``python tests/sandbox_exec.py COMMAND [ARGS...]``.  x86_64 and aarch64.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct
import sys

# (audit arch, {syscall name: number}) per machine; numbers from the kernel's
# unistd tables (x86_64: arch/x86/entry/syscalls, aarch64: asm-generic).
ARCHES: dict[str, tuple[int, dict[str, int]]] = {
    "x86_64": (0xC000003E, {"mmap": 9, "mprotect": 10, "shmat": 30, "socket": 41,
                            "pkey_mprotect": 329}),
    "aarch64": (0xC00000B7, {"mmap": 222, "mprotect": 226, "shmat": 196, "socket": 198,
                             "pkey_mprotect": 288}),
}

PROT_WRITE, PROT_EXEC = 0x2, 0x4
SHM_EXEC = 0o100000
ALLOWED_FAMILIES = (1, 2, 10)  # AF_UNIX, AF_INET, AF_INET6

_LD_ABS, _JEQ, _AND, _RET = 0x20, 0x15, 0x54, 0x06
_RET_ALLOW = 0x7FFF0000
_RET_ERRNO = 0x00050000
_ARCH_OFF, _NR_OFF = 4, 0


def _arg(i: int) -> int:
    # Low 32 bits of seccomp_data.args[i] on a little-endian machine.
    return 16 + 8 * i


def _ins(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def supported() -> bool:
    """True when this machine's syscall numbers are known here."""
    return sys.platform == "linux" and platform.machine() in ARCHES


def build_filter(machine: str | None = None) -> bytes:
    """The BPF program (as packed sock_filter structs) for this machine."""
    audit_arch, nr = ARCHES[machine or platform.machine()]
    prog = [
        _ins(_LD_ABS, _ARCH_OFF),
        _ins(_JEQ, audit_arch, 1, 0),
        _ins(_RET, _RET_ALLOW),  # a foreign ABI: not ours to judge
        _ins(_LD_ABS, _NR_OFF),
    ]
    masked_rules = [
        (nr["mmap"], 2, PROT_WRITE | PROT_EXEC),
        (nr["mprotect"], 2, PROT_EXEC),
        (nr["pkey_mprotect"], 2, PROT_EXEC),
        (nr["shmat"], 2, SHM_EXEC),
    ]
    for number, argno, mask in masked_rules:
        prog += [
            _ins(_JEQ, number, 0, 5),
            _ins(_LD_ABS, _arg(argno)),
            _ins(_AND, mask),
            _ins(_JEQ, mask, 0, 1),
            _ins(_RET, _RET_ERRNO | errno.EPERM),
            _ins(_RET, _RET_ALLOW),
        ]
    n = len(ALLOWED_FAMILIES)
    prog.append(_ins(_JEQ, nr["socket"], 0, n + 3))
    prog.append(_ins(_LD_ABS, _arg(0)))
    for i, family in enumerate(ALLOWED_FAMILIES):
        prog.append(_ins(_JEQ, family, n - i, 0))  # -> RET ALLOW below
    prog.append(_ins(_RET, _RET_ERRNO | errno.EAFNOSUPPORT))
    prog.append(_ins(_RET, _RET_ALLOW))
    prog.append(_ins(_RET, _RET_ALLOW))  # every other syscall
    return b"".join(prog)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def install() -> None:
    """Install the filter on this process (inherited across exec and fork)."""
    prog = build_filter()
    buf = ctypes.create_string_buffer(prog, len(prog))
    fprog = _SockFprog(len(prog) // 8, ctypes.cast(buf, ctypes.c_void_p))
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_no_new_privs, pr_set_seccomp, seccomp_mode_filter = 38, 22, 2
    if libc.prctl(pr_set_no_new_privs, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, "prctl(PR_SET_NO_NEW_PRIVS): " + os.strerror(err))
    if libc.prctl(pr_set_seccomp, seccomp_mode_filter, ctypes.byref(fprog), 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, "prctl(PR_SET_SECCOMP): " + os.strerror(err))


def main(argv: list[str]) -> None:
    if not argv:
        sys.exit("usage: sandbox_exec.py COMMAND [ARGS...]")
    if not supported():
        sys.exit(f"sandbox_exec: unsupported machine {platform.machine()}")
    install()
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    main(sys.argv[1:])
