"""hushdns: a blocking, caching DNS forwarder for vendor-telemetry blocklists."""

__version__ = "0.1.0"
