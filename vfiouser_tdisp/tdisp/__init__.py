"""TDISP 1.0 (PCIe r6.1+ §11): messages, device interface report, responder.

``messages`` declares the wire format, ``report`` derives the device interface
report and configuration digest from a live function, ``responder`` runs one
TDI per function and provides the PCI-SIG vendor-defined protocol handler.
See docs/tdisp.md.
"""
