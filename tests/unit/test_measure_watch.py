"""measure --boot when the guest dies or its firmware maps nothing (issue 15 §1), on the
fake domain of test_measure.py; tests/e2e/test_measure_crash.py does it with real guests."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from memlock_guard.measure import boot, qemu_text
from memlock_guard.measure.target import state_names
from memlock_guard.measure.watch import GuestWatch

from .test_measure import FakeTarget, data

# What QEMU 7.2 printed when OVMF died under KVM here (the domain log, abridged).
KVM_DIED = ("KVM internal error. Suberror: 1\nextra data[0]: 0x0000000000000000\n"
            "emulation failure\nRAX=0000000000000000 RBX=0000000000000000\n")


@pytest.mark.parametrize(("numbers", "names"), [
    ((1, 5), ("running", "unpaused")), ((3, 0), ("paused", "unknown")),
    ((3, 1), ("paused", "user")), ((5, 3), ("shut off", "crashed")),
    ((6, 1), ("crashed", "panicked")), ((9, 0), ("state 9", "reason 0")),
])
def test_libvirt_states_are_named_as_virsh_names_them(numbers, names):
    assert state_names(*numbers) == names


class Dying(FakeTarget):
    """Runs until ``after`` samples past resume, then is in ``state`` with ``log``."""

    def __init__(self, log: Path, *, state: tuple[str, str], log_text: str = "",
                 after: int = 3, trace: str = "", ramblocks: str = "q35-dimm") -> None:
        super().__init__(active=False, flatviews=[data("q35-seabios-paused.mtree-f.txt"),
                                                  data("q35-dimm.mtree-f.txt")],
                         log=log, trace=trace)
        self.dead_state, self.log_text, self.after = state, log_text, after
        self.samples_after_resume = -1
        self.ramblock_file = f"{ramblocks}.ramblock.txt"

    def hmp(self, command: str) -> str:
        if command == "info ramblock":
            return data(self.ramblock_file)
        if command == "info status":
            return "VM status: paused (internal-error)\n"
        if command == "info mtree -f" and self.samples_after_resume >= 0:
            self.samples_after_resume += 1
            if self.samples_after_resume == self.after:
                with open(self.log_path or "", "a") as f:
                    f.write(self.log_text)
                self.active = self.dead_state[0] != "shut off"
            if not self.active:
                raise qemu_text.MeasureError("Requested operation is not valid: "
                                             "domain is not running")
        return super().hmp(command)

    def resume(self) -> None:
        super().resume()
        self.samples_after_resume = 0

    def state(self) -> tuple[str, str]:
        if self.samples_after_resume >= self.after:
            return self.dead_state
        return super().state()


def test_a_kvm_internal_error_is_a_failed_measurement_naming_the_log(tmp_path):
    log = tmp_path / "vm1.log"
    log.write_text("starting up\n")
    target = Dying(log, state=("paused", "unknown"), log_text=KVM_DIED)
    with pytest.raises(qemu_text.MeasureError) as e:
        boot.measure_boot(target, settle=0.5, timeout=5)
    msg = str(e.value)
    assert "\n" not in msg
    assert "the guest stopped running" in msg and "paused (unknown)" in msg
    assert "QEMU: paused (internal-error)" in msg
    assert "'KVM internal error. Suberror: 1' / 'emulation failure'" in msg
    assert f"QEMU's log: {log}" in msg and "<domain type='qemu'>" in msg
    assert target.calls[-1] == "destroy"  # paused: still there to power off


def test_a_guest_that_shut_off_is_not_destroyed_again(tmp_path):
    log = tmp_path / "vm1.log"
    log.write_text("")
    target = Dying(log, state=("shut off", "crashed"))
    with pytest.raises(qemu_text.MeasureError, match=r"shut off \(crashed\)"):
        boot.measure_boot(target, settle=0.5, timeout=5)
    assert "destroy" not in target.calls


def test_no_bar_trace_at_all_with_rom_bars_to_map_is_no_measurement(tmp_path):
    log = tmp_path / "vm1.log"
    log.write_text("")
    target = FakeTarget(active=False, flatviews=[data("q35-dimm.mtree-f.txt")], log=log)
    with pytest.raises(qemu_text.MeasureError, match=r"no BAR trace event in .*vm1\.log, "
                       r"although the domain has 1 ROM BAR to map \(0000:00:01\.0/vga\.rom\)"):
        boot.measure_boot(target, settle=0.3, timeout=3)
    assert target.calls[-1] == "destroy"


def test_a_guest_that_stops_after_its_firmware_mapped_every_rom_is_measured(tmp_path):
    log = tmp_path / "vm1.log"
    log.write_text("")
    now = time.time()
    trace = (f"1@{now:.6f}:pci_update_mappings_add VGA 00:01.0 6,0xfebc0000+0x10000\n"
             f"1@{now + 0.01:.6f}:pci_update_mappings_del VGA 00:01.0 6,0xfebc0000+0x10000\n")
    target = Dying(log, state=("shut off", "shutdown"), trace=trace, after=5)
    m = boot.measure_boot(target, settle=5, timeout=10)
    assert any("after its firmware had mapped every ROM BAR" in w for w in m.warnings)
    assert [r.device for r in m.roms] == ["VGA"]


def test_the_log_is_read_in_whole_lines(tmp_path):
    log = tmp_path / "vm1.log"
    log.write_text("old: KVM internal error from an earlier run\n")
    offset = log.stat().st_size
    target = Dying(log, state=("paused", "unknown"))
    target.active = True
    watch = GuestWatch(target, offset, time.time(), clock=time.time)
    assert watch.poll() is None  # the earlier run's line is not this one's
    with open(log, "a") as f:
        f.write("KVM internal er")
    assert watch.poll() is None  # half a line waits for the rest
    with open(log, "a") as f:
        f.write("ror. Suberror: 1\n")
    stop = watch.poll()
    assert stop is not None and stop.kvm_failed
    assert stop.log_lines == ("KVM internal error. Suberror: 1",)
    assert stop.state == ("running", "unpaused")  # the log said it first
    assert stop.qemu_status == "paused (internal-error)"


def test_help_teaches_the_failures_and_the_tcg_fallback(capsys):
    from memlock_guard.cli import main

    with pytest.raises(SystemExit):
        main(["measure", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "KVM internal error" in out and "<domain type='qemu'>" in out
    assert "it died" in out


def test_no_bar_event_and_no_rom_bar_is_a_quiet_measurement(tmp_path):
    # An aarch64 virt domain without PCI devices, isapc: nothing to trace, nothing missed.
    class NoRoms(FakeTarget):
        def hmp(self, command: str) -> str:
            if command == "info ramblock":
                return "\n".join(line for line in data("q35-dimm.ramblock.txt").splitlines()
                                 if not line.rstrip().split()[0].endswith(".rom"))
            return super().hmp(command)

    log = tmp_path / "vm1.log"
    log.write_text("")
    target = NoRoms(active=False, flatviews=[data("q35-dimm.mtree-f.txt")], log=log)
    m = boot.measure_boot(target, settle=0.3, timeout=3)
    assert m.warnings == () and m.roms == ()
