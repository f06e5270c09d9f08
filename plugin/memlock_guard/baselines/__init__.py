"""What others would set as the memlock limit for the same domain: libvirt, KubeVirt."""
