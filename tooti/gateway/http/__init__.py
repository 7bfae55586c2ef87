"""The gateway's HTTP edge: a lean ASGI layer in front of a small Quart app.

``asgi`` routes every request, answers CORS and early errors itself, and hands the inference
routes to ``infer`` (no framework per chunk); ``admin`` keeps the read-only JSON routes on
Quart. ``body`` reads and checks request bodies, ``responses`` writes ASGI responses.
"""
