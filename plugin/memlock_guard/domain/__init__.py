"""The domain XML mapped to small frozen objects, one module per device family.

Where is X read? memory.py (memory, memtune, memoryBacking, memory devices),
hostdev.py, interface.py, disk.py, video.py, firmware.py (os, loader, machine),
controller.py (pSeries PHBs), rom.py (<rom>), model.py (the Domain itself).
"""

from .controller import Controller
from .disk import Disk
from .firmware import Firmware, Machine
from .hostdev import Hostdev
from .interface import Interface
from .memory import MemoryBacking, MemoryDevice, Memtune
from .model import Domain, parse_domain
from .rom import Rom
from .video import Video

__all__ = [
    "Controller", "Disk", "Domain", "Firmware", "Hostdev", "Interface",
    "Machine", "MemoryBacking", "MemoryDevice", "Memtune", "Rom", "Video",
    "parse_domain",
]
