"""Machinery every part of the course shares and no lesson is about: atomic files, the one
checkpoint convention. Imports nothing from ``course_lib`` but :mod:`course_lib.config`, so the
lesson modules (and the ``train``/``eval``/``apps`` layers above them) may all use it.
"""
