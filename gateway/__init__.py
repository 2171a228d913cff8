"""The fleetwatch gateway: the REST API of the product spec, over Prometheus, with its own state in a DB.

Importing this package does nothing: the app factory is ``gateway.app.create_app``.
"""
