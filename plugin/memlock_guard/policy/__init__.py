"""The operator's policy: the host file, the per-domain override, and what they set.

- model.py: the ``Policy`` record, its enums, where the host file is, and the Settings
  and plugin manager a policy gives (no lxml: the hook and daemons hold one);
- load.py: reading and checking a policy file or a domain's ``<mg:policy>``;
- grammar.py: schemas/policy.rng, enforced after load.py's own checks.

A policy too broken to parse still has its on-error and audit-log read textually, by
support/defaults.salvage() (standard library only: the hook uses it first).
"""
