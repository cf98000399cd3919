"""Who is who: identifiers, the identity graph, probabilistic matching, the PII vault.

- :mod:`bespoke.identity.identifiers`: the identifier types (stable or rotating), their
  priority, per-person limits and blocked values.
- :mod:`bespoke.identity.graph`: deterministic stitching with guards into one
  ``person_id``; refused merges with their reason; splits.
- :mod:`bespoke.identity.matching`: probabilistic matching of customer records (Splink).
- :mod:`bespoke.identity.vault`: raw PII encrypted at rest, one data key per person.
- :mod:`bespoke.identity.overlay`: a cross-channel overlay on real behaviour, with truth,
  to measure stitching.
"""
