"""What a running QEMU really maps for DMA, to check the ledger against (``measure``).

- qemu_text.py: parsers of ``info mtree -f``, ``info ramblock``, ``info memdev`` and
  the BAR trace lines in the domain log;
- mappings.py: which flat-view ranges the VFIO listener maps, and which are guest RAM;
- peak.py: the boot-time peak from samples and traced BAR intervals;
- compare.py: the ledger's non-RAM peak and the tolerance it is held to; the ledger's
  zero-fill next to the measured pages, and its items next to what is mapped now;
- target.py: the domain, driven through libvirt-python or virsh;
- boot.py: one look at a running domain, or a followed boot;
- pci.py: ``info pci`` (device ids, BARs, QEMU device paths);
- pagemap.py: /proc/PID/pagemap and /proc/kpageflags, decoded (pure) and read;
- locate.py: the host address of each RAM block (gpa2hva, traces, smaps);
- pages.py: which RAM blocks to read, and reading them (``measure --zero-pages``).
"""
