"""One file per claim of the course: its arms, its measurement and an honest verdict.

``python -m reference_impl experiment --list`` names them; ``runner.py`` runs and caches them;
``results_page.py`` writes ``docs/results.md``. ``common.py`` holds the training run they share.
"""
