"""Guest RAM and memory devices: mapped read-write, counted once per container."""

from __future__ import annotations

from memlock_guard.accounting.ledger import Backing, Kind

from .builders import GiB, MiB, hostdevs, ledger, of_kind

DEVICES = (
    "<memory model='dimm'><target><size unit='GiB'>1</size><node>0</node></target></memory>"
    "<memory model='virtio-mem'><target><size unit='GiB'>4</size><node>0</node>"
    "<block unit='MiB'>2</block><requested unit='MiB'>512</requested></target></memory>"
    "<memory model='virtio-pmem' access='shared'><source><path>/tmp/pmem</path></source>"
    "<target><size unit='MiB'>256</size></target></memory>"
)


def test_guest_ram_is_one_anonymous_read_write_item(pinned_host):
    ram = of_kind(ledger(pinned_host, hostdevs(1), memory="3", unit="GiB"), Kind.RAM)
    assert [(i.bytes, i.backing, i.readonly, i.transient) for i in ram] == [
        (3 * GiB, Backing.ANON, False, False)]


def test_memory_devices_are_items_of_their_own_and_add_up_to_memory(pinned_host):
    led = ledger(pinned_host, DEVICES + hostdevs(1), memory="8", unit="GiB")
    ram = of_kind(led, Kind.RAM)
    # <memory> is the total: boot RAM is what the devices leave.
    assert sum(i.bytes for i in ram) == 8 * GiB
    assert sorted(i.bytes for i in ram) == sorted(
        [256 * MiB, GiB, 4 * GiB, 8 * GiB - GiB - 4 * GiB - 256 * MiB])
    assert all(i.backing is Backing.ANON and not i.readonly for i in ram)


def test_virtio_mem_counts_at_its_maximum_size_not_requested(pinned_host):
    led = ledger(pinned_host, DEVICES + hostdevs(1), memory="8", unit="GiB")
    assert 4 * GiB in [i.bytes for i in of_kind(led, Kind.RAM)]
    assert 512 * MiB not in [i.bytes for i in of_kind(led, Kind.RAM)]


def test_ram_is_charged_once_per_container(pinned_host):
    led = ledger(pinned_host, hostdevs(3) + "<iommu model='intel'/>", memory="2", unit="GiB")
    (ram,) = of_kind(led, Kind.RAM)
    assert (ram.containers, ram.charged) == (3, 3 * 2 * GiB)
