"""Model-free building blocks of the paper-reproduction evaluation: audio measures, denoisers, statistics."""
