"""Optional reward servers (run on the reward host, not imported by the trainer).

``geneval_server``: the GenEval detector behind the JSON contract of
``precise_fast.rewards.remote.geneval``; its extra requirements are in
``requirements-geneval.txt`` beside this file.
"""
