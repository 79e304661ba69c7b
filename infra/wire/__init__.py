"""The wire contract: what the engine, the worker SDK and the client agree on.

Stream and bucket names, subject builders, header names, the control-plane
request/reply shapes, the one way to publish a fact into ``inbox.<run>``, the
one way to read a subject message by message, and the run notices a waiting
client listens to. Both sides import this package and ``domain/``; neither
imports the other, so a worker process never loads the engine or pykka.
"""
