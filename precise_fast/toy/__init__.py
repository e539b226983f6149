"""The shapes world: a small offline world where GRPO visibly learns.

- :mod:`.world`: the deterministic (image, prompt, metadata) generator and its prompt sets;
- :mod:`.detector`: a programmatic detector in the form GenEval's scoring logic consumes;
- :mod:`.reward`: the ``toy_geneval`` reward (GenEval's partial credit over those detections);
- :mod:`.pretrain`: the script that trains the world's tiny FLUX.2 Klein (VAE, then transformer);
- :mod:`.protocol`: the overrides under which one rank stands for the 2-rank main job.
"""
