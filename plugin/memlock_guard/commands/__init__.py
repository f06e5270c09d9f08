"""One module per CLI verb; each has HELP, DESCRIPTION, configure(parser) and run(args).

cli.py only wires them into argparse. A verb module imports what it needs inside
run(), so ``memlock-guard --help`` stays quick and never needs libvirt-python.
common.py and libvirt_common.py hold the options and plumbing the verbs share
(hotplug_common.py what attach-device and detach-device share); render.py prints a
report as text or JSON (schemas/estimate.schema.json); measured.py prints page
measurements (measure --zero-pages, explain --measured).
"""

VERBS = (
    "estimate",
    "explain",
    "check",
    "apply",
    "attach_device",
    "detach_device",
    "watch",
    "measure",
    "install_hook",
    "uninstall_hook",
)
