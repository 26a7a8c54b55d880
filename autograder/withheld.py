"""Bound by the jail (sandbox.py) over every module an assignment asks its students to write.

Inside the jail, importing such a module (``reference_impl.training.ema``, diffusers'
``training_utils``, ...) runs this file instead of the module, and fails.
"""
raise ImportError(f"{__name__} is not available in the grader's sandbox: the assignment asks you "
                  "to write it yourself")
