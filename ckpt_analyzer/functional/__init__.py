"""Pure tensor maths behind the probes (tensors in, tensors out; no I/O, no state).

Each function documents the paper equation it implements; see docs/probes.md.
"""
