"""nbgrader configuration of the course (nbgrader 0.9.6).

Course root = the repository (or $COURSE_ROOT, used by the tests on a copy of the course);
the source (instructor) notebooks live in ``solutions/``, the release in ``assignments/``.
Use it with ``JUPYTER_CONFIG_PATH=autograder nbgrader <command>`` from the course root;
``python -m autograder release`` does that for you.
"""
import os
from pathlib import Path

c = get_config()  # noqa: F821 - injected by traitlets when nbgrader loads this file

c.CourseDirectory.root = os.environ.get("COURSE_ROOT", str(Path(__file__).resolve().parents[1]))
c.CourseDirectory.source_directory = "solutions"
c.CourseDirectory.release_directory = "assignments"
# The gradebook is kept out of the repository (and out of every student's sandbox).
c.CourseDirectory.db_url = "sqlite:///" + os.environ.get(
    "NBGRADER_GRADEBOOK", str(Path.home() / ".cache" / "course-gradebook.db"))

# Explicit per-cell timeout (seconds) for autograding; the sandboxed grader reads it too.
c.ExecutePreprocessor.timeout = 60
c.Execute.timeout = 60
c.Execute.interrupt_on_timeout = True
# A test cell a student deleted is put back before grading.
c.OverwriteCells.add_missing_cells = True

c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
c.ClearSolutions.text_stub = "YOUR ANSWER HERE"
