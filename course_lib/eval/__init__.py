"""Evaluation: the machinery that turns the lesson modules' outputs into tables.

One layer above the lessons (lesson modules never import it):

* :mod:`~course_lib.eval.heldout` - THE evaluation set (the test photos, or the validation photos, in
  one wording), as one batch dict, and the guard that refuses training photos in any score;
* :mod:`~course_lib.eval.score` - THE method interface (``fn(source, instructions, target) ->
  output``), THE scoring function (:func:`~course_lib.eval.score.score`: one set of keys and
  units for every table) and the loop that runs a method over the set;
* :mod:`~course_lib.eval.tables` - THE table writer (markdown, CSV, JSON; atomic files, an
  existing output replaced only when asked);
* the tables built on them: :mod:`~course_lib.eval.student` (``python -m course_lib evaluate``,
  lessons 03, 05, 06), :mod:`~course_lib.eval.teacher` (``teacher-eval``, lesson 04),
  :mod:`~course_lib.eval.inversion` (``inversion-eval``, lesson 07) and
  :mod:`~course_lib.eval.bench_retouch` (``bench retouch``, lesson 08).

The metric formulas themselves live in the lesson module :mod:`course_lib.metrics`.
"""
