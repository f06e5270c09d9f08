"""The KubeVirt hook sidecar: ``hooks/kubevirt/onDefineDomain`` calls ``main()``.

- sidecar.py: the protocol (``--vmi JSON --domain XML``, stdout, exit status), where the
  KubeVirt version and overhead ratio come from, the answer and the refusal paragraph;
- vmi.py: the VMI JSON, read as hostile input, into baselines/kubevirt.py's ``Vmi``;
- splice.py: the verdict put into ``<metadata>`` without touching any other byte.

KubeVirt's formula itself is baselines/kubevirt.py, the judgement inside the pod
accounting/report.py, the remedies accounting/remedy.py, shared with the CLI.
"""

from .sidecar import main

__all__ = ["main"]
