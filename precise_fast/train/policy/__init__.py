"""Where the policy runs: process groups (``distributed``), the DeepSpeed ZeRO engine (``zero``),
the non-finite guard around its steps (``guard``) and the EMA of its weights (``ema``)."""
