"""memlock-guard: locked-memory policy for libvirt/QEMU passthrough VMs."""

__version__ = "0.1.0"
