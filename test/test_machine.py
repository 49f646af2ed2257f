"""The allocator setting that keeps a network's activations from page-faulting in every frame."""

import json
import os
import platform
import subprocess
import sys

import pytest

from hmseg_core.machine import RETAIN_ENV, allocator, retain_freed_memory

# allocate, touch and free a 64 MiB tensor (above glibc's largest mmap threshold) ten times, once warm
CHILD = """
import json, resource, sys, torch
from hmseg_core.machine import retain_freed_memory
on = retain_freed_memory() if sys.argv[1] == "retain" else False
for _ in range(10):  # warm-up: the first few allocations fault their pages in either way
    torch.empty(16 * 2**20).fill_(1.0)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    torch.empty(16 * 2**20).fill_(1.0)
print(json.dumps({"retained": on, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's; other C libraries keep their defaults")


def _child(mode, **env):
    out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, check=True,
                         env={**os.environ, **env})
    return json.loads(out.stdout)


@glibc
def test_retained_memory_is_reused_without_page_faults():
    pages = 64 * 2**20 // 4096  # per allocation
    system = _child("system")
    retained = _child("retain")
    assert not system["retained"] and retained["retained"]
    assert system["faults"] > 5 * pages  # glibc hands the block back to the kernel on every free
    assert retained["faults"] < pages // 10  # and with the setting the next allocation reuses it


@glibc
def test_opt_out_leaves_the_allocator_alone():
    child = _child("retain", **{RETAIN_ENV: "0"})
    assert not child["retained"] and child["faults"] > 5 * 64 * 2**20 // 4096


def test_allocator_names_the_setting_in_effect():
    assert allocator() == ("retain-freed" if retain_freed_memory() else "system")
    assert retain_freed_memory() is retain_freed_memory()  # idempotent
