"""Privacy: the person-data stores, and what a person may ask of them (issue 16, in
progress).

- :mod:`bespoke.privacy.subjects`: every identifier of the person a request names.
- :mod:`bespoke.privacy.stores`: the one registry of stores holding person data, each
  with its export, deletion and verification.
"""
