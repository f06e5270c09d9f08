"""The machine memlock-guard runs on, as facts the accounting core can read.

- facts.py: ``HostFacts``, the record (kernel, VFIO/iommufd parameters, ROM file sizes,
  versions, the inherited memlock limit) and the built-in ROM size table;
- probe.py: reading them off this host, and the ``--host-facts`` JSON override;
- sources.py: where each fact is read (standard library only, shared with the hook's
  decision cache so both look at the same files);
- cache.py: the hook's facts: the cheap ones plus install-hook's cache of the slow ones.
"""
