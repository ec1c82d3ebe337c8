"""Trainers: the machinery that turns the lesson modules into checkpoints.

One layer above the lessons (lesson modules never import it):

* :mod:`~course_lib.train.common` - what every trainer shares: run options (``--steps`` are
  optimiser steps, ``--batch-size`` is per process), THE learning-rate schedule, how a step's
  global batch and random draws are split over processes (:class:`~course_lib.train.common.Shard`),
  gradient and log reduction across processes, main-process-only writing, and resumable state
  (one optimiser serialiser, ``OUT.state/``);
* one short file per command, its loop inline: :mod:`~course_lib.train.student`
  (``train-student``, lesson 03), :mod:`~course_lib.train.teacher` (``train-teacher``, lesson 04),
  :mod:`~course_lib.train.vsd` (``train-vsd``, lesson 05), :mod:`~course_lib.train.align`
  (``train-align``, lesson 06) and :mod:`~course_lib.train.inverter` (``train-inverter``, lesson 07).

Each runs as one process (``python -m course_lib train-…``) or under ``accelerate launch -m
course_lib.train.<name>`` on several devices, with the same result for the same global batch.
"""
