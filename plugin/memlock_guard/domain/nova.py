"""``<metadata><nova:instance>``: the OpenStack Nova instance a domain belongs to.

Nova writes it into every guest it defines (nova/virt/libvirt/config.py
``LibvirtConfigGuestMetaNovaInstance``, filled by driver.py ``_get_guest_config_meta``),
in namespace ``.../nova/1.1`` since Nova 23.0.0 (Wallaby) and ``.../nova/1.0`` before::

    <nova:instance>
      <nova:package version="32.1.0"/>
      <nova:name>display name</nova:name>          (not the libvirt name, instance-%08x)
      <nova:flavor name="g1.2xa10" id="...">      (id since Nova 32)
        <nova:memory>16384</nova:memory>          (MiB)
        <nova:extraSpecs><nova:extraSpec name="hw:viommu_model">intel</nova:extraSpec>
                                                  (Nova 32+, commit 619cd0a9c7)
      <nova:image uuid="..."><nova:properties><nova:property name="hw_video_ram">64
                                                  (Nova 32+, commit 7ce26377af)

Values are text as Nova stored them: extra specs as given (``true``, ``1GB``), image
properties as Python's str() (``64``, ``True``). Read with xmlmap's rules (the first match
wins, values stripped); a value that does not parse is left out rather than refused,
because it only shapes advice, never the ledger.
"""

from __future__ import annotations

from typing import NamedTuple

from ..support.defaults import NOVA_NAMESPACES
from .xmlmap import Element, attr, text


class NovaInstance(NamedTuple):
    namespace: str  # one of NOVA_NAMESPACES
    package: str | None  # the nova-compute version that wrote it
    name: str | None  # the instance's display name
    flavor: str | None
    flavor_id: str | None  # Nova 32+
    flavor_memory_mib: int | None
    extra_specs: tuple[tuple[str, str], ...] = ()  # Nova 32+
    image: str | None = None  # image uuid; "" when booted from a volume (Nova 32+)
    image_properties: tuple[tuple[str, str], ...] = ()  # Nova 32+
    # <nova:ports><nova:port uuid=...> (Nova 23+): the instance's Neutron ports.
    ports: tuple[str, ...] = ()
    # Whether Nova wrote <nova:extraSpecs> (always, possibly empty, from 32.0.0): when
    # False, the flavor's and image's settings are simply not known here.
    detailed: bool = False

    def extra_spec(self, name: str) -> str | None:
        return _lookup(self.extra_specs, name)

    def image_property(self, name: str) -> str | None:
        return _lookup(self.image_properties, name)

    def detached_ports(self, root: Element) -> tuple[str, ...]:
        """Ports that no ``<interface>`` of the domain names: what Nova detaches before a
        live migration and hot-plugs again on the destination (direct-passthrough VIFs:
        driver.py ``_detach_direct_passthrough_vifs``, then ``_reattach_instance_vifs``).
        An interface names its port as OVS's ``interfaceid`` or in its ``tap`` + 11
        characters of the uuid device name (nova/network/model.py)."""
        seen: set[str] = set()
        for devices in root:
            if devices.tag != "devices":
                continue
            for iface in devices:
                if iface.tag != "interface":
                    continue
                for el in iface.iter():
                    for key in ("interfaceid", "dev"):
                        value = el.get(key)
                        if value:
                            seen.add(value.removeprefix("tap") if key == "dev" else value)
        return tuple(p for p in self.ports
                     if p not in seen and p[:11] not in seen)

    @classmethod
    def from_metadata(cls, metadata: Element | None) -> NovaInstance | None:
        """The ``nova:instance`` child of a domain's ``<metadata>``, newest namespace first."""
        if metadata is None:
            return None
        for ns in NOVA_NAMESPACES:
            inst = _child(metadata, f"{{{ns}}}instance")
            if inst is not None:
                return cls._read(inst, ns)
        return None

    @classmethod
    def _read(cls, inst: Element, ns: str) -> NovaInstance:
        def q(local: str) -> str:
            return f"{{{ns}}}{local}"

        flavor = _child(inst, q("flavor"))
        image = _child(inst, q("image"))
        return cls(
            namespace=ns,
            package=attr(_child(inst, q("package")), "version"),
            name=text(_child(inst, q("name"))),
            flavor=attr(flavor, "name"),
            flavor_id=attr(flavor, "id"),
            flavor_memory_mib=_int(text(_child(flavor, q("memory")))),
            extra_specs=_pairs(flavor, q("extraSpecs"), q("extraSpec")),
            image=attr(image, "uuid"),
            image_properties=_pairs(image, q("properties"), q("property")),
            ports=tuple(p.get("uuid") or "" for block in inst if block.tag == q("ports")
                        for p in block if p.tag == q("port") and p.get("uuid")),
            detailed=_child(flavor, q("extraSpecs")) is not None,
        )


def _child(el: Element | None, tag: str) -> Element | None:
    """``./tag[1]``. Not xmlmap.first: a namespaced tag holds '/' (the namespace URI),
    which that reads as a path."""
    if el is not None:
        for c in el:
            if c.tag == tag:
                return c
    return None


def _pairs(parent: Element | None, group: str, tag: str) -> tuple[tuple[str, str], ...]:
    """``name=`` and text of every ``group/tag`` (across repeated groups, in order)."""
    out = []
    for block in parent if parent is not None else ():
        if block.tag != group:
            continue
        for el in block:
            name = attr(el, "name") if el.tag == tag else None
            if name:
                out.append((name, text(el) or ""))
    return tuple(out)


def _lookup(pairs: tuple[tuple[str, str], ...], name: str) -> str | None:
    for key, value in pairs:
        if key == name:
            return value
    return None


def _int(value: str | None) -> int | None:
    return int(value) if value is not None and value.isdigit() and len(value) < 12 else None
