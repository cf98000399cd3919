"""The event stream: ``/v1/events`` appends to a durable stream when one is configured,
and ``bespoke stream consume`` workers in consumer groups apply it to profiles and write
the lake (:mod:`bespoke.stream.events`)."""
