"""Env adapter: serves a simulator to the Rust runtime over a framed msgpack protocol.

See docs/env-adapter-protocol.md.
"""

PROTOCOL_VERSION = 1
