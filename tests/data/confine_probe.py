# What a build step may do to the kernel: each probe prints `name=ok` or `name=<errno name>`.
# Run by tests/confine.rs in a step (python:3.11-slim), by default and with security.insecure.
import ctypes, errno, os, platform, time

libc = ctypes.CDLL(None, use_errno=True)
NR = {  # syscall numbers: x86_64, aarch64
    "x86_64": {"keyctl": 250, "bpf": 321, "perf_event_open": 298, "unshare": 272},
    "aarch64": {"keyctl": 219, "bpf": 280, "perf_event_open": 241, "unshare": 97},
}[platform.machine()]


def res(name, r):
    e = ctypes.get_errno()
    print(f"{name}=" + ("ok" if r >= 0 else errno.errorcode.get(e, str(e))), flush=True)


def in_child(name, fn):
    # Each probe in a child of its own: a namespace made by one does not change the next.
    pid = os.fork()
    if pid == 0:
        try:
            res(name, fn())
        finally:
            os._exit(0)
    os.waitpid(pid, 0)


in_child("unshare", lambda: libc.syscall(NR["unshare"], 0x10000000))  # CLONE_NEWUSER
# KEYCTL_GET_KEYRING_ID of the session keyring, creating it.
in_child("keyctl", lambda: libc.syscall(NR["keyctl"], 0, ctypes.c_long(-3), 1))
in_child("mount", lambda: libc.mount(b"tmpfs", b"/mnt", b"tmpfs", 0, None))
# BPF_MAP_CREATE of a 1-entry array map.
attr = (ctypes.c_uint32 * 32)(2, 4, 4, 1)
in_child("bpf", lambda: libc.syscall(NR["bpf"], 0, ctypes.byref(attr), 128))
# A user-space-only software counter of this process (perf_event_paranoid ≤ 2 allows that
# without privilege, as far as the kernel goes).
pattr = (ctypes.c_uint8 * 128)()
ctypes.memmove(pattr, (ctypes.c_uint32 * 2)(1, 128), 8)  # PERF_TYPE_SOFTWARE, size
flags = ctypes.c_uint64(1 | (1 << 5) | (1 << 6))  # disabled, exclude_kernel, exclude_hv
ctypes.memmove(ctypes.byref(pattr, 40), ctypes.byref(flags), 8)
in_child("perf_event_open", lambda: libc.syscall(NR["perf_event_open"], ctypes.byref(pattr), 0, -1, -1, 0))


# ptrace of a process of another user (no CAP_SYS_PTRACE by default).
def ptrace_other():
    pid = os.fork()
    if pid == 0:
        os.setuid(65534)
        time.sleep(30)
        os._exit(0)
    time.sleep(0.2)
    r = libc.ptrace(16, pid, None, None)  # PTRACE_ATTACH
    e = ctypes.get_errno()
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    ctypes.set_errno(e)
    return r


in_child("ptrace", ptrace_other)


# A sysctl of the step's own network namespace (kernel/* ones belong to the host's root).
def write_proc_sys():
    try:
        with open("/proc/sys/net/ipv4/ip_forward", "w") as f:
            f.write("1")
        return 0
    except OSError as e:
        ctypes.set_errno(e.errno)
        return -1


in_child("proc_sys_write", write_proc_sys)
if os.path.exists("/proc/kcore"):
    try:
        with open("/proc/kcore", "rb") as f:
            print("kcore_read=" + ("ok" if f.read(16) else "empty"), flush=True)
    except OSError as e:
        print("kcore_read=" + errno.errorcode.get(e.errno, str(e.errno)), flush=True)
else:
    print("kcore_read=absent (this kernel has no /proc/kcore)")
