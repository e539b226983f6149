"""The shapes world's reward side: what a ``toy_geneval`` score needs, and nothing that trains.

- :mod:`.world`: the deterministic (image, prompt, metadata) generator and its prompt sets;
- :mod:`.detector`: a programmatic detector in the form GenEval's scoring logic consumes;
- :mod:`.reward`: the ``toy_geneval`` reward (GenEval's partial credit over those detections).

It lives in the rewards layer (not beside the world's model in :mod:`precise_fast.toy`) so
that the registry can build ``toy_geneval`` without importing the layer that pretrains and
trains the world's model, which itself imports rewards: the dependency points one way.
"""
