"""Collect, clean, stitch and featurise events: the event lake and everything read from it."""
