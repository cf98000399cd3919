"""Recommenders, the CTR ranker, tuning and the champion gate."""
