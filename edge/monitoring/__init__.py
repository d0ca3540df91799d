"""Watching the inspector itself: Prometheus metrics, health checks, logs."""
