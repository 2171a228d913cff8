"""fleetwatch: the `fleetwatch` command that runs the local stack."""
