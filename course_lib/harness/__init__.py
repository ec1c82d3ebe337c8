"""Acceptance harnesses: ``gpu-check`` (kernels, benchmark, student and lessons on CUDA -> one
report) and ``hub-check`` (every hub-tier command once on a real-size random pipeline). They run the
library's own code on other machines and sizes; nothing in the library imports them.
"""
