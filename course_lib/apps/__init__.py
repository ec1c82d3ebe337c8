"""The course's applications, built on the lesson modules: the ``retouch`` command (photos and
clips), the studio (ipywidgets app and its Voila page), clip reading/writing, the doctor and the
small foundation commands. Lesson modules never import this package.
"""
