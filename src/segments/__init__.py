"""Who people are as customers: segments, churn and lifetime value, kept current.

- :mod:`bespoke.segments.features`: point-in-time person features (recency, frequency,
  value, rhythm, recent activity, channel and device shares).
- :mod:`bespoke.segments.clv`: the classic buy-till-you-die baselines, BG/NBD and
  Gamma–Gamma, fitted by maximum likelihood.
- :mod:`bespoke.segments.behaviour`: behavioural segments (k-means) with readable names
  that stay put across retrains.
- :mod:`bespoke.segments.rules`: rule segments in the JSON rules' condition language.
- :mod:`bespoke.segments.churn`: the calibrated churn classifier and the value model.
- :mod:`bespoke.segments.train`: the training verbs, membership history in the lake.
"""
