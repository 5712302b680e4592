"""Adapters: one Perspective Broker adapter per protocol over the one controller service."""
