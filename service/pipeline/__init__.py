"""The request pipeline: admission (key, rate, mask rights, readiness, queue room, deadline), the per-request
transcriber (speech segments, ``lang=auto``, timing), the batcher and the engine it feeds."""
