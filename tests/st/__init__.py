"""System tests: the real binaries across namespace hosts (see harness/)."""
