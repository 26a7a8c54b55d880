"""Planted submissions for the EMA assignment, each with the autograded score it must get.

    python -m autograder.redteam OUT_DIR     writes OUT_DIR/full and OUT_DIR/checks, two
                                            SUBMISSIONS folders (see plants.py)

``full`` is graded with the feedback run (tricks against the kernel, the trusted side's file
handling, the limits and the feedback page); ``checks`` with ``--checks-only`` (tricks against
the hidden checks and plausible wrong answers: the notebook run cannot change a score, so the
faster mode grades them the same). ``tests/test_autograder_redteam.py`` grades both.
"""
