"""The core's own small but real parts, registered through the same hook as any plugin."""
