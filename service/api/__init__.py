"""The HTTP and WebSocket adapters: each route decodes its request, admits it, hands it to the request
pipeline (:mod:`service.pipeline`) and encodes the answer."""
