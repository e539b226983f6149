"""GRPO math as pure tensor functions: no config, no ranks, no DeepSpeed, no I/O.

``advantages`` (group-relative and G2RPO advantages, the per-prompt tracker), ``loss`` (the clipped
policy loss, plain or with GRPO-Guard's ratio normalisation), ``transitions`` (the per-sample
trained transitions every algorithm reduces to). The phases (``train.phases``) call these.
"""
