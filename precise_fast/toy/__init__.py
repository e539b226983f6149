"""The shapes world's model: a small offline world where GRPO visibly learns.

- :mod:`.pretrain`: the script that trains the world's tiny FLUX.2 Klein (VAE, then transformer);
- :mod:`.quality`: a model's base quality, the toy GenEval score of its ODE samples;
- :mod:`.protocol`: the overrides under which one rank stands for the 2-rank main job;
- ``model/``: the shipped pretrained model.

The world itself (images, prompts, detector, the ``toy_geneval`` reward) is in
:mod:`precise_fast.rewards.shapes`; this package sits above train and rollout, beside eval.
"""
