"""packaging/kubevirt and packaging/openstack, checked without a container runtime.

Nothing here can build or run an image (the test machine has no container runtime, and
no Kubernetes or OpenStack). What can be checked is checked: every COPY source exists;
the wheel built from exactly those paths holds the sidecar and the policy grammar, and
its onDefineDomain, installed as the Containerfile installs it, answers the shim's call;
every memlock-guard command line in the files parses with the real CLI; the kolla
template override renders with Jinja2 under a kolla-shaped parent template; the YAML
parses and sets the keys KubeVirt, kolla-ansible and OpenStack-Helm read.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jinja2
import pytest
import yaml
from memlock_guard.cli import build_parser
from memlock_guard.support import defaults

from ..conftest import ROOT

KUBEVIRT = ROOT / "packaging" / "kubevirt"
OPENSTACK = ROOT / "packaging" / "openstack"
CONTAINERFILES = [KUBEVIRT / "Containerfile", OPENSTACK / "Containerfile.openstack-helm"]


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Containerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


@pytest.mark.parametrize("path", CONTAINERFILES, ids=lambda p: p.name)
def test_every_copy_source_is_in_the_repository(path: Path):
    copies = [args.split() for word, args in instructions(path) if word == "COPY"]
    local = [a for a in copies if not a[0].startswith("--from=")]
    assert local
    for *sources, _dest in local:
        for src in sources:
            assert (ROOT / src).exists(), f"{path.name}: COPY {src}: not in the repository"
    # The package's data files are symlinks into schemas/ and hooks/: the context
    # copied must hold their targets, or the wheel would lack them.
    copied = {s.rstrip("/") for *sources, _ in local for s in sources}
    for link in (ROOT / "plugin" / "memlock_guard" / "data").iterdir():
        target = link.resolve().relative_to(ROOT)
        assert target.parts[0] in copied, f"{path.name} does not copy {target}"


def test_the_sidecar_image_runs_the_shim_as_the_launchers_user():
    ins = instructions(KUBEVIRT / "Containerfile")
    froms = [args for word, args in ins if word == "FROM"]
    assert froms[0] == "quay.io/kubevirt/sidecar-shim:${KUBEVIRT_VERSION} AS shim"
    args = dict(a.split("=", 1) for w, a in ins if w == "ARG" and "=" in a)
    m = re.search(r"python:(\d+)\.(\d+)", args["PYTHON_IMAGE"])
    assert m and (int(m.group(1)), int(m.group(2))) >= (3, 11)  # requires-python
    assert ("COPY", "--from=shim /sidecar-shim /sidecar-shim") in ins
    assert ins[-1] == ("ENTRYPOINT", '["/sidecar-shim"]')
    assert ("USER", "107") in ins
    env = " ".join(a for w, a in ins if w == "ENV")
    assert f"{defaults.KUBEVIRT_VERSION_ENV}=${{KUBEVIRT_VERSION}}" in env
    assert f'{defaults.KUBEVIRT_RATIO_ENV}=""' in env
    run = " ".join(a for w, a in ins if w == "RUN")
    # The shim finds the hook on PATH; /usr/local/bin is on the python images' PATH.
    assert "install -m 0755 /src/hooks/kubevirt/onDefineDomain /usr/local/bin/onDefineDomain" \
        in run


def memlock_guard_commands() -> list[tuple[str, list[str]]]:
    """Every `.../memlock-guard VERB ...` command line in the packaging files."""
    found = []
    for path in [*CONTAINERFILES, OPENSTACK / "kolla-template-overrides.j2"]:
        text = re.sub(r"\\\n", " ", path.read_text())
        for m in re.finditer(r"/opt/memlock-guard/bin/memlock-guard ([^;&\n]+)", text):
            found.append((path.name, shlex.split(m.group(1))))
    return found


@pytest.mark.parametrize(("name", "argv"), memlock_guard_commands(),
                         ids=lambda x: x if isinstance(x, str) else " ".join(x))
def test_every_memlock_guard_command_in_the_packaging_parses(name: str, argv: list[str]):
    args = build_parser().parse_args(argv)
    assert args.verb == "install-hook"
    assert args.python == "/opt/memlock-guard/bin/python"


# -- the wheel the images install, and the hook inside it -----------------------------

@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package built and installed from exactly what the Containerfile copies."""
    ctx = tmp_path_factory.mktemp("context")
    for word, args in instructions(KUBEVIRT / "Containerfile"):
        if word != "COPY" or args.startswith("--from="):
            continue
        *sources, _ = args.split()
        for src in sources:
            s = ROOT / src.rstrip("/")
            if s.is_dir():
                shutil.copytree(s, ctx / s.name, symlinks=True,
                                ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(s, ctx / s.name)
    wheels = tmp_path_factory.mktemp("wheels")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                            "--no-build-isolation", "-w", str(wheels), str(ctx)],
                           capture_output=True, text=True, timeout=300, check=False)
    assert built.returncode == 0, f"the wheel does not build from what is copied: {built.stderr}"
    (wheel,) = wheels.glob("memlock_guard-*.whl")
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                    "--target", str(target), str(wheel)], check=True, capture_output=True,
                   timeout=300)
    bin_dir = target / "usr-local-bin"
    bin_dir.mkdir()
    shutil.copy2(ctx / "hooks" / "kubevirt" / "onDefineDomain", bin_dir / "onDefineDomain")
    os.chmod(bin_dir / "onDefineDomain", 0o755)
    return target


def test_the_wheel_carries_the_sidecar_and_the_policy_grammar(installed: Path):
    pkg = installed / "memlock_guard"
    assert (pkg / "kubevirt" / "sidecar.py").is_file()
    rng = pkg / "data" / "policy.rng"
    assert not rng.is_symlink()
    assert rng.read_bytes() == (ROOT / "schemas" / "policy.rng").read_bytes()
    (record,) = installed.glob("memlock_guard-*.dist-info/RECORD")
    assert "memlock_guard/kubevirt/vmi.py" in record.read_text()


def test_the_installed_hook_answers_the_shim(installed: Path, tmp_path: Path):
    data = ROOT / "tests" / "data" / "kubevirt"
    policy = tmp_path / "policy.xml"  # a policy file: the grammar must be found installed
    policy.write_text(f'<policy xmlns="{defaults.POLICY_NS}"><kubevirt-version>1.7.0'
                      f'</kubevirt-version><kubevirt-overhead-ratio>1.0'
                      f'</kubevirt-overhead-ratio></policy>')
    env = {"PATH": f"{installed / 'usr-local-bin'}:{Path(sys.executable).parent}:/usr/bin:/bin",
           "PYTHONPATH": str(installed), "MEMLOCK_GUARD_POLICY": str(policy)}
    where = subprocess.run(["python3", "-c", "import memlock_guard; print(memlock_guard.__file__)"],
                           env=env, capture_output=True, text=True, check=True)
    assert where.stdout.startswith(str(installed))  # the installed copy, not the checkout
    exe = shutil.which("onDefineDomain", path=env["PATH"])
    out = subprocess.run(["onDefineDomain", "--vmi", (data / "kubevirt-vmi-gpu2.json").read_text(),
                          "--domain", (data / "kubevirt-domain-gpu2-viommu.xml").read_text()],
                         executable=exe, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1, out.stderr
    assert out.stderr.startswith("memlock-guard: refused VMI gpu-workloads/vmi-gpu2 "
                                 "(KubeVirt 1.7.0)")


# -- KubeVirt YAML ------------------------------------------------------------------

def test_the_vm_carries_the_sidecar_annotation_on_its_vmi_template():
    vm = yaml.safe_load((KUBEVIRT / "vm-with-sidecar.yaml").read_text())
    assert (vm["apiVersion"], vm["kind"]) == ("kubevirt.io/v1", "VirtualMachine")
    raw = vm["spec"]["template"]["metadata"]["annotations"]["hooks.kubevirt.io/hookSidecars"]
    (sidecar,) = json.loads(raw)
    assert set(sidecar) <= {"image", "imagePullPolicy", "command", "args", "configMap", "pvc"}
    assert sidecar["args"] == ["--version", "v1alpha3"]
    assert sidecar["image"].endswith("/memlock-guard/kubevirt-sidecar:0.1.0")
    assert len(vm["spec"]["template"]["spec"]["domain"]["devices"]["gpus"]) == 2


def test_the_kubevirt_cr_enables_the_sidecar_and_reserved_overhead_gates():
    cr = yaml.safe_load((KUBEVIRT / "kubevirt-cr.yaml").read_text())
    assert cr["kind"] == "KubeVirt"
    gates = cr["spec"]["configuration"]["developerConfiguration"]["featureGates"]
    assert {"Sidecar", "ReservedOverheadMemlock"} <= set(gates)


# -- kolla, kolla-ansible, OpenStack-Helm -----------------------------------------------

# Shaped like kolla's docker/nova/nova-libvirt/Dockerfile.j2: the blocks and the package
# list an override may touch (written here for the test, not copied from kolla).
PARENT = """\
FROM {{ namespace }}/base:{{ tag }}
{% block nova_libvirt_header %}{% endblock %}
{% set nova_libvirt_packages = ['libvirt-daemon', 'qemu-kvm'] %}
RUN install-packages {{ nova_libvirt_packages | customizable("packages") | join(' ') }}
{% block nova_libvirt_footer %}{% endblock %}
{% block footer %}{% endblock %}
"""


def render_kolla(base_package_type: str, **extra: Any) -> str:
    @jinja2.pass_context
    def customizable(context: Any, values: list[str], kind: str) -> list[str]:
        # kolla's rule: IMAGE_KIND_override replaces, _append adds, _remove drops.
        prefix = f"{context['image_name'].replace('-', '_')}_{kind}_"
        if prefix + "override" in context:
            return list(context[prefix + "override"])
        out = values + list(context.get(prefix + "append", []))
        return [v for v in out if v not in context.get(prefix + "remove", [])]

    loader = jinja2.DictLoader({
        "parent": PARENT,
        "override": (OPENSTACK / "kolla-template-overrides.j2").read_text()})
    env = jinja2.Environment(loader=loader, undefined=jinja2.StrictUndefined)
    env.filters["customizable"] = customizable
    return env.get_template("override").render(
        parent_template="parent", base_package_type=base_package_type,
        image_name="nova-libvirt", namespace="kolla", tag="2026.1", **extra)


@pytest.mark.parametrize("base", ["deb", "rpm"])
def test_the_kolla_override_installs_memlock_guard_in_a_venv(base: str):
    out = render_kolla(base)
    packages = re.search(r"RUN install-packages (.*)", out)
    assert packages is not None
    assert ("python3-venv" in packages.group(1).split()) is (base == "deb")
    footer = out[out.index("python3 -m venv"):]
    assert "RUN python3 -m venv /opt/memlock-guard" in out
    assert "/opt/memlock-guard/bin/pip install --no-cache-dir 'memlock-guard'" in footer
    assert "memlock-guard install-hook --python /opt/memlock-guard/bin/python" in footer
    assert out.index("install-packages") < out.index("python3 -m venv")  # after packages


def test_the_kolla_override_takes_a_wheel_url():
    out = render_kolla("rpm", memlock_guard_pip="https://example.com/mg-0.1.0-py3-none-any.whl")
    assert "pip install --no-cache-dir 'https://example.com/mg-0.1.0-py3-none-any.whl'" in out


def test_kolla_ansible_mounts_the_policy_and_the_audit_log_where_the_hook_looks():
    g = yaml.safe_load((OPENSTACK / "kolla-ansible-globals.yml").read_text())
    volumes = g["nova_libvirt_extra_volumes"]
    assert all(isinstance(v, str) and len(v.split(":")) in (2, 3) for v in volumes)
    mounts = {v.split(":")[1]: v.split(":")[2:] for v in volumes}
    assert mounts[os.path.dirname(defaults.POLICY_PATH)] == ["ro"]
    assert mounts[os.path.dirname(defaults.AUDIT_LOG)] == []  # writable
    assert not any(m.startswith(defaults.HOOKS_DIR) for m in mounts)  # the image's hook


def test_openstack_helm_mounts_the_policy_configmap_into_the_libvirt_container():
    v = yaml.safe_load((OPENSTACK / "openstack-helm-libvirt-values.yaml").read_text())
    assert v["images"]["tags"]["libvirt"].endswith(":2026.1-ubuntu_noble")
    m = v["pod"]["mounts"]["libvirt"]["libvirt"]
    (mount,) = m["volumeMounts"]
    (volume,) = m["volumes"]
    assert mount["name"] == volume["name"]
    assert mount["mountPath"] == os.path.dirname(defaults.POLICY_PATH)
    assert mount["readOnly"] is True and "configMap" in volume
    assert "conf" not in v  # conf.hooks would mount a second copy of the hook


def test_openstack_helms_conf_hooks_variant_wraps_the_main_script():
    v = yaml.safe_load((OPENSTACK / "openstack-helm-libvirt-values-conf-hooks.yaml").read_text())
    hooks = v["conf"]["hooks"]
    assert hooks["enabled"] is True
    assert list(hooks["scripts"]) == [defaults.HOOK_MAIN_SCRIPT]  # subPath: top level only
    script = hooks["scripts"]["qemu"]
    assert script.startswith("#!/bin/sh\n") and "{{" not in script  # Helm's tpl
    (target,) = re.findall(r'exec (\S+) "\$@"', script)
    # ... the path install-hook --as-main-script writes in the HOOK_AS=main image.
    main = [a for _, a in memlock_guard_commands() if "--as-main-script" in a]
    (argv,) = main
    assert target == os.path.join(argv[argv.index("--hooks-dir") + 1],
                                  defaults.HOOK_MAIN_SCRIPT)
