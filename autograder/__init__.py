"""The course's autograder: nbgrader release, sandboxed grading, CSV and feedback.

    python -m autograder release                  regenerate assignments/ from solutions/
    python -m autograder release --check          fail if assignments/ is stale
    python -m autograder grade SUBMISSIONS --out OUT
    python -m autograder manual OUT --student S --assignment A --cell ID --points P

See autograder/README.md for the grading policy (sandbox, bypasses, manual grades).
"""
