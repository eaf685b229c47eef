"""Command-line entry points: ``airunner-server`` and ``airunner-cli``."""
