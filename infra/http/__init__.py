"""The HTTP surface of ``dagnats serve``: REST API, HTTP workers, triggers, console.

A thin adapter over the control plane (``engine/control.py``): each route
decodes its request with msgspec, calls the same operation the ``Client``
asks for over ``dagnats.api.<op>`` (in-process, on the engine's loop) and
encodes the answer. Starlette routes, uvicorn serves them inside serve's
own asyncio loop. See docs/http.md.
"""
