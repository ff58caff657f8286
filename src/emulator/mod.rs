//! An E2B emulator: the control plane and the envd subset on one loopback port, backed by local sandboxes.
