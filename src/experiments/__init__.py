"""Experiments: definitions, deterministic assignment compatible with GrowthBook's SDKs
(and, as the issue lands, rollout with guardrails, exposures and statistics).

- :mod:`bespoke.experiments.definitions`: experiment files, validated with errors naming
  the path.
- :mod:`bespoke.experiments.assignment`: hashing, bucket ranges, variation choice and
  namespaces, the same as GrowthBook's SDKs compute them.
"""
