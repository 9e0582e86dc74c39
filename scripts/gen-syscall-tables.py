#!/usr/bin/env python3
"""Writes rootless/src/seccomp/tables.rs: syscall numbers by name for x86_64, i386 (32-bit
programs on x86_64 hosts) and aarch64, read from Debian's kernel headers (linux-libc-dev),
plus the syscalls added after those headers (unified numbers since Linux 5.1).

Run on Debian 12 with linux-libc-dev and gcc installed:
    python3 scripts/gen-syscall-tables.py > rootless/src/seccomp/tables.rs
"""
import re
import subprocess

def header(path):
    out = {}
    for line in open(path):
        m = re.match(r"#define __NR_(\w+)\s+(\d+)\s*$", line)
        if m:
            out[m.group(1)] = int(m.group(2))
    return out

def generic_64():
    # arm64's uapi asm/unistd.h wants these parts of the generic table.
    src = "".join(
        f"#define __ARCH_WANT_{w}\n"
        for w in ["RENAMEAT", "NEW_STAT", "SET_GET_RLIMIT", "TIME32_SYSCALLS", "SYS_CLONE3", "MEMFD_SECRET"]
    ) + "#include <asm-generic/unistd.h>\n"
    text = subprocess.run(["gcc", "-E", "-dM", "-"], input=src, capture_output=True, text=True, check=True).stdout
    defs = {}
    for line in text.splitlines():
        m = re.match(r"#define (__NR\w+) (\S+)$", line)
        if m:
            defs[m.group(1)] = m.group(2)
    def value(v, depth=0):
        if re.fullmatch(r"\d+", v):
            return int(v)
        if v in defs and depth < 8:
            return value(defs[v], depth + 1)
        return None
    out = {}
    for k, v in defs.items():
        if k.startswith("__NR_") and k not in ("__NR_syscalls",) and not k.startswith("__NR3264"):
            n = value(v)
            if n is not None:
                out[k[len("__NR_"):]] = n
    return out

# Added after Linux 6.1 (the headers' version): one number on every architecture.
LATER = {
    "cachestat": 451, "fchmodat2": 452, "futex_wake": 454, "futex_wait": 455,
    "futex_requeue": 456, "statmount": 457, "listmount": 458, "lsm_get_self_attr": 459,
    "lsm_set_self_attr": 460, "lsm_list_modules": 461, "mseal": 462, "setxattrat": 463,
    "getxattrat": 464, "listxattrat": 465, "removexattrat": 466,
}

tables = {
    "X86_64": header("/usr/include/x86_64-linux-gnu/asm/unistd_64.h"),
    "I386": header("/usr/include/x86_64-linux-gnu/asm/unistd_32.h"),
    "AARCH64": generic_64(),
}
tables["X86_64"].update(LATER, map_shadow_stack=453, uretprobe=335)
tables["I386"].update(LATER)
tables["AARCH64"].update(LATER, map_shadow_stack=453)

print("//! Syscall numbers by name, written by `scripts/gen-syscall-tables.py` from Debian 12's")
print("//! kernel headers (linux-libc-dev) and the numbers of later syscalls. Do not edit.")
print()
for name, t in tables.items():
    print("#[rustfmt::skip]")
    print(f"pub(super) const {name}: &[(&str, u32)] = &[")
    for k, v in sorted(t.items()):
        print(f'    ("{k}", {v}),')
    print("];")
    print()
