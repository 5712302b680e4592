"""The controller: engine registry, per-engine queues, MultiEngine and task services."""
