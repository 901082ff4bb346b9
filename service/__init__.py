"""s2loop control server: FastAPI over the ``hw`` backends (no torch here).

``service.app.create_app(settings)`` builds an app; ``s2loop serve`` runs it.
"""
