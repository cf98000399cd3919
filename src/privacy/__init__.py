"""Privacy: consent, erasure, access and proof (issue 16).

- :mod:`bespoke.privacy.consent`: the consent ledger, per person and purpose.
- :mod:`bespoke.privacy.gate`: where consent and the suppression list are enforced
  (ingestion, training and feature reads, serving).
- :mod:`bespoke.privacy.suppression`: erased people, as keyed pseudonyms.
- :mod:`bespoke.privacy.subjects`: every identifier of the person a request names.
- :mod:`bespoke.privacy.stores`: the one registry of stores holding person data, each
  with its export, deletion and verification.
- :mod:`bespoke.privacy.requests`: deletion requests (received → running → done|partial).
- :mod:`bespoke.privacy.retention`: per-table retention periods.
- :mod:`bespoke.privacy.audit`: the hash-chained audit log.
- :mod:`bespoke.privacy.installation`: all of it for one installation's settings.
"""
