"""The domain XML mapped to small frozen objects, one module per device family.

Where is X read? memory.py (memory, memtune, memoryBacking, memory devices),
hostdev.py (and the domain-level <iommufd>), interface.py, disk.py, video.py,
firmware.py (os, loader, machine), controller.py (pSeries PHBs), rom.py (<rom>),
nova.py (OpenStack Nova's ``<metadata><nova:instance>``), model.py (the Domain itself,
with the DAC label: which uid QEMU runs as; built by
``Domain.from_xml``; every record here is built by its own ``from_xml``).

Where is X written? edit.py: hard_limit up (swap_hard_limit with it) and our
``<metadata>`` element, the only edits memlock-guard makes to a definition, plus a
device added or taken out of a copy that is only judged (attach-device, detach-device);
serialize.py: the result in libvirt's own layout.
"""

from .controller import Controller
from .disk import Disk
from .firmware import Firmware, Machine
from .hostdev import Hostdev
from .interface import Interface
from .memory import MemoryBacking, MemoryDevice, Memtune
from .model import Domain, parse_domain
from .nova import NovaInstance
from .rom import Rom
from .video import Video

__all__ = [
    "Controller", "Disk", "Domain", "Firmware", "Hostdev", "Interface",
    "Machine", "MemoryBacking", "MemoryDevice", "Memtune", "NovaInstance", "Rom", "Video",
    "parse_domain",
]
