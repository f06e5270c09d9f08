"""What every layer leans on; nothing here imports another part of memlock-guard.

- defaults.py: every shared fact, defined once: paths, size caps, namespaces, the
  default margin, and the rule that reads on-error and audit-log from a broken policy;
- errors.py: the exceptions that cross modules (InputError is one line, exit 2);
- units.py: libvirt scaled integers and human-readable sizes;
- xmlsafe.py: the one hardened XML parser (size, encoding, element and DTD limits);
- audit.py: the audit log, one JSON line per decision, plus syslog;
- files.py: writing a file so that a reader never sees half of it.
"""
