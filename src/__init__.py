"""Bespoke: an open-source personalization engine for data scientists."""

__version__ = "0.1.0"
