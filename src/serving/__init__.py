"""The BentoML personalization service."""
