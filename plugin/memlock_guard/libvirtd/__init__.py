"""Everything that talks to libvirtd: explain/check/apply reads, apply's edit, the reconciler.

Never imported by the hook (an import-linter contract holds this): libvirtd holds the
domain while a hook runs, so a call back would deadlock.

- client.py: connect (with tenacity's backoff), look up, read and redefine domains;
  every libvirt error becomes one line;
- apply.py: what to change in a persistent definition and the new XML, pure;
- reconcile.py: the libvirt round trip of one domain, judged as the hook will judge it,
  without losing a concurrent edit;
- watch.py: the reconciler daemon (events, resyncs, reconnects);
- hotplug.py: attach-device and detach-device (judge, raise, hotplug, put back);
- pins.py: under iommufd user accounting, what the other running QEMUs of a uid pin,
  from their live XMLs (check).
"""
