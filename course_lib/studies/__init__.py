"""Study drivers: the commands that measured a finished question (which VSD recipe, which reader
wording, how much to smooth a clip) and wrote its numbers to ``data/results/``. Lessons read those
results files; nothing in the lesson modules, trainers or evaluation imports a study.
"""
