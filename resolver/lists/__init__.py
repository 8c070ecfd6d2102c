"""Blocklists: parsing list formats, the domain index, and list sources."""
