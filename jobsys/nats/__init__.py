"""The NATS adapter: the wire format (`subjects`), connections, streams, publishing, acks.

Empty on purpose: importing `jobsys.nats.subjects` must not load the NATS client.
"""
