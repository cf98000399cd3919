"""Drift, model quality, KPI and experiment analysis."""
