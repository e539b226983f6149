"""The policy a run trains and where it runs: built from the config (``build``), process groups
(``distributed``), the DeepSpeed ZeRO engine (``zero``), the non-finite guard around its steps
(``guard``), the EMA of its weights (``ema``) and the KL term's frozen reference (``reference``)."""
