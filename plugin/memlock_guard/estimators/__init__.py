"""Built-in estimators, one family per module, each an ordinary pluggy plugin.

Where is X counted?
- guest RAM and memory devices: ram.py
- pc.bios, isa-bios, pc.rom, OVMF's isa-bios copy: firmware.py
- VGA/QXL/bochs/virtio-vga/cirrus/vmware video RAM and VGA BIOS ROM BARs: video.py
- NIC option ROMs, <rom file> on hostdevs and interfaces: option_roms.py
- how many VFIO containers pin all of it: containers.py
"""
