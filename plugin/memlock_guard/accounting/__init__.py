"""The accounting core: a Domain and HostFacts in, a judged Report out. No I/O.

Where is X decided?
- how many bytes each mapping costs, and the peak over boot: ledger.py
- which estimators run, and how a third-party plugin is kept from breaking a decision:
  engine.py
- strict or tolerant, and what ``auto`` resolves to on this host: modes.py
- QEMU's whole footprint (hard_limit is also its cgroup cap): footprint.py
- fits / short / unlimited, headroom and the recommended hard_limit: verdict.py
- the one call every front end makes (``assess``), the limit QEMU really gets
  (``effective_limit``), and the audit record of a decision: report.py
- which kernel interface pins (VFIO type1, iommufd) and whom it charges: backend.py
- where a hard_limit blocks libvirt's growth at hotplug (the warnings): hotplug.py
- iommufd user accounting, what the other QEMUs of a uid already pin: pins.py
"""
