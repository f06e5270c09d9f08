"""Wall time and peak memory of the KubeVirt hook sidecar, against the shim's budgets.

    .venv/bin/python bench/kubevirt_sidecar.py [--runs N]

Runs hooks/kubevirt/onDefineDomain exactly as KubeVirt's sidecar shim does (found on
PATH, ``--vmi JSON --domain XML`` inline) for each fixture in tests/data/kubevirt, and
prints the median wall time and the largest peak RSS (ru_maxrss of the hook process,
from wait4) as ratios to what KubeVirt allows:

  time    1 minute per OnDefineDomain call (pkg/hooks/manager.go, context.WithTimeout)
  memory  64M = 64,000,000 bytes for the whole sidecar container of a dedicated-CPU VMI
          (pkg/virt-controller/services/renderresources.go sidecarResources), which
          also holds the Go shim (not measured here: no shim binary on this machine)

The hook may run up to three times per VMI start (v1.8+ allocateHotplugPorts), and the
calls are sequential, so the time that matters is per call. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data" / "kubevirt"
HOOK_DIR = ROOT / "hooks" / "kubevirt"
TIME_BUDGET = 60.0  # seconds
MEMORY_BUDGET = 64_000_000  # bytes: Kubernetes "64M"
CASES = [  # (VMI, domain, KubeVirt version, expected exit status)
    ("kubevirt-vmi-gpu1.json", "kubevirt-domain-gpu1.xml", "1.9.0", 0),
    ("kubevirt-vmi-gpu2.json", "kubevirt-domain-gpu2-viommu.xml", "1.9.0", 0),
    ("kubevirt-vmi-gpu2.json", "kubevirt-domain-gpu2-viommu.xml", "1.7.0", 1),
    ("kubevirt-vmi-mixed.json", "kubevirt-domain-mixed-viommu.xml", "1.8.0", 1),
]


def one(vmi: str, domain: str, env: dict[str, str], expect: int) -> tuple[float, int]:
    """(wall seconds, peak RSS bytes) of one call."""
    exe = HOOK_DIR / "onDefineDomain"
    t0 = time.perf_counter()
    p = subprocess.Popen(["onDefineDomain", "--vmi", vmi, "--domain", domain],
                         executable=str(exe), env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != expect:
        sys.exit(f"onDefineDomain exited {p.returncode}, expected {expect}")
    return wall, usage.ru_maxrss * 1024  # KiB on Linux


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=20, help="runs per case (default 20)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="mg-bench-kv-") as tmp:
        policy = Path(tmp) / "policy.xml"
        policy.write_text('<policy xmlns="urn:memlock-guard:policy:1"/>\n')
        base_env = {"PATH": f"{HOOK_DIR}:{Path(sys.executable).parent}:/usr/bin:/bin",
                    "MEMLOCK_GUARD_POLICY": str(policy),
                    "MEMLOCK_GUARD_KUBEVIRT_OVERHEAD_RATIO": ""}
        print(f"python {sys.version.split()[0]} ({sys.executable}), {args.runs} runs per "
              f"case, cpus {os.cpu_count()}")
        t0 = time.perf_counter()
        p = subprocess.run([sys.executable, "-I", "-c", "pass"], check=True)
        assert p.returncode == 0
        print(f"  (python -I -c pass: {(time.perf_counter() - t0) * 1000:.0f} ms)")
        worst_time = worst_rss = 0.0
        for vmi_name, dom_name, version, expect in CASES:
            vmi = (DATA / vmi_name).read_text()
            dom = (DATA / dom_name).read_text()
            env = {**base_env, "MEMLOCK_GUARD_KUBEVIRT_VERSION": version}
            one(vmi, dom, env, expect)  # warm the page cache and .pyc files
            runs = [one(vmi, dom, env, expect) for _ in range(args.runs)]
            wall = statistics.median(r[0] for r in runs)
            rss = max(r[1] for r in runs)
            worst_time, worst_rss = max(worst_time, wall), max(worst_rss, rss)
            print(f"  {dom_name:34s} KubeVirt {version:5s} exit {expect}: median "
                  f"{wall * 1000:6.1f} ms ({wall / TIME_BUDGET:.4f} of 1 min), peak RSS "
                  f"{rss / 1e6:5.1f} MB ({rss / MEMORY_BUDGET:.2f} of 64M)")
        print(f"  worst: {worst_time * 1000:.1f} ms = {worst_time / TIME_BUDGET:.4f} of the "
              f"shim's minute; {worst_rss / 1e6:.1f} MB = {worst_rss / MEMORY_BUDGET:.2f} of "
              f"the sidecar's 64M (the shim's own memory comes on top)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
