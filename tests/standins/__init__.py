"""Small, faithful stand-ins for inference servers that cannot be installed on a test machine.

Each stand-in is written from the server's published API documentation, answers deterministically
(the output is derived from the input), and exposes a few ``/_...`` endpoints that the real server
does not have so tests can see what reached it. Each runs in-process (an ASGI app served by
hypercorn on trio) or as its own process: ``python -m tests.standins.<name> --port N``.
"""
