"""Closed-loop clients: drive Gymnasium episodes through the s2loop service.

This package talks to the service over HTTP and WebSocket only, as a robot
would; it imports neither ``service`` nor ``hw``.
"""
