"""fleetwatch exporter: node_exporter- and dcgm-exporter-compatible host and GPU metrics."""

__version__ = "0.1.0"
